"""Refuse before spending a GPU: the bridge dead-letters unsafe approvals, never an EditJob.

Each test runs the real bridge handler on the real durable consumer (real NATS
JetStream) against the real apiserver, publishes approval events and reads
back what happened: the EditJobs in the namespace and the dead letters with
their reason. DNS: literal addresses need none; ``.invalid`` names get a real
NXDOMAIN from the system resolver (RFC 6761 guarantees it); temporary failures
are simulated through the screen's resolver seam
(:class:`~editflow.operator.refusals.ApprovalScreen` ``resolve=``), which is
the same code path a SERVFAIL or a timeout takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from editflow.core.settings import Settings
from editflow.core.urlguard import IPAddress, LookupFailed, Resolve
from editflow.devstack.stack import LocalStack
from editflow.events.binding import MSG_ID, WireMessage, encode
from editflow.events.connection import connect
from editflow.events.consumer import run_consumer
from editflow.events.dlq import DeadLetter, list_dead_letters
from editflow.events.ledger import ApprovalLedger
from editflow.events.models import OA_EVENT_TYPES, ApprovalData, ApprovalEvent, Callback, Person
from editflow.events.publish import publish_wire
from editflow.events.topology import Topology, provision
from editflow.events.validation import Policy
from editflow.operator.bridge import Bridge
from editflow.operator.crd import editjob_path
from editflow.operator.kube import AsyncKube
from editflow.operator.names import editjob_name
from editflow.operator.refusals import ApprovalScreen, spec_refusal
from tests.harness import bridge_settings, scratch_namespace

pytestmark = [pytest.mark.platform, pytest.mark.slow]

SOURCE = "https://oa.example.com"
#: A literal public address: needs no DNS (the test machine has none) and passes the guard.
PUBLIC_IMAGE = "https://93.184.215.14/files/poster.png"


async def eventually(check: Callable[[], Awaitable[Any]], *, what: str, timeout: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)
    return result


@pytest.fixture(scope="module")
def namespace(stack: LocalStack) -> Iterator[str]:
    yield from scratch_namespace(stack, "refuse")


def settings_for(stack: LocalStack, namespace: str, **operator: Any) -> Settings:
    events = {"ack_wait_seconds": 5.0, "max_deliver": 4, "storage": "memory"}
    return bridge_settings(stack, namespace, events=events, **operator)


class Running:
    """The bridge on its consumer, and what a test reads back."""

    def __init__(self, settings: Settings, js: Any, kube: AsyncKube, topology: Topology) -> None:
        self.settings, self.js, self.kube, self.topology = settings, js, kube, topology

    async def publish(self, event: ApprovalEvent, *, patch_data: dict[str, Any] | None = None):
        """Publish ``event``; ``patch_data`` changes its data on the wire (what a model refuses)."""
        message = encode(event)
        if patch_data:
            body = json.loads(message.body)
            for path, value in patch_data.items():
                *parents, leaf = path.split(".")
                node = body["data"]
                for part in parents:
                    node = node[part]
                node[leaf] = value
            message = WireMessage(headers=message.headers, body=json.dumps(body).encode())
        message.headers[MSG_ID] = event.id
        return await publish_wire(self.js, self.topology.approval_subject, message)

    async def settled(self, seq: int) -> bool:
        info = await self.js.consumer_info(self.topology.approvals_stream, self.topology.consumer)
        return info.ack_floor.stream_seq >= seq and not info.num_ack_pending

    async def editjob(self, event: ApprovalEvent) -> dict | None:
        return await self.kube.get(editjob_path(self.settings.namespace, editjob_name(event.id)))

    async def dead_letters(self) -> dict[str, DeadLetter]:
        letters = await list_dead_letters(self.js, self.topology)
        return {d.event_id: d for d in letters if d.event_id}


@contextlib.asynccontextmanager
async def running_bridge(
    stack: LocalStack, settings: Settings, *, resolve: Resolve | None = None
) -> AsyncIterator[Running]:
    nc = await connect(settings.nats, name="refusals-test", reconnect_wait=0.2)
    js = nc.jetstream()
    topology = Topology(settings.events)
    await provision(js, topology)
    ledger = await ApprovalLedger.open(js, topology)
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=cfg)
    kube = AsyncKube(cfg)
    bridge = Bridge(settings, kube, ledger=ledger, screen=ApprovalScreen(settings, resolve=resolve))
    stop = asyncio.Event()
    policy = Policy.from_settings(settings.events, accept=OA_EVENT_TYPES)
    task = asyncio.create_task(
        run_consumer(js, bridge, topology=topology, policy=policy, stop=stop, concurrency=8)
    )
    try:
        yield Running(settings, js, kube, topology)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await kube.close()
        await nc.close()


def approval(**data: Any) -> ApprovalEvent:
    fields: dict[str, Any] = {
        "form_id": "F-9",
        "approval_id": f"AP-{uuid.uuid4().hex[:8]}",
        "applicant": Person(id="u42"),
        "image_url": PUBLIC_IMAGE,
        "instruction": "remove the watermark",
    }
    fields.update(data)
    return ApprovalEvent(source=SOURCE, data=ApprovalData(**fields))


async def test_unsafe_and_unresolvable_image_urls_are_dead_lettered_without_an_editjob(
    stack: LocalStack, namespace: str
) -> None:
    refused = {
        "http://169.254.169.254/latest/meta-data/": "unsafe_source",
        "http://127.0.0.1:9000/editflow/secret.png": "unsafe_source",
        "https://10.1.2.3/poster.png": "unsafe_source",
        "https://[::ffff:192.168.1.1]/poster.png": "unsafe_source",
        "https://no-such-host.invalid/poster.png": "host_not_found",  # real NXDOMAIN
    }
    events = {url: approval(image_url=url) for url in refused}
    good = approval()
    # The real NXDOMAIN comes from the system resolver, which now and then retries for 5 s:
    # a generous limit keeps that a verdict instead of a (correct) redelivery.
    settings = settings_for(stack, namespace, dns_timeout_seconds=20)
    async with running_bridge(stack, settings) as bus:
        for event in events.values():
            await bus.publish(event)
        ack = await bus.publish(good)
        await eventually(lambda: bus.settled(ack.seq), what="every event decided")
        letters = await bus.dead_letters()
        assert await bus.editjob(good) is not None  # the bridge works: a safe one runs
        for url, reason in refused.items():
            event = events[url]
            assert await bus.editjob(event) is None, url
            letter = letters[event.id]
            assert letter.reason == reason, (url, letter.summary())
            assert letter.message.startswith("data.image_url: "), letter.message
            assert letter.deliveries == 1  # permanent: not retried
        assert (
            "does not exist"
            in letters[events["https://no-such-host.invalid/poster.png"].id].message
        )


async def test_a_temporary_dns_failure_is_redelivered_never_dead_lettered(
    stack: LocalStack, namespace: str
) -> None:
    lookups: dict[str, int] = {}

    async def resolve(host: str, port: int) -> list[IPAddress]:
        lookups[host] = lookups.get(host, 0) + 1
        if host == "flaky.oa.test" and lookups[host] <= 2:
            raise LookupFailed("SERVFAIL (simulated)")
        if host == "down.oa.test":  # DNS never comes back while the event is delivered
            raise LookupFailed("timed out (simulated)")
        return [ipaddress.ip_address("93.184.215.14")]

    flaky = approval(image_url="https://flaky.oa.test/poster.png")
    down = approval(image_url="https://down.oa.test/poster.png")
    settings = settings_for(stack, namespace)
    async with running_bridge(stack, settings, resolve=resolve) as bus:
        await bus.publish(flaky)
        ack = await bus.publish(down)
        await eventually(lambda: bus.settled(ack.seq), what="both events decided")
        assert await bus.editjob(flaky) is not None  # created on the third delivery
        assert lookups["flaky.oa.test"] == 3
        # On its last allowed delivery the event is let through: the worker checks again.
        assert await bus.editjob(down) is not None
        assert lookups["down.oa.test"] == settings.events.max_deliver
        assert await bus.dead_letters() == {}


async def test_callbacks_to_loopback_or_private_addresses_are_refused_unless_allow_listed(
    stack: LocalStack, namespace: str
) -> None:
    loopback = approval(callback=Callback(webhook_url="https://127.0.0.1:8443/hook"))
    private = approval(callback=Callback(webhook_url="https://172.16.0.9/hook"))
    metadata = approval(callback=Callback(webhook_url="https://169.254.169.254/hook"))
    async with running_bridge(stack, settings_for(stack, namespace)) as bus:
        for event in (loopback, private):
            await bus.publish(event)
        ack = await bus.publish(metadata)
        await eventually(lambda: bus.settled(ack.seq), what="every event decided")
        letters = await bus.dead_letters()
        for event in (loopback, private, metadata):
            assert await bus.editjob(event) is None
            assert letters[event.id].reason == "unsafe_source"
            assert letters[event.id].message.startswith("data.callback.webhook_url: ")
    # Allow-listed on purpose (an on-prem OA on the pod network): accepted.
    allowed = approval(callback=Callback(webhook_url="https://127.0.0.1:8443/hook"))
    settings = settings_for(stack, namespace, callback_allow_cidrs=["127.0.0.1/32"])
    async with running_bridge(stack, settings) as bus:
        ack = await bus.publish(allowed)
        await eventually(lambda: bus.settled(ack.seq), what="the event decided")
        assert await bus.editjob(allowed) is not None
        assert await bus.dead_letters() == {}


async def test_nats_callback_subjects_outside_the_prefix_or_system_subjects_are_refused(
    stack: LocalStack, namespace: str
) -> None:
    settings = settings_for(stack, namespace)
    bad = {
        "$JS.API.STREAM.DELETE.EDITFLOW_APPROVALS": "must not be a NATS system subject",
        "$SYS.REQ.SERVER.PING": "must not be a NATS system subject",
        "_INBOX.abc123": "must not be a NATS system subject",
        "oa.other.done": "not under the callback prefix",
        settings.events.approval_subject: "editflow's own subjects",
        "editflow.work.longcat-image-edit": "editflow's own subjects",
    }
    placeholder = Callback(nats_subject="oa.callbacks.placeholder")
    events = {subject: approval(callback=placeholder) for subject in bad}
    good = approval(callback=Callback(nats_subject="oa.callbacks.my-oa.done"))
    async with running_bridge(stack, settings) as bus:
        for subject, event in events.items():
            await bus.publish(event, patch_data={"callback.nats_subject": subject})
        ack = await bus.publish(good)
        await eventually(lambda: bus.settled(ack.seq), what="every event decided")
        letters = await bus.dead_letters()
        assert await bus.editjob(good) is not None
        for subject, why in bad.items():
            event = events[subject]
            assert await bus.editjob(event) is None, subject
            assert "data.callback.nats_subject" in letters[event.id].message, subject
            assert why in letters[event.id].message, (subject, letters[event.id].message)


def test_an_editjob_spec_is_judged_by_the_same_rules_without_dns() -> None:
    settings = Settings()
    refused = {
        "spec.source.url": {"source": {"url": "http://169.254.169.254/latest/meta-data/"}},
        "spec.callback.webhookUrl": {
            "source": {"s3Key": "uploads/a.png"},
            "callback": {"webhookUrl": "https://10.0.0.1/hook"},
        },
        "spec.callback.natsSubject": {
            "source": {"s3Key": "uploads/a.png"},
            "callback": {"natsSubject": "$JS.API.INFO"},
        },
    }
    for field, spec in refused.items():
        problem = spec_refusal(spec, settings)
        assert problem is not None and problem.field == field, (field, problem)
    fine = {
        "source": {"url": "https://oa.example.com/a.png"},  # a name: the worker resolves it
        "callback": {"natsSubject": "oa.callbacks.done"},
    }
    assert spec_refusal(fine, settings) is None
