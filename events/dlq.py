"""The dead letter: where every event that editflow will not (or could not) process is kept.

Nothing is dropped silently. Two ways in:

* :func:`dead_letter` — the consumer found the event invalid, or its handler
  failed permanently or ran out of retries; the consumer writes the dead
  letter *first* and only then ``term()``\\ s the message.
* :func:`run_dead_letter_mover` — JetStream gave up on a message (it hit
  ``max_deliver`` without an ack, e.g. because the consumer process kept
  dying). The server's ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.…``
  advisory is stored in the advisories stream; the mover reads it, fetches
  the original by stream sequence and copies it here.

A dead letter is the original payload, byte for byte, with the original
headers (``Nats-*`` headers are renamed ``Editflow-Dlq-Orig-*`` so they do
not steer the DLQ stream) plus::

    Editflow-Dlq-Reason      stable code: invalid_event.<reason>, max_deliveries, <error code>
    Editflow-Dlq-Message     what went wrong, percent-encoded UTF-8
    Editflow-Dlq-Subject     the subject to replay to
    Editflow-Dlq-Stream, Editflow-Dlq-Stream-Seq, Editflow-Dlq-Consumer,
    Editflow-Dlq-Deliveries, Editflow-Dlq-Time

Its ``Nats-Msg-Id`` is ``dlq:<stream>:<seq>``, so the two ways in can race
without storing a message twice. :func:`replay` republishes the original to
its subject and then deletes the dead letter (``editflow dlq replay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from editflow.events.binding import MSG_ID, WireMessage
from editflow.events.publish import publish_wire
from editflow.events.pulling import pull_batches
from editflow.events.topology import Topology

log = logging.getLogger("editflow.events.dlq")

#: Events dead-lettered by this process, by reason (a stable error code: a bounded set).
DEAD_LETTERS = Counter("editflow_dead_letters_total", "events put in the dead letter", ["reason"])

H = "Editflow-Dlq-"
REASON, MESSAGE, SUBJECT = f"{H}Reason", f"{H}Message", f"{H}Subject"
STREAM, STREAM_SEQ, CONSUMER = f"{H}Stream", f"{H}Stream-Seq", f"{H}Consumer"
DELIVERIES, TIME, TRUNCATED = f"{H}Deliveries", f"{H}Time", f"{H}Truncated"
ORIG = f"{H}Orig-"

MAX_DELIVERIES = "max_deliveries"
_MAX_MESSAGE_CHARS = 4000


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered event as read back from the DLQ stream."""

    seq: int
    subject: str
    reason: str
    message: str
    time: str
    stream: str | None
    stream_seq: int | None
    consumer: str | None
    deliveries: int | None
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def event_id(self) -> str | None:
        """The original ``Nats-Msg-Id`` (the event id, when the producer set it)."""
        return self.headers.get(MSG_ID)

    def summary(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "time": self.time,
            "reason": self.reason,
            "subject": self.subject,
            "event_id": self.event_id,
            "stream": self.stream,
            "stream_seq": self.stream_seq,
            "deliveries": self.deliveries,
            "message": self.message,
        }


def _original_headers(headers: dict[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if key.lower().startswith("nats-"):
            out[f"{ORIG}{key}"] = value
        elif not key.startswith(H):
            out[key] = value
    return out


async def dead_letter(
    js: JetStreamContext,
    topology: Topology,
    *,
    body: bytes,
    headers: dict[str, str] | None,
    subject: str,
    reason: str,
    message: str,
    stream: str | None = None,
    stream_seq: int | None = None,
    consumer: str | None = None,
    deliveries: int | None = None,
) -> PubAck:
    """Store one event in the dead letter with the reason; idempotent per (stream, seq)."""
    meta = {
        REASON: reason,
        MESSAGE: quote(message[:_MAX_MESSAGE_CHARS], safe=" :,;()[]{}'\"/=<>-_.@+*#!?"),
        SUBJECT: subject,
        TIME: datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if stream is not None:
        meta[STREAM] = stream
    if stream_seq is not None:
        meta[STREAM_SEQ] = str(stream_seq)
    if consumer is not None:
        meta[CONSUMER] = consumer
    if deliveries is not None:
        meta[DELIVERIES] = str(deliveries)
    if stream is not None and stream_seq is not None:
        meta[MSG_ID] = f"dlq:{stream}:{stream_seq}"
    all_headers = {**_original_headers(headers), **meta}
    target = topology.dlq_subject(stream or "direct")
    try:
        ack = await publish_wire(js, target, WireMessage(all_headers, body))
    except Exception as exc:
        if not isinstance(exc.__cause__, nats.errors.MaxPayloadError):
            raise
        # The original was near the server's max payload; keep its head and say so.
        all_headers[TRUNCATED] = str(len(body))
        ack = await publish_wire(js, target, WireMessage(all_headers, body[: len(body) // 2]))
    if not ack.duplicate:
        DEAD_LETTERS.labels(reason).inc()
    log.warning(
        "dead-lettered event on %s: %s",
        subject,
        reason,
        extra={"reason": reason, "detail": message, "dlq_seq": ack.seq, "stream_seq": stream_seq},
    )
    return ack


def _to_dead_letter(seq: int, headers: dict[str, str] | None, body: bytes) -> DeadLetter:
    headers = dict(headers or {})
    original = {}
    for key, value in headers.items():
        if key.startswith(ORIG):
            original[key[len(ORIG) :]] = value
        elif not key.startswith(H) and key != MSG_ID:
            original[key] = value

    def num(name: str) -> int | None:
        value = headers.get(name)
        return int(value) if value and value.isdigit() else None

    return DeadLetter(
        seq=seq,
        subject=headers.get(SUBJECT, ""),
        reason=headers.get(REASON, "unknown"),
        message=unquote(headers.get(MESSAGE, "")),
        time=headers.get(TIME, ""),
        stream=headers.get(STREAM),
        stream_seq=num(STREAM_SEQ),
        consumer=headers.get(CONSUMER),
        deliveries=num(DELIVERIES),
        body=body or b"",
        headers=original,
    )


async def get_dead_letter(js: JetStreamContext, topology: Topology, seq: int) -> DeadLetter:
    """One dead letter by its DLQ sequence (``NotFoundError`` if replayed or expired)."""
    raw = await js.get_msg(topology.dlq_stream, seq)
    return _to_dead_letter(seq, raw.headers, raw.data or b"")


async def list_dead_letters(
    js: JetStreamContext, topology: Topology, *, limit: int = 100
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters still in the DLQ."""
    info = await js.stream_info(topology.dlq_stream)
    out: list[DeadLetter] = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if len(out) >= limit:
            break
        with contextlib.suppress(NotFoundError):
            out.append(await get_dead_letter(js, topology, seq))
    return out


async def replay(js: JetStreamContext, topology: Topology, seq: int) -> PubAck:
    """Republish a dead letter's original to its subject, then remove it from the DLQ.

    The copy gets ``Nats-Msg-Id`` = ``<original id>:replay:<dlq seq>``: a
    new message for JetStream (the original id may still be inside the
    duplicate window) that a repeated replay of the same dead letter cannot
    duplicate. Consumers deduplicate by the CloudEvent id, which is unchanged.
    """
    letter = await get_dead_letter(js, topology, seq)
    if not letter.subject:
        raise ValueError(f"dead letter {seq} does not record its subject; cannot replay")
    headers = {k: v for k, v in letter.headers.items() if not k.lower().startswith("nats-")}
    headers[MSG_ID] = f"{letter.event_id or 'dlq'}:replay:{seq}"
    ack = await publish_wire(js, letter.subject, WireMessage(headers, letter.body))
    await js.delete_msg(topology.dlq_stream, seq)
    log.info("replayed dead letter %d to %s", seq, letter.subject, extra={"new_seq": ack.seq})
    return ack


async def delete_dead_letter(js: JetStreamContext, topology: Topology, seq: int) -> None:
    """Remove a dead letter for good (after a person decided it needs no replay)."""
    await js.delete_msg(topology.dlq_stream, seq)


async def capture_advisory(
    js: JetStreamContext, topology: Topology, advisory: bytes
) -> PubAck | None:
    """Copy the message a max-deliveries advisory names into the dead letter."""
    try:
        info = json.loads(advisory)
        stream, seq = str(info["stream"]), int(info["stream_seq"])
    except (ValueError, KeyError, TypeError):
        log.error("unreadable max-deliveries advisory: %r", advisory[:500])
        return None
    consumer, deliveries = info.get("consumer"), info.get("deliveries")
    message = (
        f"JetStream stopped redelivering after {deliveries} deliveries without an ack "
        f"(consumer {consumer}); the handler kept failing or the consumer kept dying"
    )
    try:
        raw = await js.get_msg(stream, seq)
    except NotFoundError:
        return await dead_letter(
            js, topology, body=b"", headers={}, subject="", reason=MAX_DELIVERIES,
            message=f"{message}; the original (seq {seq}) is no longer in stream {stream}",
            stream=stream, stream_seq=seq, consumer=consumer, deliveries=deliveries,
        )  # fmt: skip
    return await dead_letter(
        js, topology, body=raw.data or b"", headers=dict(raw.headers or {}),
        subject=raw.subject or "", reason=MAX_DELIVERIES, message=message,
        stream=stream, stream_seq=seq, consumer=consumer, deliveries=deliveries,
    )  # fmt: skip


async def run_dead_letter_mover(
    js: JetStreamContext,
    topology: Topology,
    *,
    stop: asyncio.Event | None = None,
    fetch_timeout: float = 2.0,
) -> None:
    """Turn stored max-deliveries advisories into dead letters until ``stop`` is set."""
    stop = stop or asyncio.Event()
    async for msgs in pull_batches(
        js,
        consumer=topology.dlq_consumer,
        stream=topology.advisories_stream,
        stop=stop,
        batch=10,
        fetch_timeout=fetch_timeout,
        what="dead-letter mover",
    ):
        for msg in msgs:
            try:
                await capture_advisory(js, topology, msg.data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not dead-letter advisory (will retry): %r", exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1)
                continue
            await msg.ack()
