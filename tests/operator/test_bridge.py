"""The bridge on a real apiserver and NATS: concurrent, deduplicated by the ledger, re-runnable.

The bridge runs in the test's event loop (``run_bridge``, as the operator runs
it) without the rest of the operator, so the EditJobs it creates stay as
created: nothing reconciles them, and what the tests see is the bridge alone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from typer.testing import CliRunner

from editflow.cli.main import app
from editflow.core.settings import Settings
from editflow.devstack.stack import LocalStack
from editflow.events.binding import MSG_ID, encode
from editflow.events.connection import connect
from editflow.events.ledger import ApprovalLedger, LedgerEntry
from editflow.events.models import (
    ApprovalData,
    ApprovalEvent,
    Person,
    WithdrawData,
    WithdrawEvent,
    approval_event_id,
)
from editflow.events.publish import publish_event, publish_wire
from editflow.events.topology import Topology, provision
from editflow.operator.bridge import ANNOTATION_RERUN, Bridge, create_editjob, run_bridge
from editflow.operator.crd import editjob_path
from editflow.operator.kube import AsyncKube
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import ANNOTATION_CANCEL, LABEL_APPROVAL, editjob_name
from tests.harness import bridge_settings, scratch_namespace

pytestmark = [pytest.mark.platform, pytest.mark.slow]

SOURCE = "https://oa.example.com"


async def eventually(check: Callable[[], Awaitable[Any]], *, what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy (async: the bridge shares the loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def namespace(stack: LocalStack) -> Iterator[str]:
    yield from scratch_namespace(stack, "bridge")


def _settings(stack: LocalStack, namespace: str, **operator: Any) -> Settings:
    events = {"ack_wait_seconds": 2.0, "max_deliver": 4}
    return bridge_settings(stack, namespace, events=events, **operator)


class Bus:
    """One test's NATS names, ledger, apiserver client and (once started) bridge."""

    def __init__(self, stack: LocalStack, settings: Settings) -> None:
        self.stack = stack
        self.settings = settings
        self.topology = Topology(settings.events)
        self.namespace = settings.namespace
        self.task: asyncio.Task | None = None
        self.stop = asyncio.Event()

    async def open(self, kube_class: type[AsyncKube] = AsyncKube) -> None:
        self.nc = await connect(self.settings.nats, name="bridge-test", reconnect_wait=0.2)
        self.js = self.nc.jetstream()
        await provision(self.js, self.topology)
        self.ledger = await ApprovalLedger.open(self.js, self.topology)
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(
            config_file=str(self.stack.kubeconfig), client_configuration=cfg
        )
        self.kube = kube_class(cfg)

    def start(self) -> None:
        self.task = asyncio.create_task(
            run_bridge(
                self.settings, self.kube, self.nc, self.topology, ledger=self.ledger,
                stop=self.stop,
            )
        )  # fmt: skip

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        await self.kube.close()
        await self.nc.close()

    async def publish(self, event: ApprovalEvent | WithdrawEvent, *, msg_id: str | None = None):
        subject = (
            self.topology.approval_subject
            if isinstance(event, ApprovalEvent)
            else self.topology.withdraw_subject
        )
        if msg_id is None:
            return await publish_event(self.js, event, subject)
        message = encode(event)
        message.headers[MSG_ID] = msg_id
        return await publish_wire(self.js, subject, message)

    async def handled(self, seq: int) -> bool:
        """The consumer acked everything up to ``seq`` (the bridge decided on each)."""
        info = await self.js.consumer_info(self.topology.approvals_stream, self.topology.consumer)
        return info.ack_floor.stream_seq >= seq and not info.num_ack_pending

    async def editjob(self, name: str) -> dict | None:
        return await self.kube.get(editjob_path(self.namespace, name))

    async def editjobs(self, approval_id: str) -> list[str]:
        items = await self.kube.list(
            editjob_path(self.namespace), labelSelector=f"{LABEL_APPROVAL}={approval_id}"
        )
        return sorted(i["metadata"]["name"] for i in items)


@pytest.fixture
async def bus(stack: LocalStack, namespace: str) -> AsyncIterator[Bus]:
    bus = Bus(stack, _settings(stack, namespace))
    await bus.open()
    yield bus
    await bus.close()


def approval(**data: Any) -> ApprovalEvent:
    fields: dict[str, Any] = {
        "form_id": "F-7",
        "approval_id": f"AP-{uuid.uuid4().hex[:8]}",
        "applicant": Person(id="u42"),
        # A literal public address: the bridge's SSRF guard resolves names, and the test
        # machine has no DNS (an unresolvable host is dead-lettered: tests/operator/test_refusals).
        "image_url": "https://93.184.215.14/files/poster.png",
        "instruction": "remove the watermark",
    }
    fields.update(data)
    return ApprovalEvent(source=SOURCE, data=ApprovalData(**fields))


def withdraw(event: ApprovalEvent, *, by_event_id: bool = True) -> WithdrawEvent:
    return WithdrawEvent(
        source=SOURCE,
        data=WithdrawData(
            form_id=event.data.form_id,
            approval_id=event.data.approval_id,
            approval_event_id=event.id if by_event_id else None,
            reason="revoked by the applicant",
        ),
    )


# -- concurrency -------------------------------------------------------------------------------


class GatedKube(AsyncKube):
    """The real client; creates are held until ``window`` of them are in flight at once.

    Counting the peak (not timing anything) proves the batch is handled
    concurrently; a sequential bridge never fills the window, gives up waiting
    after a while and shows a peak of 1.
    """

    window = 32

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.peak = 0
        self.full = asyncio.Event()

    async def create(self, path: str, body: dict) -> dict:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.in_flight >= self.window:
                self.full.set()
            if not self.full.is_set():
                try:
                    await asyncio.wait_for(self.full.wait(), 15)
                except TimeoutError:
                    self.full.set()
            return await super().create(path, body)
        finally:
            self.in_flight -= 1


async def test_a_batch_of_200_approvals_is_handled_concurrently_and_each_acked_once_created(
    stack, namespace
):
    bus = Bus(stack, _settings(stack, namespace, bridge_concurrency=GatedKube.window))
    await bus.open(GatedKube)
    try:
        batch_id = f"AP-batch-{uuid.uuid4().hex[:6]}"
        events = [approval(form_id=f"F-{i}", approval_id=batch_id) for i in range(200)]
        last = None
        for event in events:
            last = await bus.publish(event)
        bus.start()
        await eventually(lambda: bus.handled(last.seq), timeout=120, what="200 approvals acked")
        assert isinstance(bus.kube, GatedKube)
        assert bus.kube.peak == GatedKube.window  # filled, and never more than the bound
        names = await bus.editjobs(batch_id)
        assert names == sorted(editjob_name(e.id) for e in events)
        entries = await asyncio.gather(*(bus.ledger.get(e.id) for e in events))
        assert {e.state for e in entries} == {"created"}
        assert sorted(e.stream_seq for e in entries) == list(range(1, 201))
        info = await bus.js.consumer_info(bus.topology.approvals_stream, bus.topology.consumer)
        assert info.num_redelivered == 0
    finally:
        await bus.close()


# -- the ledger decides ------------------------------------------------------------------------


async def test_an_approval_whose_editjob_was_deleted_does_not_come_back_when_redelivered(bus):
    event = approval()
    first = await bus.publish(event)
    bus.start()
    await eventually(lambda: bus.handled(first.seq), what="the approval handled")
    name = editjob_name(event.id)
    assert await bus.editjob(name) is not None
    await delete_without_operator(bus, name)

    # The same CloudEvent again under another Nats-Msg-Id: JetStream stores it as new.
    again = await bus.publish(event, msg_id=f"republished-{uuid.uuid4()}")
    assert not again.duplicate and again.seq > first.seq
    await eventually(lambda: bus.handled(again.seq), what="the redelivery handled")
    assert await bus.editjob(name) is None
    assert await bus.editjobs(event.data.approval_id) == []
    assert (await bus.ledger.get(event.id)).state == "created"


async def _gone(bus: Bus, name: str) -> bool:
    return await bus.editjob(name) is None


async def delete_without_operator(bus: Bus, name: str) -> None:
    """Delete an EditJob as if the operator had handled its deletion finalizer (no operator
    runs in these tests; the bridge creates EditJobs with the finalizer already set)."""
    path = editjob_path(bus.namespace, name)
    assert await bus.kube.delete(path)
    await bus.kube.patch(path, {"metadata": {"finalizers": None}})
    await eventually(lambda: _gone(bus, name), what="the EditJob deleted")


async def test_a_finished_approval_replayed_later_creates_nothing(bus):
    event = approval()
    await bus.ledger.record_created(event.id, namespace=bus.namespace, editjob="x", stream_seq=1)
    await bus.ledger.record_finished(event.id, outcome="success")
    ack = await bus.publish(event)
    bus.start()
    await eventually(lambda: bus.handled(ack.seq), what="the replay handled")
    assert await bus.editjobs(event.data.approval_id) == []
    assert (await bus.ledger.get(event.id)).outcome == "success"


async def test_a_withdrawal_that_arrives_before_its_approval_keeps_it_from_running(bus):
    event = approval()
    bus.start()
    first = await bus.publish(withdraw(event))
    await eventually(lambda: bus.handled(first.seq), what="the withdrawal handled")
    ack = await bus.publish(event)
    await eventually(lambda: bus.handled(ack.seq), what="the approval handled")
    # It exists only to end Cancelled (the operator publishes `cancelled`); nothing runs.
    assert await bus.editjobs(event.data.approval_id) == [editjob_name(event.id)]
    editjob = await bus.editjob(editjob_name(event.id))
    assert editjob["metadata"]["annotations"][ANNOTATION_CANCEL] == "revoked by the applicant"
    entry = await bus.ledger.get(event.id)
    assert entry.state == "withdrawn" and entry.reason == "revoked by the applicant"


async def test_a_withdrawal_by_form_and_approval_id_before_an_sdk_approval_keeps_it_from_running(
    bus,
):
    """The SDK's default approval id is derived from (source, form, approval), so a withdraw
    that names only the form and approval still finds the approval that has not come yet."""
    data = approval().data
    event = ApprovalEvent(
        id=approval_event_id(SOURCE, data.form_id, data.approval_id), source=SOURCE, data=data
    )
    bus.start()
    first = await bus.publish(withdraw(event, by_event_id=False))
    await eventually(lambda: bus.handled(first.seq), what="the withdrawal handled")
    ack = await bus.publish(event)
    await eventually(lambda: bus.handled(ack.seq), what="the approval handled")
    assert await bus.editjobs(data.approval_id) == [editjob_name(event.id)]
    editjob = await bus.editjob(editjob_name(event.id))
    assert ANNOTATION_CANCEL in editjob["metadata"]["annotations"]
    assert (await bus.ledger.get(event.id)).state == "withdrawn"


async def test_a_withdrawal_after_the_approval_cancels_its_editjob(bus):
    event = approval()
    bus.start()
    first = await bus.publish(event)
    await eventually(lambda: bus.handled(first.seq), what="the approval handled")
    second = await bus.publish(withdraw(event))
    await eventually(lambda: bus.handled(second.seq), what="the withdrawal handled")
    editjob = await bus.editjob(editjob_name(event.id))
    assert editjob["metadata"]["annotations"][ANNOTATION_CANCEL] == "revoked by the applicant"
    assert (await bus.ledger.get(event.id)).state == "withdrawn"


class RacingLedger(ApprovalLedger):
    """A withdrawal lands between the bridge's lookup and its record (another replica's)."""

    async def get(self, event_id: str) -> LedgerEntry | None:
        found = await super().get(event_id)
        await self.record_withdrawn(event_id, reason="withdrawn meanwhile")
        return found


async def test_a_withdrawal_that_wins_the_race_cancels_the_editjob_just_created(bus):
    racing = RacingLedger(bus.ledger._kv, bucket=bus.ledger.bucket)
    bridge = Bridge(bus.settings, bus.kube, ledger=racing)
    event = approval()
    await bridge.approve(event, stream_seq=1)
    editjob = await bus.editjob(editjob_name(event.id))
    assert editjob["metadata"]["annotations"][ANNOTATION_CANCEL] == "withdrawn meanwhile"
    assert (await bus.ledger.get(event.id)).state == "withdrawn"


async def test_a_crash_between_create_and_record_is_repaired_by_the_redelivery(bus):
    """The EditJob exists but the ledger never heard of it: 409 is fine, then recorded."""
    event = approval()
    bridge = Bridge(bus.settings, bus.kube, ledger=bus.ledger)
    manifest = editjob_from_approval(
        event, namespace=bus.namespace, bucket="b", default_model="longcat-image-edit"
    )
    assert await create_editjob(bus.kube, manifest) == "created"
    await bridge.approve(event, stream_seq=5)
    entry = await bus.ledger.get(event.id)
    assert (entry.state, entry.editjob, entry.stream_seq) == ("created", editjob_name(event.id), 5)


# -- deliberate re-runs ------------------------------------------------------------------------


def _cli_env(bus: Bus) -> dict[str, str]:
    env = {
        "KUBECONFIG": str(bus.stack.kubeconfig),
        "EDITFLOW_NAMESPACE": bus.namespace,
        "EDITFLOW_NATS__URL": bus.settings.nats.url,
    }
    for name, value in bus.settings.events.model_dump(exclude_none=True).items():
        env[f"EDITFLOW_EVENTS__{name.upper()}"] = (
            json.dumps(value) if isinstance(value, list) else str(value)
        )
    return env


async def _rerun(bus: Bus, event_id: str) -> Any:
    runner = CliRunner()
    args = ["edits", "rerun", event_id, "--json"]
    return await asyncio.to_thread(runner.invoke, app, args, env=_cli_env(bus))


async def test_rerun_creates_exactly_one_new_editjob_each_time(bus):
    event = approval()
    ack = await bus.publish(event)
    bus.start()
    await eventually(lambda: bus.handled(ack.seq), what="the approval handled")
    original = editjob_name(event.id)

    first = await _rerun(bus, event.id)
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["editjob"] == f"{original}-r1" and result["rerun"] == 1
    assert result["stream_seq"] == ack.seq and result["previous_state"] == "created"
    assert await bus.editjobs(event.data.approval_id) == [original, f"{original}-r1"]
    rerun = await bus.editjob(f"{original}-r1")
    assert rerun["spec"] == (await bus.editjob(original))["spec"]
    assert rerun["metadata"]["annotations"][ANNOTATION_RERUN] == "1"

    second = await _rerun(bus, event.id)
    assert second.exit_code == 0, second.output
    assert await bus.editjobs(event.data.approval_id) == [
        original, f"{original}-r1", f"{original}-r2",
    ]  # fmt: skip
    entry = await bus.ledger.get(event.id)
    assert (entry.reruns, entry.editjob) == (2, f"{original}-r2")


async def test_rerun_of_an_unknown_approval_says_so(bus):
    result = await _rerun(bus, "no-such-approval")
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "no-such-approval" in said and "not in the ledger" in said


async def test_rerun_of_an_approval_the_stream_no_longer_has_says_so(bus):
    event = approval()
    ack = await bus.publish(event)
    bus.start()
    await eventually(lambda: bus.handled(ack.seq), what="the approval handled")
    await bus.js.purge_stream(bus.topology.approvals_stream)
    result = await _rerun(bus, event.id)
    assert result.exit_code == 1, result.exception
    assert "no longer in stream" in " ".join(result.output.split())
    assert await bus.editjobs(event.data.approval_id) == [editjob_name(event.id)]
    assert (await bus.ledger.get(event.id)).reruns == 0  # nothing reserved for nothing
