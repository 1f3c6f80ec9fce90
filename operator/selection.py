"""The applicant's pick among an edit's variants: recorded in status, the audit log, and the bus.

A ``select`` event (``io.editflow.select.v1``) comes from the try-it page (through the
gateway) or from the OA system (the SDK's :meth:`~editflow.events.sdk.OAClient.select`).
The bridge hands it to :func:`record_selection`, which

1. finds the approval's EditJob (its latest re-run, from the approval ledger),
2. checks that the edit succeeded and has that variant, else refuses with the field named
   (the event is dead-lettered with the reason, as any invalid event),
3. writes ``selectedVariant``, ``selectedAt`` and ``selectedBy`` into its status,
4. publishes the ``selection`` event (``io.editflow.selection.v1``, in the completions
   stream, id derived from approval and variant) and an audit record.

Every step is idempotent, so a redelivery after a crash repeats it harmlessly: the status
patch writes the same values, both publishes are JetStream duplicates. Picking again (the
applicant changed their mind) is a new selection with its own id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from editflow.core.errors import InvalidInputError, UpstreamError
from editflow.core.kubetime import stamp as kube_stamp
from editflow.events.audit import publish_audit
from editflow.events.ledger import ApprovalLedger
from editflow.events.models import SelectEvent, SelectionEvent
from editflow.events.publish import publish_event
from editflow.events.topology import Topology
from editflow.operator.crd import editjob_path
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import editjob_name
from editflow.operator.outcomes import selection_for
from editflow.operator.statuswriter import StatusWriter


def chosen(editjob: JSON, variant: int) -> dict[str, Any]:
    """The variant's record in status (variant 1 of a single-result edit is the result)."""
    status = editjob.get("status") or {}
    name = editjob["metadata"]["name"]
    if status.get("phase") != "Succeeded":
        raise InvalidInputError(
            f"editjob {name} is {status.get('phase') or 'Pending'}: a variant can be picked "
            "once the edit succeeded",
            field="data.approval_event_id",
        )
    variants = status.get("variants") or [
        {"index": 1, "resultKey": status.get("resultKey"), "resultUrl": status.get("resultUrl")}
    ]
    found = next((v for v in variants if v.get("index") == variant), None)
    if found is None:
        raise InvalidInputError(
            f"editjob {name} has variants 1 to {len(variants)}, not {variant}",
            field="data.variant",
        )
    return found


async def record_selection(
    event: SelectEvent,
    *,
    kube: AsyncKube,
    js: Any,
    topology: Topology,
    ledger: ApprovalLedger,
    namespace: str,
    writer: StatusWriter | None = None,
    now: datetime | None = None,
) -> SelectionEvent:
    data = event.data
    entry = await ledger.get(data.approval_event_id)
    name = (entry.editjob if entry and entry.editjob else None) or editjob_name(
        data.approval_event_id
    )
    ns = entry.namespace if entry and entry.namespace else namespace
    try:
        editjob = await kube.get(editjob_path(ns, name))
    except KubeAPIError as exc:
        raise UpstreamError(f"reading EditJob {name} failed: {exc}") from exc
    if editjob is None:
        raise InvalidInputError(
            f"no edit for approval event {data.approval_event_id!r} in namespace {ns}",
            field="data.approval_event_id",
        )
    variant = chosen(editjob, data.variant)
    moment = now or datetime.now(UTC)
    stamp = kube_stamp(moment)
    by = data.selected_by.id if data.selected_by else None
    status = editjob.get("status") or {}
    if status.get("selectedVariant") != data.variant or status.get("selectedBy") != by:
        patch = {"selectedVariant": data.variant, "selectedAt": stamp, "selectedBy": by}
        try:
            await (writer or StatusWriter(kube)).write(editjob, patch)  # the one status writer
        except KubeAPIError as exc:
            raise UpstreamError(f"recording the selection on {name} failed: {exc}") from exc
    selection, audit = selection_for(
        editjob,
        variant,
        approval_event_id=data.approval_event_id,
        form_id=data.form_id,
        approval_id=data.approval_id,
        number=data.variant,
        by=by,
        at=moment,
    )
    await publish_event(js, selection, topology.selection_subject(data.approval_event_id))
    await publish_audit(js, topology, audit)
    return selection
