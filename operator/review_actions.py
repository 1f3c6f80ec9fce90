"""The desk's review actions (``io.editflow.review.action.v1``, docs/desk.md), handled by the
bridge beside ``select``.

Each action is checked against the EditJob's current lane and phase first; a refusal raises
:class:`~editflow.core.errors.InvalidInputError` naming the field, and the bridge
dead-letters the event with it (as it does a select of a variant that does not exist).
Then the action takes effect through the paths that already exist, so there is one way an
edit finishes and one completion per outcome:

``upload``
    the resolve annotation ``editflow edits resolve --result-key`` sets, plus who reviewed it:
    the reconciler's :func:`~editflow.operator.decide.decide` ends the edit ``Succeeded`` with
    the designer's image and the outbox publishes the normal completion.
``send_back``
    the send-back annotation: ``decide`` ends it ``Failed`` with ``errorCode: sent_back`` and
    the message, which the completion carries to OA.
``rerun``
    the status goes back to ``Queued`` with ``reviewInstruction``: the reconciler starts one
    more attempt (``attempts`` is already at ``maxAttempts``, so a failure of it ends in
    NeedsReview again) and the worker gets the corrected instruction; spec keeps the original.
``verdict``
    ``status.reviewVerdict``; the edit completed long ago and publishes nothing more.

Idempotent by action id: the id travels in the same write as the action's effect (the
``review-action`` annotation, or ``status.reviewActionId``), so a redelivery after a crash
finds it and only repeats the audit record (a JetStream duplicate). Every action is audited
(``kind: review``) with the reviewer and the time. Status writes carry the resourceVersion
read, so an action racing another change of the EditJob is retried on the fresh state.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from editflow.core.errors import InvalidInputError, UpstreamError
from editflow.core.kubetime import stamp
from editflow.events.audit import AuditRecord, publish_audit
from editflow.events.desk import ReviewActionData, ReviewActionEvent
from editflow.events.topology import Topology
from editflow.operator.crd import editjob_path
from editflow.operator.decide import wants_resolution
from editflow.operator.desk import DeskPublisher, lane_of
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import (
    ANNOTATION_RESOLVE,
    ANNOTATION_REVIEW_ACTION,
    ANNOTATION_REVIEWED_BY,
    ANNOTATION_SEND_BACK,
)
from editflow.operator.outcomes import edit_fields
from editflow.operator.phases import FINAL_PHASES
from editflow.operator.statuswriter import StatusWriter
from editflow.operator.tenancy import resolve_key_refusal

log = logging.getLogger("editflow.operator.review_actions")

#: The actions of a NeedsReview edit, and those of a sampled or gate-flagged one.
NEEDS_REVIEW_ACTIONS = frozenset({"upload", "rerun", "send_back"})
#: Actions whose effect is a status write here (upload and send_back end in the reconciler).
STATUS_ACTIONS = frozenset({"rerun", "verdict"})
#: The conditions of a finished edit, dropped when a re-run reopens it.
FINISHED = ("Completed", "Ready")


def already_applied(editjob: JSON, action_id: str) -> bool:
    """Whether this action's write is already on the EditJob (a redelivery)."""
    annotations = editjob["metadata"].get("annotations") or {}
    status = editjob.get("status") or {}
    return action_id in (annotations.get(ANNOTATION_REVIEW_ACTION), status.get("reviewActionId"))


def refusal(
    editjob: JSON, data: ReviewActionData, *, result_prefix: str
) -> InvalidInputError | None:
    """Why the action must not be taken on the EditJob as it is now (``None``: go ahead)."""
    status = editjob.get("status") or {}
    phase = status.get("phase") or "Pending"
    name = editjob["metadata"]["name"]
    if data.action in NEEDS_REVIEW_ACTIONS:
        if wants_resolution(editjob):
            return InvalidInputError(
                f"this edit has finished: a reviewer already decided editjob {name} "
                "(its outcome is on its way)",
                field="data.action",
            )
        if phase != "NeedsReview":
            finished = phase in FINAL_PHASES
            why = "this edit has finished" if finished else f"editjob {name} is {phase}"
            return InvalidInputError(
                f"{why}: {data.action} is for NeedsReview only", field="data.action"
            )
        if data.action == "upload":
            assert data.result_key is not None
            refused = resolve_key_refusal(
                editjob, data.result_key, result_prefix=result_prefix, field="data.result_key"
            )
            if refused is not None:
                return InvalidInputError(refused, field="data.result_key")
        return None
    # verdict: a sampled or gate-flagged success, once.
    recorded = status.get("reviewVerdict") or {}
    if recorded:
        by = (recorded.get("by") or {}).get("name") or (recorded.get("by") or {}).get("id")
        return InvalidInputError(
            f"a verdict on editjob {name} is already recorded ({recorded.get('verdict')} by {by})",
            field="data.action",
        )
    if lane_of(editjob) not in ("flagged", "sample"):
        why = "it needs review: upload, rerun or send_back" if phase == "NeedsReview" else phase
        return InvalidInputError(
            f"verdict is for sampled and gate-flagged edits only; editjob {name} is not ({why})",
            field="data.action",
        )
    return None


def _reviewer(data: ReviewActionData) -> dict[str, Any]:
    return {"id": data.reviewer.id, "name": data.reviewer.name}


def effect(editjob: JSON, event: ReviewActionEvent, now: datetime) -> tuple[str, JSON]:
    """The write that carries out the action: (``"metadata"`` or ``"status"``, merge patch)."""
    data = event.data
    reviewer = json.dumps(_reviewer(data), ensure_ascii=False)
    version = editjob["metadata"].get("resourceVersion")
    guard = {"metadata": {"resourceVersion": version}} if version else {}
    if data.action in ("upload", "send_back"):
        ask = (
            {ANNOTATION_RESOLVE: data.result_key}
            if data.action == "upload"
            else {ANNOTATION_SEND_BACK: (data.message or "")[:4000]}
        )
        annotations = {**ask, ANNOTATION_REVIEWED_BY: reviewer, ANNOTATION_REVIEW_ACTION: event.id}
        return "metadata", {"metadata": {**guard.get("metadata", {}), "annotations": annotations}}
    status = editjob.get("status") or {}
    if data.action == "rerun":
        who = data.reviewer.name or data.reviewer.id
        patch = {
            "phase": "Queued",
            "message": f"re-run by {who} with a corrected instruction",
            "reviewInstruction": data.instruction,
            "reviewAttempts": int(status.get("reviewAttempts") or 0) + 1,
            "reviewActionId": event.id,
            "jobName": None,
            "retryAfter": None,
            "finishedAt": None,
            # The last outcome was delivered; the next is written with its final phase.
            "completionEventId": None,
            "completionPublishedAt": None,
            "callbackDelivery": None,
            "delivery": None,
            "queuedAt": stamp(now),
            # Not completed any more: the next outcome sets Completed and Ready again.
            "conditions": [
                c for c in status.get("conditions") or [] if c.get("type") not in FINISHED
            ],
        }
        return "status", {**guard, "status": patch}
    verdict = {
        "verdict": data.verdict,
        "betterInstruction": data.better_instruction,
        "by": _reviewer(data),
        "at": stamp(now),
    }
    return "status", {**guard, "status": {"reviewVerdict": verdict, "reviewActionId": event.id}}


def audit_record(editjob: JSON, event: ReviewActionEvent, now: datetime) -> AuditRecord:
    """The action's audit record (kind ``review``), keyed by the action id."""
    data = event.data
    meta, spec = editjob["metadata"], editjob.get("spec") or {}
    oa = spec.get("oa") or {}
    fallback = f"{meta['namespace']}/{meta['name']}"
    return AuditRecord(
        **edit_fields(editjob),
        kind="review",
        completion_event_id=f"review:{event.id}",
        approval_event_id=oa.get("eventId") or f"editjob:{fallback}",
        form_id=oa.get("formId") or fallback,
        approval_id=oa.get("approvalInstanceId") or fallback,
        status=(editjob.get("status") or {}).get("phase") or "",
        finished_at=now,
        review_action=data.action,
        reviewer=data.reviewer.id,
        reviewer_name=data.reviewer.name,
        review_result_key=data.result_key,
        review_instruction=data.instruction,
        review_message=data.message,
        review_verdict=data.verdict,
        better_instruction=data.better_instruction,
    )


async def handle_review_action(
    event: ReviewActionEvent,
    *,
    kube: AsyncKube,
    js: Any,
    topology: Topology,
    namespaces: list[str],
    result_prefix: str,
    desk: DeskPublisher | None = None,
    writer: StatusWriter | None = None,
    now: datetime | None = None,
) -> str:
    """Check and carry out one action; returns ``applied`` or ``duplicate``.

    A status change goes through the operator's one status writer, guarded by the
    resourceVersion the action was decided on; an annotation (upload, send back) is the
    reconciler's to carry out, through ``decide()``.
    """
    data = event.data
    if data.namespace not in namespaces:
        raise InvalidInputError(
            f"namespace {data.namespace!r} is not one this operator watches "
            f"({', '.join(namespaces)})",
            field="data.namespace",
        )
    path = editjob_path(data.namespace, data.editjob)
    try:
        editjob = await kube.get(path)
    except (KubeAPIError, OSError) as exc:
        raise UpstreamError(f"reading EditJob {data.editjob} failed: {exc}") from exc
    if editjob is None:
        raise InvalidInputError(
            f"this edit has finished: editjob {data.namespace}/{data.editjob} no longer exists",
            field="data.editjob",
        )
    moment = now or datetime.now(UTC)
    result = "duplicate"
    if not already_applied(editjob, event.id):
        refused = refusal(editjob, data, result_prefix=result_prefix)
        if refused is not None:
            raise refused
        where, patch = effect(editjob, event, moment)
        try:
            if where == "status":
                writer = writer or StatusWriter(kube)
                written = await writer.write(editjob, patch["status"], guarded=True)
                if written is None:
                    raise KubeAPIError(404, "NotFound", f"editjob {data.editjob} not found")
                editjob = written
            else:
                editjob = await kube.patch(path, patch)
        except KubeAPIError as exc:
            if exc.status == 404:
                raise InvalidInputError(
                    f"this edit has finished: editjob {data.editjob} was deleted meanwhile",
                    field="data.editjob",
                ) from exc
            # 409: it changed since it was read; the redelivery checks the fresh state.
            raise UpstreamError(f"applying {data.action} to {data.editjob} failed: {exc}") from exc
        except OSError as exc:
            raise UpstreamError(f"apiserver unreachable: {exc}") from exc
        result = "applied"
    await publish_audit(js, topology, audit_record(editjob, event, moment))
    if desk is not None and data.action in STATUS_ACTIONS:
        desk.update(editjob)  # verdict and rerun leave the desk now; upload/send_back on finish
    log.info(
        "review action %s on editjob %s: %s",
        data.action,
        data.editjob,
        result,
        extra={"event_id": event.id, "editjob": f"{data.namespace}/{data.editjob}",
               "reviewer": data.reviewer.id, "decision": result},
    )  # fmt: skip
    return result
