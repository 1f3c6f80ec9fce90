"""Publish an event to JetStream so that it is stored exactly once, even across NATS restarts.

Every publish carries ``Nats-Msg-Id`` = the event id, so retrying is always
safe: JetStream stores the first copy and answers later ones inside the
duplicate window with ``duplicate=True``. That is what lets
:func:`publish_wire` retry through a NATS restart (timeouts, "no responders"
while JetStream recovers, reconnecting errors) with backoff for up to
``retry_for`` seconds instead of losing the event or storing it twice.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from editflow.core.backoff import Backoff
from editflow.core.errors import UpstreamError
from editflow.events.binding import ContentMode, WireMessage, encode
from editflow.events.models import CloudEvent

log = logging.getLogger("editflow.events.publish")

#: Errors after which the same publish may succeed (the server is restarting or reconnecting).
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    NoStreamResponseError,
    ServiceUnavailableError,
    asyncio.TimeoutError,
)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    # 503 "JetStream system temporarily unavailable" / "no suitable peers" after a restart.
    return isinstance(exc, APIError) and (exc.code or 0) >= 500


async def publish_wire(
    js: JetStreamContext,
    subject: str,
    message: WireMessage,
    *,
    timeout: float = 5.0,
    retry_for: float = 30.0,
) -> PubAck:
    """Publish prepared bytes, retrying transient failures; then :class:`UpstreamError`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    backoff = Backoff(0.1, 2.0)
    while True:
        try:
            return await js.publish(
                subject, message.body, timeout=timeout, headers=dict(message.headers)
            )
        except Exception as exc:
            if not _transient(exc) or loop.time() + backoff.delay > deadline:
                raise UpstreamError(f"publish to {subject!r} failed: {exc!r}") from exc
            log.info(
                "publish to %s not acknowledged (%r); retrying in %.1fs",
                subject,
                exc,
                backoff.delay,
            )
            await asyncio.sleep(backoff.grow())


async def publish_event(
    js: JetStreamContext,
    event: CloudEvent,
    subject: str,
    *,
    mode: ContentMode = "structured",
    signing_key: str | bytes | None = None,
    timeout: float = 5.0,
    retry_for: float = 30.0,
) -> PubAck:
    """Encode ``event`` (signed when a key is given) and publish it with its id as ``Nats-Msg-Id``.

    Returns JetStream's acknowledgement; ``ack.duplicate`` is true when the
    event was already stored (a republish), which callers treat as success.
    """
    message = encode(event, mode=mode, signing_key=signing_key)
    ack = await publish_wire(js, subject, message, timeout=timeout, retry_for=retry_for)
    log.info(
        "published %s",
        event.type,
        extra={
            "event_id": event.id,
            "subject": subject,
            "seq": ack.seq,
            "duplicate": ack.duplicate,
        },
    )
    return ack
