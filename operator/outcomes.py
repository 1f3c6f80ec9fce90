"""What an EditJob's outcome says, built from the EditJob: pure, no I/O.

The builders that turn an EditJob (plain JSON as the apiserver gives it) into the event
contracts of :mod:`editflow.events` (the completion, the review request, the audit record,
the applicant's selection) and the alert body. The outbox (:mod:`.outbox`) makes them
durable and delivers them; the selection path (:mod:`.selection`) and the desk's actions
(:mod:`.review_actions`) publish theirs. One place, so a field an auditor reads is written the
same way on every path (issue 21: the outbox mixed these with its writer and deliverer).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from editflow.core.errors import ErrorInfo
from editflow.core.kubetime import parse_stamp as parse_time
from editflow.events.audit import AuditRecord
from editflow.events.models import (
    CompletionEvent,
    EditJobRef,
    QualityGate,
    ReviewData,
    ReviewEvent,
    SelectionData,
    SelectionEvent,
    VariantRef,
    selection_event_id,
)
from editflow.events.outcomes import completion_event, review_event
from editflow.operator.callbacks import alert_body
from editflow.operator.decision import Decision
from editflow.operator.kube import JSON
from editflow.operator.phases import OUTCOMES, gpu_seconds
from editflow.operator.tenancy import event_id_refusal

#: The ``source`` of the events the operator itself makes.
SOURCE = "/editflow/operator"


def completion_for(editjob: JSON) -> CompletionEvent:
    """The completion event of an EditJob in a final phase (its id is deterministic)."""
    meta, spec = editjob["metadata"], editjob["spec"]
    status = editjob.get("status") or {}
    outcome = OUTCOMES[status["phase"]]
    oa = spec.get("oa") or {}
    if event_id_refusal(editjob) is not None:
        # It claimed an approval it was not made for: it answers as itself, never for the
        # approval, whose own EditJob must still run and report (issue 20 §3).
        oa = {}
    fallback = f"{meta['namespace']}/{meta['name']}"
    error = None
    if outcome in ("failed", "needs_review"):
        error = ErrorInfo(
            status.get("errorCode") or outcome,
            status.get("message") or outcome,
            retriable=outcome == "needs_review",
        )
    return completion_event(
        editjob=EditJobRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"]),
        approval_event_id=oa.get("eventId") or f"editjob:{fallback}",
        form_id=oa.get("formId") or fallback,
        approval_id=oa.get("approvalInstanceId") or fallback,
        status=outcome,
        result_url=status.get("resultUrl"),
        result_key=status.get("resultKey"),
        cost_seconds=status.get("costSeconds"),
        attempts=int(status.get("attempts") or 0),
        error=error,
        message=status.get("message"),
        quality=_quality(status.get("quality")),
        stage="preview" if spec.get("preview") else "final",
        approximate=bool(spec.get("preview")),
        variants=[
            VariantRef(
                index=v["index"],
                seed=v.get("seed"),
                result_url=v.get("resultUrl"),
                result_key=v.get("resultKey"),
                quality=v.get("verdict"),
            )
            for v in status.get("variants") or []
        ],
    )


def outcome_parts(editjob: JSON, *, review: bool) -> dict[str, Any]:
    """Everything one outcome delivers, as the outbox's EditOutcome spec holds it: the
    completion, its audit record, the review request (NeedsReview), and where the OA
    callbacks go. Delivered from the EditJob itself, or from an EditOutcome once the
    EditJob is gone (:mod:`.outbox`): the same parts, built here once."""
    spec = editjob["spec"]
    event = completion_for(editjob)
    callback = spec.get("callback") or {}
    parts: dict[str, Any] = {
        "approvalEventId": event.data.approval_event_id,
        "completion": event.model_dump_json(),
        "audit": audit_for(editjob, event).model_dump_json(),
        "natsSubject": callback.get("natsSubject"),
        "webhookUrl": callback.get("webhookUrl"),
    }
    if review:
        parts["review"] = review_for(editjob, event).model_dump_json()
    return parts


def _quality(recorded: JSON | None) -> QualityGate | None:
    """The gate's status (camelCase) as the completion's ``quality``; None if it never ran."""
    if not recorded or "verdict" not in recorded:
        return None
    return QualityGate(
        verdict=recorded["verdict"],
        kind=recorded.get("kind", ""),
        changed_fraction=recorded.get("changedFraction", 0.0),
        ssim=recorded.get("ssim", 0.0),
        spread=recorded.get("spread", 0.0),
        reason=recorded.get("reason", ""),
    )


def edit_fields(editjob: JSON) -> dict[str, Any]:
    """What every audit record says of its EditJob (brief §8: prompt, source, result, cost,
    status, approver, department): one place for the outcome's record and a reviewer's."""
    meta, spec = editjob["metadata"], editjob.get("spec") or {}
    status = editjob.get("status") or {}
    oa = spec.get("oa") or {}
    source = spec.get("source") or {}
    return {
        "namespace": meta["namespace"],
        "editjob": meta["name"],
        "prompt": spec.get("prompt", ""),
        "source": source.get("url") or source.get("s3Key") or "",
        "result_key": status.get("resultKey"),
        "attempts": int(status.get("attempts") or 0),
        "applicant": oa.get("applicant"),
        "approvers": list(oa.get("approvers") or []),
        "department": oa.get("department"),
        "cost_center": oa.get("costCenter"),
        "usage": spec.get("usage"),
        "model": spec.get("model"),
        "quality": (status.get("quality") or {}).get("verdict"),
        "error_code": status.get("errorCode"),
    }


def audit_for(editjob: JSON, event: CompletionEvent) -> AuditRecord:
    """The audit record of an EditJob's outcome."""
    spec, status = editjob["spec"], editjob.get("status") or {}
    return AuditRecord(
        **edit_fields(editjob),
        completion_event_id=event.id,
        approval_event_id=event.data.approval_event_id,
        form_id=event.data.form_id,
        approval_id=event.data.approval_id,
        status=event.data.status,
        finished_at=parse_time(status.get("finishedAt")),
        gpu_seconds=gpu_seconds(status),
        variants=int(spec.get("variants") or 1),
        stage="preview" if spec.get("preview") else "final",
    )


def review_for(editjob: JSON, event: CompletionEvent) -> ReviewEvent:
    """The manual-review request that goes with a NeedsReview completion."""
    spec, status = editjob["spec"], editjob.get("status") or {}
    return review_event(
        data=ReviewData(
            approval_event_id=event.data.approval_event_id,
            form_id=event.data.form_id,
            approval_id=event.data.approval_id,
            applicant=None,
            image_url=spec["source"].get("url"),
            image_key=spec["source"].get("s3Key"),
            instruction=spec["prompt"],
            attempts=int(status.get("attempts") or 0),
            error=event.data.error,  # type: ignore[arg-type]
            editjob=event.data.editjob,
        )
    )


def wire_body(event: Any) -> bytes:
    """The structured CloudEvent JSON that webhooks receive."""
    return json.dumps(
        {**event.attributes(), "data": event.data_json()}, ensure_ascii=False
    ).encode()


def alert_if_needed_body(editjob: JSON, decision: Decision) -> tuple[str, bytes] | None:
    """(dedupe key, body) when a decision must page a person (brief §5), else None."""
    code = decision.status.get("errorCode")
    phase = decision.status.get("phase")
    if not (code in ("timeout", "no_gpu") or phase == "NeedsReview"):
        return None
    meta = editjob["metadata"]
    name = f"{meta['namespace']}/{meta['name']}"
    reason = "NeedsReview" if phase == "NeedsReview" else str(code)
    body = alert_body(name, reason, str(decision.status.get("message", "")))
    attempts = decision.status.get("attempts") or (editjob.get("status") or {}).get("attempts")
    return f"alert:{meta.get('uid', name)}:{reason}:{attempts}", body


def selection_for(
    editjob: JSON,
    variant: JSON,
    *,
    approval_event_id: str,
    form_id: str,
    approval_id: str,
    number: int,
    by: str | None,
    at: datetime,
) -> tuple[SelectionEvent, AuditRecord]:
    """The applicant's recorded pick and its audit record (kind ``selection``)."""
    meta = editjob["metadata"]
    selection = SelectionEvent(
        id=selection_event_id(approval_event_id, number),
        source=SOURCE,
        subject=approval_event_id[:256],
        data=SelectionData(
            approval_event_id=approval_event_id,
            form_id=form_id,
            approval_id=approval_id,
            variant=number,
            result_url=variant.get("resultUrl"),
            result_key=variant.get("resultKey"),
            seed=variant.get("seed"),
            selected_by=by,
            selected_at=at,
            editjob=EditJobRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"]),
        ),
    )
    audit = AuditRecord(
        **{**edit_fields(editjob), "result_key": variant.get("resultKey")},
        kind="selection",
        completion_event_id=selection.id,
        approval_event_id=approval_event_id,
        form_id=form_id,
        approval_id=approval_id,
        status="selected",
        finished_at=at,
        selected_variant=number,
        selected_by=by,
    )
    return selection, audit
