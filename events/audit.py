"""The audit log (brief §8): one record per finished edit, in a JetStream stream kept long.

Every outcome the operator records also becomes an :class:`AuditRecord` (written by the
operator's durable outbox, like the completion, so a record is never lost to a NATS
outage): who asked, who approved, which department and cost centre pay, the prompt, the
source and the result, the cost in GPU-seconds, the status, the quality gate's verdict.
The stream (``EDITFLOW_AUDIT``, subjects ``editflow.audit.<namespace>``) keeps records
400 days by default, far longer than EditJobs (7 days) or S3 objects (30 days).

``editflow audit export --since 7d`` writes them as JSON Lines; ``editflow usage report``
sums them by department, applicant, usage or model (:func:`usage_rows`). GPU-seconds are
the worker's total seconds of the attempt that produced the outcome, times the GPUs of a
worker Job (1): what the department's edit held a GPU for.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from pydantic import BaseModel, ConfigDict, Field

from editflow.events.pulling import until_drained
from editflow.events.topology import Topology

GroupBy = Literal["department", "applicant", "usage", "model", "cost_center", "namespace"]
GROUPS: tuple[str, ...] = GroupBy.__args__  # type: ignore[attr-defined]
#: The group of records without the field (no department on the approval, say).
UNATTRIBUTED = "(none)"


class AuditRecord(BaseModel):
    """One finished edit. Readers ignore fields they do not know: records outlive versions."""

    model_config = ConfigDict(extra="ignore")

    completion_event_id: str
    approval_event_id: str
    form_id: str
    approval_id: str
    namespace: str
    editjob: str
    status: str
    finished_at: datetime | None = None
    prompt: str
    source: str = Field(description="the image URL, or the object key of an upload")
    result_key: str | None = None
    gpu_seconds: float = 0.0
    attempts: int = 0
    applicant: str | None = None
    approvers: list[str] = Field(default_factory=list)
    department: str | None = None
    cost_center: str | None = None
    usage: str | None = None
    model: str | None = None
    quality: str | None = Field(None, description="the quality gate's verdict")
    error_code: str | None = None
    #: ``outcome`` (an edit finished), ``selection`` (the applicant picked a variant) or
    #: ``review`` (a desk reviewer acted: upload, rerun, send_back, verdict; docs/desk.md).
    kind: Literal["outcome", "selection", "review"] = "outcome"
    variants: int = 1
    #: ``preview``: an approver's approximate preview (its GPU time counts too).
    stage: str = "final"
    selected_variant: int | None = None
    selected_by: str | None = None
    #: A desk action (kind ``review``): which, by whom, and what the reviewer gave.
    review_action: str | None = None
    reviewer: str | None = None
    reviewer_name: str | None = None
    review_result_key: str | None = None
    review_instruction: str | None = None
    review_message: str | None = None
    review_verdict: str | None = None
    better_instruction: str | None = None


async def publish_audit(js: JetStreamContext, topology: Topology, record: AuditRecord) -> PubAck:
    """Publish ``record``; a repeat (the outbox retrying after a crash) is a duplicate."""
    return await js.publish(
        topology.audit_subject(record.namespace),
        record.model_dump_json().encode(),
        stream=topology.audit_stream,
        headers={"Nats-Msg-Id": f"audit:{record.completion_event_id}"},
    )


async def read_audit(
    js: JetStreamContext, topology: Topology, *, since: datetime, batch: int = 256
) -> AsyncIterator[AuditRecord]:
    """Every record stored since ``since``, oldest first, then stop (a snapshot, not a tail)."""
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since.isoformat(),
        inactive_threshold=30,  # gone by itself should the reader die first
        description="editflow audit export",
    )
    sub = await js.pull_subscribe(
        f"{topology.audit_subject_prefix}.>", stream=topology.audit_stream, config=config
    )
    try:
        async for message in until_drained(sub, batch):
            yield AuditRecord.model_validate_json(message.data)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def usage_rows(records: Iterable[AuditRecord], by: str) -> list[dict[str, Any]]:
    """Edits, outcomes and GPU-seconds per value of ``by``, the most GPU-seconds first."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}; expected one of {', '.join(GROUPS)}")
    rows: dict[str, dict[str, Any]] = {}
    # A selection is a choice among results already counted, not another edit.
    records = [r for r in records if r.kind == "outcome"]
    for record in records:
        key = getattr(record, by) or UNATTRIBUTED
        row = rows.setdefault(
            key,
            {
                by: key,
                "edits": 0,
                "succeeded": 0,
                "failed": 0,
                "needs_review": 0,
                "cancelled": 0,
                "gpu_seconds": 0.0,
            },
        )
        row["edits"] += 1
        column = {"success": "succeeded", "failed": "failed", "needs_review": "needs_review"}
        row[column.get(record.status, "cancelled")] += 1
        row["gpu_seconds"] = round(row["gpu_seconds"] + record.gpu_seconds, 3)
    return sorted(rows.values(), key=lambda row: (-row["gpu_seconds"], str(row[by])))
