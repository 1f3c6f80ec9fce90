"""A delivery that the EditJob could not record keeps its outcome until it can (issue 19's
fault run found it): the outbox published the completion, the apiserver answered 503 to
``completionPublishedAt`` while restarting, the outcome object was deleted all the same, and
the EditJob waited for a record that never came. Real apiserver and NATS; only that one
status patch is made to fail, as the restarting apiserver did."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from editflow.devstack.stack import LocalStack
from editflow.operator.crd import editjob_path
from editflow.operator.informer import Store
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.outbox import Deliverer, Outbox
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
        name, outbox, deliverer, item = await _failed_edit_in_the_outbox(bus, namespace)

        RestartingApiserver.failures = 1
        with pytest.raises(KubeAPIError):
            await deliverer.deliver(item)
        (kept,) = outbox.store.items.values()  # the outcome stays, with what was sent
        assert {"completion", "audit"} <= set(kept["status"]["delivered"])
        assert "recording the delivery" in kept["status"]["lastError"]
        recorded = await bus.editjob(name)
        assert not recorded["status"].get("completionPublishedAt")

        await deliverer.deliver(kept)  # the apiserver is back
        assert len(outbox.store) == 0
        recorded = await bus.editjob(name)
        assert recorded["status"]["completionPublishedAt"]
        mine = [
            c
            for c in await asyncio.to_thread(
                stored_completions, stack.nats_url, bus.settings.events
            )
            if c["data"]["approval_event_id"] == recorded["spec"]["oa"]["eventId"]
        ]
        assert len(mine) == 1  # sent once, recorded once
    finally:
        await bus.close()


async def test_a_webhook_is_posted_once_per_delivery_then_given_up_and_recorded(
    stack: LocalStack, namespace: str, tmp_path
) -> None:
    """The one retry policy of callbacks (issue 21): the Deliverer's. Each delivery POSTs
    once; the attempt count and the next attempt live in the outcome object, and after
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
        name, outbox, deliverer, item = await _failed_edit_in_the_outbox(
            bus, namespace, callback={"webhookUrl": url}
        )

        await deliverer.deliver(item)
        assert len(seen) == 1  # one POST, not an in-memory burst
        (kept,) = outbox.store.items.values()
        assert kept["status"]["attempts"] == 1 and kept["status"]["nextAttemptAt"]
        assert "webhook" not in (kept["status"].get("delivered") or [])

        await deliverer.deliver(kept)
        assert len(seen) == 2 and len(outbox.store) == 0
        recorded = await bus.editjob(name)
        assert recorded["status"]["callbackDelivery"] == "gave_up"
        assert recorded["status"]["completionPublishedAt"]
    finally:
        await bus.close()


async def _failed_edit_in_the_outbox(
    bus: Bus, namespace: str, callback: dict[str, str] | None = None
) -> tuple[str, Outbox, Deliverer, dict[str, Any]]:
    """A refused edit's outcome, durable in the outbox and not delivered yet."""
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
                    "finishedAt": "2026-12-07T00:00:00Z", "errorCode": "invalid_input"}},
    )  # fmt: skip
    op = bus.settings.operator
    outbox = Outbox(op, bus.kube, store=Store(), now=lambda: datetime.now(UTC))
    deliverer = Deliverer(op, bus.kube, outbox, nats=bus.nc, topology=bus.topology)
    await outbox.publish_outcome(editjob, review=False)
    (item,) = outbox.store.items.values()
    return name, outbox, deliverer, item
