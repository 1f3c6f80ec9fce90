"""Rate-limit counts shared through a NATS JetStream KV bucket, so replicas limit as one.

Each client key holds a **sliding window of one-second slots**: the value is
a JSON list ``[[slot, count], ...]`` of the slots with admitted requests,
``slot = floor(unix time / resolution)`` with ``resolution = window / 60``.
A slot counts until its *end* is a whole window old, so the count is never
lower than the exact one: at most ``limit`` requests pass in any ``window``
seconds, and a refused client may wait up to one slot (1 s of a minute)
longer than an exact log would ask. The value stays small whatever the
limit (at most 61 slots, about 1 KB), which an exact timestamp log would not.

One admission is two round trips: ``get`` the key, then ``update`` it with
the revision that was read (``Nats-Expected-Last-Subject-Sequence``). When
another replica wrote in between, the update is refused and the decision is
made again on the fresh value, so no increment is ever lost. A refusal
writes nothing (one round trip), so only admissions can collide, and a
collision always means another request was admitted.

The bucket's ``ttl`` (stream ``max_age``) is the window plus one slot: a
client idle that long has no slot that still counts, and its key expires by
itself; nothing ever deletes keys. Keys are ``<scope>.<sha256 prefix>`` of
the client key: KV-safe whatever the client key is (IPv6 colons, ports),
and not the client address in clear text.

Errors: :class:`LimiterUnavailable` (retriable) whenever NATS did not answer
in time or refused the operation; the caller decides what a missing answer
means (the gateway falls back to its per-process limiter).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as StreamNotFoundError
from nats.js.kv import KeyValue

from editflow.core.errors import UpstreamError

log = logging.getLogger("editflow.events.kvlimits")

#: Slots per window: the resolution of the sliding window (1 s for a per-minute limit).
SLOTS_PER_WINDOW = 60
#: Conflicting updates tolerated for one decision before it is refused (see :func:`hit`).
MAX_CONFLICTS = 32

Slots = list[tuple[int, int]]
Action = Literal["created", "updated", "unchanged"]


class LimiterUnavailable(UpstreamError):
    """NATS did not answer a rate-limit read or write in time (or refused it)."""

    code = "rate_limit_store_unavailable"


@dataclass(frozen=True)
class Decision:
    """One admission decision: ``wait`` is 0 when admitted, else seconds until one would be."""

    wait: float
    slots: Slots


def resolution(window: float) -> float:
    return window / SLOTS_PER_WINDOW


def decide(slots: Slots, *, now: float, limit: int, window: float) -> Decision:
    """Admit one request at ``now`` against ``slots`` (pure: the same on every replica).

    ``slots`` may hold expired entries; the result holds only live ones plus
    the admitted request. A refusal returns the live slots unchanged. A
    ``limit`` of 0 or less means unlimited (admitted, nothing recorded).
    """
    if limit <= 0:
        return Decision(0.0, list(slots))
    res = resolution(window)
    live = sorted((s, n) for s, n in slots if (s + 1) * res + window > now and n > 0)
    total = sum(n for _, n in live)
    if total < limit:
        current = math.floor(now / res)
        if live and live[-1][0] == current:
            live[-1] = (current, live[-1][1] + 1)
        else:
            live.append((current, 1))
        return Decision(0.0, live)
    # Refused: wait until enough of the oldest slots have left the window.
    excess = total - limit + 1
    for slot, count in live:
        excess -= count
        if excess <= 0:
            return Decision(max((slot + 1) * res + window - now, 0.001), live)
    raise AssertionError("unreachable: the slots sum to at least the limit")


def encode(slots: Slots) -> bytes:
    return json.dumps([[s, n] for s, n in slots], separators=(",", ":")).encode()


def decode(raw: bytes | None) -> Slots:
    """The slots of a stored value; anything unreadable counts as no requests (and is rewritten)."""
    if not raw:
        return []
    try:
        data = json.loads(raw)
        return [(int(s), int(n)) for s, n in data]
    except (ValueError, TypeError):
        log.warning("unreadable rate-limit value replaced", extra={"value": raw[:80]})
        return []


def limit_key(scope: str, client: str) -> str:
    """The KV key of one client's counts for one limit (``scope``: a KV-safe token)."""
    digest = hashlib.sha256(f"editflow-rate-limit\0{client}".encode()).hexdigest()[:32]
    return f"{scope}.{digest}"


async def hit(
    kv: KeyValue,
    key: str,
    *,
    limit: int,
    window: float,
    timeout: float = 0.5,
    clock: Callable[[], float] = time.time,
) -> float:
    """Record one request of ``key`` if the shared window admits it; 0 if admitted, else the wait.

    ``clock`` is wall time because replicas on different nodes must agree on
    slots (NTP skew of milliseconds is far below a slot). After
    :data:`MAX_CONFLICTS` lost races the request is refused for one slot
    rather than counted nowhere: the limit holds even then.
    Raises :class:`LimiterUnavailable` when NATS does not answer within ``timeout``.
    """
    if limit <= 0:
        return 0.0
    try:
        async with asyncio.timeout(timeout):
            for _ in range(MAX_CONFLICTS):
                try:
                    entry = await kv.get(key)
                    slots, revision = decode(entry.value), entry.revision or 0
                except KeyNotFoundError as exc:  # never written, expired, or purged by a person
                    slots, revision = [], (exc.entry.revision if exc.entry else 0)
                decision = decide(slots, now=clock(), limit=limit, window=window)
                if decision.wait:
                    return decision.wait
                try:
                    await kv.update(key, encode(decision.slots), last=revision)
                except KeyWrongLastSequenceError:
                    continue  # another replica admitted a request in between: decide again
                return 0.0
    except TimeoutError as exc:
        raise LimiterUnavailable(f"NATS KV did not answer within {timeout:g} s") from exc
    except LimiterUnavailable:
        raise
    except Exception as exc:  # every NATS failure means the same to the caller
        raise LimiterUnavailable(f"NATS KV rate-limit operation failed: {exc!r}") from exc
    # debug: under contention this would be a line per request (the count is the caller's)
    log.debug("rate-limit key contended; refusing for one slot", extra={"key": key})
    return resolution(window)


# -- the bucket ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LimitsBucket:
    """The desired KV bucket: ``window`` is the longest window any limit in it uses."""

    name: str
    window: float = 60.0
    storage: str = "file"  # a StorageType value: "file" or "memory"
    replicas: int = 1

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"

    @property
    def ttl(self) -> float:
        return self.window + resolution(self.window)

    def config(self) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=self.name,
            description="editflow: shared rate-limit windows (one key per client and limit)",
            history=1,
            ttl=self.ttl,
            storage=StorageType(self.storage),
            replicas=self.replicas,
            max_value_size=4096,
        )


#: "stream name already in use with a different configuration" (a racing replica, or an old one)
_STREAM_NAME_IN_USE = 10058


async def provision_bucket(js: JetStreamContext, bucket: LimitsBucket) -> tuple[KeyValue, Action]:
    """Create the bucket, or bring its ttl, history and replicas to ``bucket`` (idempotent).

    Replicas starting at once may all create it: the server accepts an equal
    configuration twice. The storage type of an existing bucket cannot be
    changed in place; a different one is logged and kept.
    """
    try:
        info = await js.stream_info(bucket.stream)
    except StreamNotFoundError:
        try:
            kv = await js.create_key_value(bucket.config())
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(bucket.stream)
        else:
            log.info("rate-limit bucket created", extra={"bucket": bucket.name})
            return kv, "created"
    current = info.config
    desired = {
        "max_age": bucket.ttl,
        "max_msgs_per_subject": 1,
        "num_replicas": bucket.replicas,
    }
    diff = {
        k: v
        for k, v in desired.items()
        if not math.isclose(float(getattr(current, k) or 0), float(v), abs_tol=1e-6)
    }
    if current.storage != StorageType(bucket.storage):
        log.warning(
            "rate-limit bucket keeps its storage type (JetStream cannot change it in place)",
            extra={"bucket": bucket.name, "storage": str(current.storage), "want": bucket.storage},
        )
    action: Action = "unchanged"
    if diff:
        await js.update_stream(replace(current, **diff))
        action = "updated"
        log.info("rate-limit bucket updated", extra={"bucket": bucket.name, "changes": diff})
    return await js.key_value(bucket.name), action
