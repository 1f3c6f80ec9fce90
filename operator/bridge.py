"""The bridge: approval events from JetStream become EditJobs; withdraw events cancel them.

Runs inside the operator on the durable consumer of :mod:`editflow.events.consumer`.
An event is acked only after its EditJob was created or already existed
(the name is derived from the event id, so a redelivery is ``AlreadyExists``).
An invalid event, or one the apiserver's schema refuses, is dead-lettered
with the reason and never reaches the cluster. Any other failure (apiserver
down, timeouts) is retried with backoff.
"""

from __future__ import annotations

import logging

from editflow.core.errors import InvalidInputError, UpstreamError
from editflow.core.settings import Settings
from editflow.events.consumer import Delivery
from editflow.events.models import ApprovalEvent, WithdrawEvent
from editflow.operator import metrics
from editflow.operator.crd import editjob_path
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import (
    ANNOTATION_CANCEL,
    ANNOTATION_EVENT_ID,
    LABEL_APPROVAL,
    LABEL_FORM,
    editjob_name,
    label_value,
)

log = logging.getLogger("editflow.operator.bridge")


class Bridge:
    """The handler :func:`editflow.events.consumer.run_consumer` calls for each OA event."""

    def __init__(self, settings: Settings, kube: AsyncKube) -> None:
        self.settings = settings
        self.kube = kube
        self.namespace = settings.namespace

    async def __call__(self, event: ApprovalEvent | WithdrawEvent, delivery: Delivery) -> None:
        if isinstance(event, ApprovalEvent):
            await self.approve(event)
        else:
            await self.withdraw(event)

    async def approve(self, event: ApprovalEvent) -> None:
        manifest = editjob_from_approval(
            event,
            namespace=self.namespace,
            bucket=self.settings.s3.bucket,
            default_model=self.settings.operator.default_model,
        )
        name = manifest["metadata"]["name"]
        try:
            await self.kube.create(editjob_path(self.namespace), manifest)
            result = "created"
        except KubeAPIError as exc:
            if exc.status == 409:
                result = "exists"
            elif exc.status in (400, 422):
                metrics.BRIDGE_EVENTS.labels("approval", "refused").inc()
                raise InvalidInputError(f"the EditJob was refused: {exc.message}") from exc
            else:
                raise UpstreamError(f"creating EditJob {name} failed: {exc}") from exc
        except OSError as exc:
            raise UpstreamError(f"apiserver unreachable: {exc}") from exc
        metrics.BRIDGE_EVENTS.labels("approval", result).inc()
        log.info(
            "approval -> editjob %s (%s)",
            name,
            result,
            extra={"event_id": event.id, "editjob": f"{self.namespace}/{name}"},
        )

    async def withdraw(self, event: WithdrawEvent) -> None:
        data = event.data
        reason = data.reason or f"withdrawn in the OA system (event {event.id})"
        targets: list[str] = []
        if data.approval_event_id:
            targets.append(editjob_name(data.approval_event_id))
        else:
            selector = (
                f"{LABEL_FORM}={label_value(data.form_id)},"
                f"{LABEL_APPROVAL}={label_value(data.approval_id)}"
            )
            items = await self.kube.list(editjob_path(self.namespace), labelSelector=selector)
            targets = [i["metadata"]["name"] for i in items]
        cancelled = 0
        for name in targets:
            patch = {"metadata": {"annotations": {ANNOTATION_CANCEL: reason[:500]}}}
            try:
                await self.kube.patch(editjob_path(self.namespace, name), patch)
                cancelled += 1
            except KubeAPIError as exc:
                if exc.status != 404:
                    raise UpstreamError(f"cancelling EditJob {name} failed: {exc}") from exc
        metrics.BRIDGE_EVENTS.labels("withdraw", "cancelled" if cancelled else "nothing").inc()
        log.info(
            "withdraw cancelled %d editjob(s)",
            cancelled,
            extra={"event_id": event.id, ANNOTATION_EVENT_ID: data.approval_event_id},
        )
