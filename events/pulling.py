"""One pull loop for every durable JetStream consumer editflow runs.

Binding, fetching and riding out NATS restarts (reconnects, JetStream
recovering, a consumer not provisioned yet) is the same for the approval
consumer and the dead-letter mover: fetch errors back off from 0.2 s to 5 s
and the loop carries on; an empty fetch is just a quiet moment.

``batch`` is a number, or an async callable asked before every fetch: the
approval consumer passes "wait for a free handler slot, then as many as are
free", so the pipeline stays full without holding events nobody handles yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from editflow.core.backoff import Backoff

log = logging.getLogger("editflow.events.pulling")


async def pull_batches(
    js: JetStreamContext,
    *,
    consumer: str,
    stream: str,
    stop: asyncio.Event,
    batch: int | Callable[[], Awaitable[int]],
    fetch_timeout: float,
    what: str,
) -> AsyncIterator[list[Msg]]:
    """Yield batches from ``consumer`` on ``stream`` until ``stop`` is set."""
    sub = None
    backoff = Backoff(0.2, 5.0)
    while not stop.is_set():
        try:
            if sub is None:
                sub = await js.pull_subscribe_bind(consumer, stream=stream)
            wanted = batch if isinstance(batch, int) else await batch()
            if stop.is_set():
                break
            msgs = await sub.fetch(wanted, timeout=fetch_timeout)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from inside fetch
            continue  # a quiet moment, not trouble: no backoff, or the next event would wait
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: fetching failed: %r; retrying in %.1fs", what, exc, backoff.delay)
            await asyncio.sleep(backoff.grow())
            continue
        backoff.reset()
        yield msgs


async def until_drained(sub: Any, batch: int, fetch_timeout: float = 2.0) -> AsyncIterator[Msg]:
    """Every message an ephemeral pull subscription has now, then stop (a scan, not a tail).

    A slow server is not an empty stream: a fetch that times out ends the scan only when
    the consumer says nothing is pending.
    """
    while True:
        try:
            messages = await sub.fetch(batch, timeout=fetch_timeout)
        except TimeoutError:  # nats-py raises its own subclass, or asyncio's
            if (await sub.consumer_info()).num_pending == 0:
                return
            continue
        for message in messages:
            yield message
        if messages and messages[-1].metadata.num_pending == 0:
            return
