"""Consume approval and withdraw events: the operator's one entry point to the bus.

Usage (the operator)::

    from editflow.events import consumer, topology

    async def on_event(event: ApprovalEvent | WithdrawEvent, delivery: Delivery) -> None:
        ...                                   # create / cancel the EditJob (idempotently)

    nc = await connection.connect(settings.nats, name="editflow-operator")
    topo = topology.Topology(settings.events)
    await topology.provision(nc.jetstream(), topo)
    await consumer.run_consumer(nc.jetstream(), on_event, topology=topo,
                                policy=Policy.from_settings(settings.events, accept=OA_EVENT_TYPES))

The handler says what happened by how it ends:

================================  ===================================================
handler ...                       the message is ...
================================  ===================================================
returns                           acked (done)
raises ``RetryLater(delay=…)``,   nak'ed with that delay (or the configured backoff)
any ``RetriableError`` or any     and redelivered; on the last allowed delivery it is
other exception                   dead-lettered with ``retries_exhausted`` and term'ed
raises ``PermanentError``         dead-lettered with the error's code, then term'ed
(e.g. ``InvalidInputError``)
never ends (process dies)         redelivered after the ack wait; after max deliveries
                                  the advisory is turned into a dead letter
================================  ===================================================

Invalid events never reach the handler: they are dead-lettered with the
reason from :func:`~editflow.events.validation.parse_event` and term'ed.

Delivery is at least once: after a crash, a lost ack or a NATS restart the
same event can come again (``delivery.deliveries > 1``). Handlers must be
idempotent, which the operator gets by naming the EditJob after the event id
and recording each approval in the ledger (:mod:`editflow.events.ledger`).

Up to ``concurrency`` events are handled at once, in no particular order, and
the next fetch goes out as soon as a slot frees (asking for as many events as
there are free slots, so a fetched event never waits unhandled while its ack
wait runs). While a handler runs, the message's ack wait is reset every third
of it (``in_progress``), so a slow apiserver delays an event instead of having
JetStream redeliver it to a second handler.
NATS restarts are ridden out: nats-py reconnects and resubscribes, fetch
errors back off and retry, and the durable consumer resumes where it was.
Stop by setting ``stop`` or by cancelling the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from editflow.core.errors import PermanentError, RetriableError
from editflow.events.dlq import dead_letter, run_dead_letter_mover
from editflow.events.models import OA_EVENT_TYPES, ApprovalEvent, WithdrawEvent
from editflow.events.problems import EventRejected
from editflow.events.pulling import pull_batches
from editflow.events.topology import Topology
from editflow.events.validation import Policy, parse_event

log = logging.getLogger("editflow.events.consumer")

RETRIES_EXHAUSTED = "retries_exhausted"


class RetryLater(RetriableError):
    """Raise from a handler to have the event redelivered after ``delay`` seconds."""

    code = "retry_later"

    def __init__(self, message: str = "retry later", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class Delivery:
    """Where an event came from and how often it has been delivered."""

    subject: str
    stream_seq: int
    deliveries: int
    max_deliver: int
    msg: Msg

    @property
    def last_attempt(self) -> bool:
        return self.deliveries >= self.max_deliver

    async def in_progress(self) -> None:
        """Reset the ack timer (call it from handlers that take longer than the ack wait)."""
        await self.msg.in_progress()


OAEvent = ApprovalEvent | WithdrawEvent
Handler = Callable[[OAEvent, Delivery], Awaitable[None]]


async def handle_message(
    js: JetStreamContext,
    msg: Msg,
    handler: Handler,
    *,
    topology: Topology,
    policy: Policy,
) -> str:
    """Process one message end to end; returns what was done (ack, nak, dead_letter)."""
    meta = msg.metadata
    delivery = Delivery(
        subject=msg.subject,
        stream_seq=meta.sequence.stream,
        deliveries=meta.num_delivered,
        max_deliver=topology.settings.max_deliver,
        msg=msg,
    )
    where = {
        "subject": msg.subject,
        "stream_seq": delivery.stream_seq,
        "deliveries": delivery.deliveries,
    }

    async def to_dead_letter(reason: str, message: str) -> str:
        await dead_letter(
            js, topology, body=msg.data, headers=dict(msg.headers or {}), subject=msg.subject,
            reason=reason, message=message, stream=meta.stream, stream_seq=delivery.stream_seq,
            consumer=meta.consumer, deliveries=delivery.deliveries,
        )  # fmt: skip
        await msg.term()
        return "dead_letter"

    try:
        event = parse_event(msg.data, msg.headers, subject=msg.subject, policy=policy)
    except EventRejected as exc:
        return await to_dead_letter(exc.info().code, exc.message)

    try:
        async with _keeping_alive(delivery, every=topology.settings.ack_wait_seconds / 3):
            await handler(event, delivery)  # type: ignore[arg-type]
    except asyncio.CancelledError:
        raise
    except PermanentError as exc:
        log.warning("handler refused event %s: %s", event.id, exc, extra=where)
        # The field goes with the reason, so the dead letter says what to fix where.
        field = getattr(exc, "field", None)
        return await to_dead_letter(exc.code, f"{field}: {exc.message}" if field else exc.message)
    except Exception as exc:
        delay = exc.delay if isinstance(exc, RetryLater) else None
        if delivery.last_attempt:
            return await to_dead_letter(
                RETRIES_EXHAUSTED,
                f"handler failed on delivery {delivery.deliveries} of {delivery.max_deliver}: "
                f"{exc!r}",
            )
        delay = delay if delay is not None else topology.retry_delay(delivery.deliveries)
        log.warning(
            "handler failed for event %s (%r); redelivering in %.1fs",
            event.id, exc, delay, extra=where, exc_info=not isinstance(exc, RetriableError),
        )  # fmt: skip
        await msg.nak(delay=delay)
        return "nak"
    await msg.ack()
    return "ack"


@contextlib.asynccontextmanager
async def _keeping_alive(delivery: Delivery, *, every: float) -> AsyncIterator[None]:
    """Tell JetStream "still working" every ``every`` seconds while the body runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await delivery.in_progress()
            except Exception as exc:  # NATS away: the ack wait may expire, a redelivery is safe
                log.debug("in_progress failed: %r", exc)

    task = asyncio.create_task(beat(), name=f"in-progress-{delivery.stream_seq}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Slots:
    """How many more messages may be in flight: the fetch asks for exactly that many."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._freed = asyncio.Event()

    async def free(self, at_most: int) -> int:
        """Wait until at least one slot is free; the number to fetch (``<= at_most``)."""
        while self.busy >= self.limit:
            self._freed.clear()
            await self._freed.wait()
        return min(self.limit - self.busy, at_most)

    def take(self, count: int) -> None:
        self.busy += count

    def release(self) -> None:
        self.busy -= 1
        self._freed.set()


async def run_consumer(
    js: JetStreamContext,
    handler: Handler,
    *,
    topology: Topology,
    policy: Policy | None = None,
    stop: asyncio.Event | None = None,
    batch: int | None = None,
    fetch_timeout: float = 2.0,
    capture_max_deliveries: bool = True,
    concurrency: int = 1,
) -> None:
    """Feed approval and withdraw events to ``handler`` until ``stop`` is set (or cancelled).

    ``concurrency`` handlers run at once (1: one event after the other);
    ``batch`` caps one fetch (default: ``concurrency``). When ``stop`` is set,
    the events in flight are finished; when cancelled, they are abandoned
    unacked (JetStream redelivers them). With ``capture_max_deliveries`` (the
    default) the dead-letter mover runs alongside, so messages JetStream gives
    up on are dead-lettered too.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    policy = policy or Policy.from_settings(topology.settings, accept=OA_EVENT_TYPES)
    stop = stop or asyncio.Event()
    async with asyncio.TaskGroup() as group:
        if capture_max_deliveries:
            group.create_task(
                run_dead_letter_mover(js, topology, stop=stop, fetch_timeout=fetch_timeout)
            )
        try:
            slots = _Slots(concurrency)
            await _consume(
                js, handler, topology, policy, stop, slots, batch or concurrency, fetch_timeout
            )
        finally:
            stop.set()


async def _consume(
    js: JetStreamContext,
    handler: Handler,
    topology: Topology,
    policy: Policy,
    stop: asyncio.Event,
    slots: _Slots,
    batch: int,
    fetch_timeout: float,
) -> None:
    async def settle(msg: Msg) -> None:
        try:
            await handle_message(js, msg, handler, topology=topology, policy=policy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The dead letter or the ack could not be written (NATS went away):
            # leave the message unacked, JetStream redelivers it after the ack wait.
            log.warning("could not settle message %s: %r", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1)
        finally:
            slots.release()

    # The task group finishes what is in flight when the loop ends (stop set) and
    # cancels it when this coroutine is cancelled.
    async with asyncio.TaskGroup() as in_flight:
        async for msgs in pull_batches(
            js,
            consumer=topology.consumer,
            stream=topology.approvals_stream,
            stop=stop,
            batch=lambda: slots.free(batch),
            fetch_timeout=fetch_timeout,
            what="approval consumer",
        ):
            slots.take(len(msgs))
            for msg in msgs:
                in_flight.create_task(settle(msg))
