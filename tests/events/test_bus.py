"""JetStream against a real nats-server: provisioning, dedupe, redelivery, dead letters."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from nats.js.api import ConsumerConfig

from editflow.core.errors import ImageRejectedError, UpstreamError
from editflow.events.connection import connect
from editflow.events.consumer import RETRIES_EXHAUSTED, RetryLater, run_consumer
from editflow.events.dlq import (
    MAX_DELIVERIES,
    get_dead_letter,
    list_dead_letters,
    replay,
)
from editflow.events.publish import publish_event
from editflow.events.topology import Topology, provision


class Recorder:
    """A handler that records what it saw and fails the way a test tells it to."""

    def __init__(self, fail: Any = None) -> None:
        self.seen: list[tuple[str, int]] = []
        self.fail = fail

    async def __call__(self, event, delivery) -> None:
        self.seen.append((event.id, delivery.deliveries))
        if self.fail is not None:
            failure = self.fail(event, delivery)
            if failure is not None:
                raise failure

    def ids(self) -> set[str]:
        return {event_id for event_id, _ in self.seen}


async def _run(js, topology, handler, **kwargs):
    stop = asyncio.Event()
    kwargs.setdefault("fetch_timeout", 0.3)
    task = asyncio.create_task(run_consumer(js, handler, topology=topology, stop=stop, **kwargs))
    return stop, task


async def _stop(stop, task):
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_provisioning_twice_changes_nothing_and_a_changed_setting_is_applied(
    nc, settings, topology
):
    js = nc.jetstream()
    first = await provision(js, topology)
    assert {c.action for c in first} == {"created"}
    assert len(first) == 8  # 5 streams (the audit stream too), 2 consumers, the ledger bucket
    again = await provision(js, topology)
    assert {c.action for c in again} == {"unchanged"}

    changed = Topology(
        settings.events.model_copy(update={"max_deliver": 5, "max_age_seconds": 7200})
    )
    third = await provision(js, changed)
    actions = {c.name: c.action for c in third}
    assert actions[topology.approvals_stream] == "updated"
    assert actions[topology.consumer] == "updated"
    assert actions[topology.dlq_stream] == "unchanged"
    info = await js.consumer_info(topology.approvals_stream, topology.consumer)
    assert info.config.max_deliver == 5
    stream = await js.stream_info(topology.approvals_stream)
    assert stream.config.max_age == 7200
    assert stream.config.duplicate_window == 600


async def test_streams_have_the_documented_subjects_and_duplicate_window(js, topology):
    approvals = await js.stream_info(topology.approvals_stream)
    assert set(approvals.config.subjects) == {
        topology.approval_subject,
        topology.withdraw_subject,
        topology.select_subject,
        topology.review_action_subject,
    }
    assert topology.review_action_subject == f"{topology.approval_subject}.review"
    assert topology.select_subject == f"{topology.approval_subject}.select"
    assert approvals.config.retention == "limits"
    consumer = await js.consumer_info(topology.approvals_stream, topology.consumer)
    assert consumer.config.ack_policy == "explicit"
    assert consumer.config.max_deliver == 3
    assert consumer.config.backoff == [1.0, 1.2]


async def _all_acked(js, topology, seq: int) -> bool:
    info = await js.consumer_info(topology.approvals_stream, topology.consumer)
    return info.ack_floor.stream_seq >= seq and info.num_pending == 0


async def test_a_republished_event_is_stored_and_handled_once(
    js, topology, make_approval, eventually
):
    event = make_approval()
    first = await publish_event(js, event, topology.approval_subject)
    second = await publish_event(js, event, topology.approval_subject)
    binary = await publish_event(js, event, topology.approval_subject, mode="binary")
    assert not first.duplicate
    assert second.duplicate and binary.duplicate
    assert second.seq == first.seq
    info = await js.stream_info(topology.approvals_stream)
    assert info.state.messages == 1

    handler = Recorder()
    stop, task = await _run(js, topology, handler)
    try:
        await eventually(lambda: _all_acked(js, topology, first.seq), what="the ack")
    finally:
        await _stop(stop, task)
    assert handler.seen == [(event.id, 1)]


async def test_an_event_is_redelivered_when_the_consumer_dies_before_acking(
    settings, js, topology, make_approval, eventually
):
    event = make_approval()
    await publish_event(js, event, topology.approval_subject)

    # A first operator fetches the event and dies before acknowledging it.
    doomed = await connect(settings.nats, name="doomed-operator")
    sub = await doomed.jetstream().pull_subscribe_bind(
        topology.consumer, stream=topology.approvals_stream
    )
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.metadata.num_delivered == 1
    await doomed.close()

    handler = Recorder()
    stop, task = await _run(js, topology, handler)
    try:
        await eventually(lambda: handler.seen, what="the redelivery")
    finally:
        await _stop(stop, task)
    assert handler.seen == [(event.id, 2)]


async def test_a_retriable_failure_is_retried_and_then_succeeds(
    js, topology, make_approval, eventually
):
    event = make_approval()
    await publish_event(js, event, topology.approval_subject)
    handler = Recorder(
        fail=lambda e, d: UpstreamError("kube-apiserver unavailable") if d.deliveries == 1 else None
    )
    stop, task = await _run(js, topology, handler)
    try:
        await eventually(lambda: len(handler.seen) == 2, what="the retry")
    finally:
        await _stop(stop, task)
    assert handler.seen == [(event.id, 1), (event.id, 2)]
    assert await list_dead_letters(js, topology) == []


async def test_retry_later_uses_the_delay_the_handler_asks_for(
    js, topology, make_approval, eventually
):
    await publish_event(js, make_approval(), topology.approval_subject)
    handler = Recorder(
        fail=lambda e, d: RetryLater("GPU quota", delay=0.1) if d.deliveries < 2 else None
    )
    stop, task = await _run(js, topology, handler)
    try:
        await eventually(lambda: len(handler.seen) == 2, what="the delayed retry")
    finally:
        await _stop(stop, task)


async def test_a_permanent_handler_error_is_dead_lettered_at_once(
    js, topology, make_approval, eventually
):
    event = make_approval()
    await publish_event(js, event, topology.approval_subject)
    handler = Recorder(fail=lambda e, d: ImageRejectedError("not an image", field="image_url"))
    stop, task = await _run(js, topology, handler)
    try:
        letters = await eventually(lambda: list_dead_letters(js, topology), what="the dead letter")
    finally:
        await _stop(stop, task)
    assert handler.seen == [(event.id, 1)]
    (letter,) = letters
    assert letter.reason == "image_rejected"
    assert "not an image" in letter.message
    assert letter.event_id == event.id


async def test_a_handler_that_always_fails_is_dead_lettered_after_max_deliveries(
    js, topology, make_approval, eventually
):
    event = make_approval()
    await publish_event(js, event, topology.approval_subject)
    handler = Recorder(fail=lambda e, d: RuntimeError("boom"))
    stop, task = await _run(js, topology, handler)
    try:
        letters = await eventually(lambda: list_dead_letters(js, topology), what="the dead letter")
    finally:
        await _stop(stop, task)
    assert [d for _, d in handler.seen] == [1, 2, 3]
    (letter,) = letters
    assert letter.reason == RETRIES_EXHAUSTED
    assert "boom" in letter.message and letter.deliveries == 3


async def test_a_poison_message_that_kills_every_consumer_ends_in_the_dead_letter(
    settings, js, topology, make_approval, eventually
):
    """Nothing vanishes at max deliveries: the advisory is stored and turned into a dead letter."""
    poison = make_approval(instruction="this one crashes the operator")
    healthy = make_approval()
    await publish_event(js, poison, topology.approval_subject)

    # Three operator processes in a row fetch it and die without acking (max_deliver = 3).
    for attempt in (1, 2, 3):
        doomed = await connect(settings.nats, name=f"doomed-{attempt}")
        sub = await doomed.jetstream().pull_subscribe_bind(
            topology.consumer, stream=topology.approvals_stream
        )
        (msg,) = await eventually(
            lambda sub=sub: sub.fetch(1, timeout=1), what=f"delivery {attempt}"
        )
        assert msg.metadata.num_delivered == attempt
        await doomed.close()

    # A healthy operator starts: it handles new events and dead-letters the poison.
    await publish_event(js, healthy, topology.approval_subject)
    handler = Recorder()
    stop, task = await _run(js, topology, handler)
    try:
        letters = await eventually(lambda: list_dead_letters(js, topology), what="the dead letter")
        await eventually(lambda: handler.seen, what="the healthy event")
    finally:
        await _stop(stop, task)
    assert handler.ids() == {healthy.id}
    (letter,) = letters
    assert letter.reason == MAX_DELIVERIES
    assert letter.event_id == poison.id
    assert letter.deliveries == 3
    assert letter.subject == topology.approval_subject
    assert "crashes the operator" in letter.body.decode()
    # The advisory went through the advisories stream (it survives a mover restart) and is acked.
    assert await _messages(js, topology.advisories_stream) == 1
    mover = await js.consumer_info(topology.advisories_stream, topology.dlq_consumer)
    assert mover.num_pending == 0 and mover.num_ack_pending == 0


async def _messages(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def test_the_mover_does_not_store_a_message_twice(settings, js, topology, make_approval):
    """The advisory and the consumer may both dead-letter one message: the DLQ keeps one copy."""
    from editflow.events.dlq import dead_letter

    event = make_approval()
    ack = await publish_event(js, event, topology.approval_subject)
    for reason in ("retries_exhausted", MAX_DELIVERIES):
        await dead_letter(
            js, topology, body=b"{}", headers={}, subject=topology.approval_subject,
            reason=reason, message="x", stream=topology.approvals_stream, stream_seq=ack.seq,
        )  # fmt: skip
    assert len(await list_dead_letters(js, topology)) == 1


async def test_replay_republishes_the_original_and_removes_the_dead_letter(
    js, topology, make_approval, eventually
):
    event = make_approval()
    await publish_event(js, event, topology.approval_subject)
    refusing = Recorder(fail=lambda e, d: ImageRejectedError("temporarily misconfigured"))
    stop, task = await _run(js, topology, refusing)
    try:
        (letter,) = await eventually(lambda: list_dead_letters(js, topology), what="dead letter")
    finally:
        await _stop(stop, task)

    ack = await replay(js, topology, letter.seq)
    assert not ack.duplicate
    assert await list_dead_letters(js, topology) == []
    with pytest.raises(Exception, match=r"not found|no message"):
        await get_dead_letter(js, topology, letter.seq)

    handler = Recorder()
    stop, task = await _run(js, topology, handler)
    try:
        await eventually(lambda: handler.seen, what="the replayed event")
    finally:
        await _stop(stop, task)
    assert handler.ids() == {event.id}, "the replay carries the same CloudEvent id"


async def test_nats_restart_mid_stream_loses_nothing(
    nats_server, settings, js, topology, make_approval, eventually
):
    """Publisher and consumer ride out a NATS restart; every event is stored and handled."""
    events = [make_approval() for _ in range(40)]
    published: list[str] = []
    handler = Recorder()
    consumer_nc = await connect(settings.nats, name="restart-operator", reconnect_wait=0.2)
    consumer_js = consumer_nc.jetstream()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(consumer_js, handler, topology=topology, stop=stop, fetch_timeout=0.5)
    )

    async def publisher() -> None:
        for index, event in enumerate(events):
            await publish_event(js, event, topology.approval_subject, timeout=1, retry_for=60)
            published.append(event.id)
            if index == 10:
                # Hold the rest until NATS is down, so they really cross the restart
                # (on a busy machine the publisher otherwise finishes before the stop).
                restart_now.set()
                await server_down.wait()
            await asyncio.sleep(0.01)

    restart_now = asyncio.Event()
    server_down = asyncio.Event()
    publishing = asyncio.create_task(publisher())
    try:
        await restart_now.wait()
        await eventually(lambda: handler.seen, what="the consumer to start handling")
        old_pid = nats_server.process.pid
        await asyncio.to_thread(nats_server.stop)
        before_restart = len(published)
        server_down.set()
        await asyncio.to_thread(nats_server.start_process)
        assert nats_server.process.pid != old_pid
        await asyncio.wait_for(publishing, 90)
        want = {e.id for e in events}
        await eventually(lambda: handler.ids() >= want, timeout=60, what="every event handled")
    finally:
        stop.set()
        publishing.cancel()
        await asyncio.wait_for(task, 30)
        await consumer_nc.close()
    assert published == [e.id for e in events]
    assert before_restart < len(events), "some events were published across the restart"
    stored = await js.stream_info(topology.approvals_stream)
    assert stored.state.messages == len(events), "stored once each (retries were deduplicated)"
    repeats = Counter(event_id for event_id, _ in handler.seen)
    # At-least-once: an ack lost in the restart may cause one redelivery, never a loss.
    assert set(repeats) == {e.id for e in events}
    assert await list_dead_letters(js, topology) == []


def test_a_consumer_config_is_what_the_topology_says(topology):
    (stream, config), (adv_stream, adv) = topology.consumers()
    assert isinstance(config, ConsumerConfig)
    assert stream == topology.approvals_stream and adv_stream == topology.advisories_stream
    assert config.backoff == [1.0, 1.2]  # ack wait first; fewer entries than max_deliver
    assert adv.durable_name == topology.dlq_consumer
