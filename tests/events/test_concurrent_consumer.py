"""The approval consumer handles events concurrently (bounded) and keeps slow ones alive."""

from __future__ import annotations

import asyncio

from editflow.events.consumer import run_consumer
from editflow.events.publish import publish_event


class Gauge:
    """A handler that counts how many of its calls run at once (the peak, not a duration)."""

    def __init__(self, *, hold_until: int = 0, hold: float = 0.0) -> None:
        self.running = 0
        self.peak = 0
        self.done: list[tuple[str, int]] = []
        self.hold_until = hold_until  # block every call until this many run at once ...
        self.full = asyncio.Event()
        self.hold = hold  # ... or for this long (a slow apiserver)

    async def __call__(self, event, delivery) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.hold_until:
                if self.running >= self.hold_until:
                    self.full.set()
                # A sequential consumer never fills the window: give up after a while, so
                # such a consumer fails the peak assertion instead of hanging the test.
                try:
                    await asyncio.wait_for(self.full.wait(), 10)
                except TimeoutError:
                    self.hold_until = 0
            if self.hold:
                await asyncio.sleep(self.hold)
        finally:
            self.running -= 1
        self.done.append((event.id, delivery.deliveries))


async def _drained(js, topology, count: int) -> bool:
    info = await js.consumer_info(topology.approvals_stream, topology.consumer)
    return info.ack_floor.stream_seq >= count and info.num_pending == 0 and not info.num_ack_pending


async def _consume(js, topology, handler, **kwargs):
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(js, handler, topology=topology, stop=stop, fetch_timeout=0.3, **kwargs)
    )
    return stop, task


async def test_a_batch_is_handled_concurrently_up_to_the_bound(
    js, topology, make_approval, eventually
):
    events = [make_approval() for _ in range(60)]
    for event in events:
        await publish_event(js, event, topology.approval_subject)
    gauge = Gauge(hold_until=16)
    stop, task = await _consume(js, topology, gauge, concurrency=16)
    try:
        await eventually(lambda: _drained(js, topology, 60), what="every event acked")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert gauge.peak == 16  # the window filled, and was never exceeded
    assert sorted(i for i, _ in gauge.done) == sorted(e.id for e in events)
    assert {n for _, n in gauge.done} == {1}


async def test_concurrency_one_handles_events_one_at_a_time(
    js, topology, make_approval, eventually
):
    for _ in range(5):
        await publish_event(js, make_approval(), topology.approval_subject)
    gauge = Gauge()
    stop, task = await _consume(js, topology, gauge, concurrency=1, batch=5)
    try:
        await eventually(lambda: _drained(js, topology, 5), what="every event acked")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert gauge.peak == 1 and len(gauge.done) == 5


async def test_a_handler_slower_than_the_ack_wait_is_not_redelivered(
    js, topology, make_approval, eventually
):
    """The ack wait is 1 s here; each handler takes 3.5 s (a slow apiserver). in_progress
    keeps JetStream from handing the same events to a second handler meanwhile."""
    events = [make_approval() for _ in range(4)]
    for event in events:
        await publish_event(js, event, topology.approval_subject)
    gauge = Gauge(hold=3.5)
    stop, task = await _consume(js, topology, gauge, concurrency=4)
    try:
        await eventually(lambda: _drained(js, topology, 4), what="every event acked")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    info = await js.consumer_info(topology.approvals_stream, topology.consumer)
    assert info.num_redelivered == 0
    assert sorted(gauge.done) == sorted((e.id, 1) for e in events)


async def test_stopping_finishes_the_events_in_flight(js, topology, make_approval, eventually):
    for _ in range(3):
        await publish_event(js, make_approval(), topology.approval_subject)
    gauge = Gauge(hold=0.5)
    stop, task = await _consume(js, topology, gauge, concurrency=3)
    await eventually(lambda: gauge.running == 3, what="three events in flight")
    stop.set()
    await asyncio.wait_for(task, 10)
    assert len(gauge.done) == 3
    # Acks are plain publishes: the server counts them a moment after the handlers return.
    await eventually(lambda: _drained(js, topology, 3), what="the three acks")
