"""Build and publish the operator's outgoing events: completions and manual-review requests.

The operator calls, once the EditJob reached a final phase::

    event = completion_event(editjob=EditJobRef(namespace=..., name=..., uid=...),
                             approval_event_id=spec_event_id, form_id=..., approval_id=...,
                             status="success", result_url=..., result_key=..., cost_seconds=...,
                             attempts=2)
    ack = await publish_completion(js, topology, event)   # then record event.id in status

The event id is :func:`~editflow.events.models.completion_event_id` of the
EditJob and the status, so publishing again after a crash (status not yet
recorded) is a JetStream duplicate: OA sees one completion per outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import PubAck

from editflow.core.errors import ErrorInfo
from editflow.events.models import (
    CompletionData,
    CompletionEvent,
    EditJobRef,
    EditStatus,
    ErrorDetail,
    QualityGate,
    ReviewData,
    ReviewEvent,
    VariantRef,
    completion_event_id,
)
from editflow.events.publish import publish_event
from editflow.events.topology import Topology

OPERATOR_SOURCE = "/editflow/operator"


def _detail(error: ErrorInfo | ErrorDetail | None) -> ErrorDetail | None:
    if error is None or isinstance(error, ErrorDetail):
        return error
    return ErrorDetail.from_info(error)


def completion_event(
    *,
    editjob: EditJobRef,
    approval_event_id: str,
    form_id: str,
    approval_id: str,
    status: EditStatus,
    result_url: str | None = None,
    result_url_expires_at: datetime | None = None,
    result_key: str | None = None,
    cost_seconds: float | None = None,
    attempts: int = 0,
    error: ErrorInfo | ErrorDetail | None = None,
    message: str | None = None,
    quality: QualityGate | None = None,
    variants: list[VariantRef] | None = None,
    stage: Literal["final", "preview"] = "final",
    approximate: bool = False,
    source: str = OPERATOR_SOURCE,
    time: datetime | None = None,
) -> CompletionEvent:
    """The completion event of an EditJob, with its deterministic id."""
    extra: dict[str, Any] = {"time": time} if time is not None else {}
    return CompletionEvent(
        id=completion_event_id(
            namespace=editjob.namespace, name=editjob.name, uid=editjob.uid, status=status
        ),
        source=source,
        subject=approval_event_id[:256],
        data=CompletionData(
            approval_event_id=approval_event_id,
            form_id=form_id,
            approval_id=approval_id,
            status=status,
            result_url=result_url,
            result_url_expires_at=result_url_expires_at,
            result_key=result_key,
            cost_seconds=cost_seconds,
            attempts=attempts,
            error=_detail(error),
            message=message,
            editjob=editjob,
            quality=quality,
            variants=variants or [],
            stage=stage,
            approximate=approximate,
        ),
        **extra,
    )


async def publish_completion(
    js: JetStreamContext, topology: Topology, event: CompletionEvent
) -> PubAck:
    """Publish to ``<completion prefix>.<token of the approval id>``, ``Nats-Msg-Id`` = id."""
    return await publish_event(js, event, topology.completion_subject(event.data.approval_event_id))


def review_event(
    *,
    data: ReviewData,
    source: str = OPERATOR_SOURCE,
) -> ReviewEvent:
    """A manual-review request; its id is derived like a completion's (outcome ``review``)."""
    ref = data.editjob
    event_id = (
        completion_event_id(
            namespace=ref.namespace, name=ref.name, uid=ref.uid, status="needs_review"
        )
        + ":review"
        if ref is not None
        else f"{data.approval_event_id}:review:{data.attempts}"
    )
    return ReviewEvent(id=event_id, source=source, subject=data.approval_event_id[:256], data=data)


async def publish_review(js: JetStreamContext, topology: Topology, event: ReviewEvent) -> PubAck:
    """Publish a manual-review request to ``<review prefix>.<token of the approval id>``."""
    return await publish_event(js, event, topology.review_subject(event.data.approval_event_id))
