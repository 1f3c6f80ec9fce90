"""Delivering an outcome from its EditJob, and from the outbox once the EditJob is gone
(issue 21 item 2). Real apiserver and NATS.

* A delivery the EditJob could not record (issue 19's fault run found it: the apiserver
  answered 503 to ``completionPublishedAt`` while restarting) is sent again with the same id
  and recorded then: one completion in the stream, one record.
* A webhook is posted once per delivery; its retry state lives in the EditJob's status.
* An outcome of a deleted EditJob is kept in an EditOutcome until it is sent, and nothing
  is written on the EditJob: its status has one writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from editflow.devstack.stack import LocalStack
from editflow.operator.caches import ClusterCache
from editflow.operator.crd import editjob_path
from editflow.operator.delivery import EditJobDelivery, OutcomeSender
from editflow.operator.informer import Store
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.outbox import Deliverer, Outbox
from editflow.operator.statuswriter import StatusWriter
from tests.harness import scratch_namespace, stored_completions
from tests.operator.test_bridge import Bus, _settings, approval

pytestmark = [pytest.mark.platform]


class RestartingApiserver(AsyncKube):
    """Answers 503 to the next ``failures`` patches that record a delivery on an EditJob."""

    failures = 0

    async def patch(self, path: str, body: Any, *, kind: str = "merge") -> Any:
        status = (body or {}).get("status") or {}
        if self.failures and "/editjobs/" in path and "completionPublishedAt" in status:
            RestartingApiserver.failures -= 1
            raise KubeAPIError(503, "ServiceUnavailable", "the apiserver is restarting")
        return await super().patch(path, body, kind=kind)


@pytest.fixture(scope="module")
def namespace(stack: LocalStack) -> Iterator[str]:
    yield from scratch_namespace(stack, "outbox-record")


async def test_a_delivery_the_editjob_did_not_record_is_recorded_later_and_sent_once(
    stack: LocalStack, namespace: str
) -> None:
    bus = Bus(stack, _settings(stack, namespace))
    await bus.open(kube_class=RestartingApiserver)
    try:
        name, editjob, delivery = await _failed_edit(bus, namespace)

        RestartingApiserver.failures = 1
        with pytest.raises(KubeAPIError):
            await delivery.deliver(editjob, review=False)
        recorded = await bus.editjob(name)
        assert not recorded["status"].get("completionPublishedAt")  # not recorded: sent again

        await delivery.deliver(recorded, review=False)  # the apiserver is back
        recorded = await bus.editjob(name)
        assert recorded["status"]["completionPublishedAt"]
        assert recorded["status"]["callbackDelivery"] != "pending"
        mine = [
            c
            for c in await asyncio.to_thread(
                stored_completions, stack.nats_url, bus.settings.events
            )
            if c["data"]["approval_event_id"] == recorded["spec"]["oa"]["eventId"]
        ]
        assert len(mine) == 1  # sent twice with one id, stored once, recorded once
    finally:
        await bus.close()


async def test_a_webhook_is_posted_once_per_delivery_then_given_up_and_recorded(
    stack: LocalStack, namespace: str, tmp_path
) -> None:
    """The one retry policy of callbacks (issue 21): each delivery POSTs once; the attempt
    count and the next attempt live in the EditJob's status (``status.delivery``), and after
    ``callback_max_attempts`` the EditJob records that the webhook gave up."""
    from tests.operator.test_callbacks import LOOPBACK, https_receiver

    url, ca, seen = https_receiver(tmp_path, answers=[503] * 5)
    settings = _settings(
        stack,
        namespace,
        callback_ca_file=str(ca),
        callback_allow_cidrs=LOOPBACK,
        callback_max_attempts=2,
        callback_backoff_seconds=0,
    )
    bus = Bus(stack, settings)
    await bus.open()
    try:
        name, editjob, delivery = await _failed_edit(bus, namespace, callback={"webhookUrl": url})

        waiting = await delivery.deliver(editjob, review=False)
        assert len(seen) == 1  # one POST, not an in-memory burst
        assert waiting is not None
        state = waiting["status"]["delivery"]
        assert state["attempts"] == 1 and state["nextAttemptAt"]
        assert {"completion", "audit"} <= set(state["delivered"]) and "webhook" not in state[
            "delivered"
        ]
        assert waiting["status"]["callbackDelivery"] == "pending"
        assert waiting["status"]["completionPublishedAt"]  # the completion itself is out

        await delivery.deliver(waiting, review=False)
        assert len(seen) == 2
        recorded = await bus.editjob(name)
        assert recorded["status"]["callbackDelivery"] == "gave_up"
        assert "delivery" not in recorded["status"]
    finally:
        await bus.close()


async def test_the_outcome_of_a_deleted_editjob_is_kept_in_the_outbox_until_sent(
    stack: LocalStack, namespace: str
) -> None:
    bus = Bus(stack, _settings(stack, namespace))
    await bus.open()
    try:
        name, editjob, _ = await _failed_edit(bus, namespace)
        op = bus.settings.operator
        outbox = Outbox(op, bus.kube, store=Store(), now=lambda: datetime.now(UTC))
        deliverer = Deliverer(op, bus.kube, outbox, nats=bus.nc, topology=bus.topology)
        await outbox.hold(editjob, review=False)
        await bus.kube.delete(editjob_path(namespace, name))
        (item,) = outbox.store.items.values()

        await deliverer.deliver(item)
        assert len(outbox.store) == 0
        mine = [
            c
            for c in await asyncio.to_thread(
                stored_completions, stack.nats_url, bus.settings.events
            )
            if c["data"]["approval_event_id"] == editjob["spec"]["oa"]["eventId"]
        ]
        assert [c["data"]["status"] for c in mine] == ["failed"]
    finally:
        await bus.close()


async def _failed_edit(
    bus: Bus, namespace: str, callback: dict[str, str] | None = None
) -> tuple[str, dict[str, Any], EditJobDelivery]:
    """A refused edit, final with its outcome to deliver, as the reconciler writes it."""
    body = editjob_from_approval(
        approval(), namespace=namespace, bucket="editflow", default_model="longcat-image-edit"
    )
    if callback:
        body["spec"]["callback"] = callback
    created = await bus.kube.create(editjob_path(namespace), body)
    name = created["metadata"]["name"]
    editjob = await bus.kube.patch(
        editjob_path(namespace, name) + "/status",
        {"status": {"phase": "Failed", "message": "refused", "attempts": 0,
                    "finishedAt": "2026-12-07T00:00:00Z", "errorCode": "invalid_input",
                    "callbackDelivery": "pending"}},
    )  # fmt: skip
    op = bus.settings.operator
    now = lambda: datetime.now(UTC)  # noqa: E731
    writer = StatusWriter(bus.kube, ClusterCache(bus.kube, [namespace]))
    sender = OutcomeSender(op, nats=bus.nc, topology=bus.topology, now=now)
    return name, editjob, EditJobDelivery(op, sender, write=writer.write)
