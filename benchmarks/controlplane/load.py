"""Approval events at a steady rate through the project's OA SDK, as an OA system sends them.

The schedule is fixed in advance (event ``i`` is due at ``start + i / rate``
on the monotonic clock) and each publish runs as its own task, so a slow
JetStream acknowledgement delays neither the next event nor the clock: the
offered rate is the rate asked for, and ``behind_max`` says how late the
publisher itself ever was.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from controlplane.stats import Summary, summarize
from controlplane.timeline import Timeline
from editflow.events.models import Person
from editflow.events.sdk import OAClient

#: The stub worker never fetches it. A literal public address: the bridge's SSRF guard
#: resolves host names, and an unresolvable one (no DNS on a test machine) is dead-lettered.
SOURCE_URL = "https://93.184.215.14/files/bench/poster.png"
APPLICANT = Person(id="bench-user", name="benchmark")
#: At most this many SDK calls awaiting their JetStream ack at once.
MAX_IN_FLIGHT = 256


@dataclass(frozen=True)
class PublishReport:
    offered_rate: float
    events: int
    errors: int
    achieved_rate: float
    behind_max: float
    sdk_call: Summary
    event_ids: tuple[str, ...]


async def on_schedule(
    timeline: Timeline,
    call: Callable[[int, str], Awaitable[None]],
    *,
    rate: float,
    duration: float,
    on_sent: Callable[[int], None] | None = None,
) -> PublishReport:
    """``call(index, event_id)`` for ``rate * duration`` new events, one every ``1 / rate`` s.

    Each call is its own task (at most :data:`MAX_IN_FLIGHT` at once) and is stamped as
    the event's start before it is awaited. A call that raises counts as an error.
    """
    count = max(1, round(rate * duration))
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for event_id in ids:
        timeline.register(event_id)
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    calls: list[float] = []
    errors: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []
    behind = 0.0

    async def one(index: int, event_id: str, began: float) -> None:
        try:
            await call(index, event_id)
            calls.append(time.monotonic() - began)
        except Exception as exc:  # counted and reported: a failed publish is a lost event
            errors.append(exc)
        finally:
            gate.release()
            if on_sent:
                on_sent(1)

    start = time.monotonic() + 0.05
    for index, event_id in enumerate(ids):
        due = start + index / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await gate.acquire()
        began = time.monotonic()
        behind = max(behind, began - due)
        timeline.published[event_id] = began
        tasks.append(asyncio.create_task(one(index, event_id, began)))
    await asyncio.gather(*tasks)
    stamps = sorted(timeline.published[e] for e in ids)
    span = stamps[-1] - stamps[0]
    achieved = (count - 1) / span if span > 0 else float(count)
    return PublishReport(
        offered_rate=rate,
        events=count,
        errors=len(errors),
        achieved_rate=round(achieved, 2),
        behind_max=round(behind, 4),
        sdk_call=summarize(calls),
        event_ids=tuple(ids),
    )


async def publish_steady(
    client: OAClient,
    timeline: Timeline,
    *,
    rate: float,
    duration: float,
    label: str,
    on_published: Callable[[int], None] | None = None,
) -> PublishReport:
    """Publish ``rate * duration`` approvals through the SDK, one every ``1 / rate`` seconds."""

    async def submit(index: int, event_id: str) -> None:
        await client.submit_approval(
            form_id=f"bench-{label}",
            approval_id=f"{label}-{index}",
            applicant=APPLICANT,
            image_url=SOURCE_URL,
            instruction="把背景换成纯蓝色 (benchmark)",
            usage="bench",
            event_id=event_id,
        )

    return await on_schedule(timeline, submit, rate=rate, duration=duration, on_sent=on_published)
