"""One pull loop for every durable JetStream consumer editflow runs.

Binding, fetching and riding out NATS restarts (reconnects, JetStream
recovering, a consumer not provisioned yet) is the same for the approval
consumer and the dead-letter mover: fetch errors back off from 0.2 s to 5 s
and the loop carries on; an empty fetch is just a quiet moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger("editflow.events.pulling")


async def pull_batches(
    js: JetStreamContext,
    *,
    consumer: str,
    stream: str,
    stop: asyncio.Event,
    batch: int,
    fetch_timeout: float,
    what: str,
) -> AsyncIterator[list[Msg]]:
    """Yield batches from ``consumer`` on ``stream`` until ``stop`` is set."""
    sub = None
    delay = 0.2
    while not stop.is_set():
        try:
            if sub is None:
                sub = await js.pull_subscribe_bind(consumer, stream=stream)
            msgs = await sub.fetch(batch, timeout=fetch_timeout)
        except nats.errors.TimeoutError:
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: fetching failed: %r; retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.2
        yield msgs
