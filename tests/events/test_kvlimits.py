"""Rate-limit windows in NATS KV (editflow.events.kvlimits): the pure window, then real JetStream.

The window logic is tested with explicit clocks (no sleeping); the store is
the session's real nats-server, with a fresh bucket per test and two separate
connections standing in for two gateway replicas.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from editflow.core.settings import Settings
from editflow.events import kvlimits
from editflow.events.connection import connect
from editflow.events.kvlimits import LimiterUnavailable, LimitsBucket, decide

T0 = 1_800_000_000.0  # a wall-clock instant on a slot boundary (1 s slots for a 60 s window)


# -- the window (pure) ----------------------------------------------------------------------
def admit_all(times: list[float], *, limit: int, window: float = 60.0) -> list[float]:
    slots: kvlimits.Slots = []
    waits = []
    for now in times:
        decision = decide(slots, now=now, limit=limit, window=window)
        slots = decision.slots
        waits.append(decision.wait)
    return waits


def test_the_limit_passes_and_the_next_request_waits_for_the_oldest_slot() -> None:
    waits = admit_all([T0, T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50.5], limit=5)
    assert waits[:5] == [0.0] * 5
    # The first request's slot [T0, T0+1) leaves the window at T0 + 61.
    assert waits[5] == pytest.approx(61 - 50.5)


def test_a_slot_counts_until_its_end_is_a_window_old_never_less() -> None:
    slots = decide([], now=T0 + 0.2, limit=1, window=60).slots
    assert decide(slots, now=T0 + 60.5, limit=1, window=60).wait == pytest.approx(0.5)
    assert decide(slots, now=T0 + 61.0, limit=1, window=60).wait == 0.0


def test_expired_slots_are_dropped_when_a_request_is_admitted() -> None:
    slots = decide([], now=T0, limit=2, window=60).slots
    later = decide(slots, now=T0 + 120, limit=2, window=60)
    assert later.wait == 0.0 and later.slots == [(int((T0 + 120) // 1), 1)]


def test_the_stored_value_stays_small_whatever_the_limit() -> None:
    slots: kvlimits.Slots = []
    for i in range(10_000):  # 10,000 admitted requests over 100 s
        slots = decide(slots, now=T0 + i / 100, limit=1_000_000, window=60).slots
    assert len(slots) <= kvlimits.SLOTS_PER_WINDOW + 1
    assert len(kvlimits.encode(slots)) < 2048


def test_limit_zero_means_unlimited_and_records_nothing() -> None:
    decision = decide([], now=T0, limit=0, window=60)
    assert decision.wait == 0.0 and decision.slots == []


def test_an_unreadable_value_counts_as_no_requests() -> None:
    assert kvlimits.decode(b"not json") == []
    assert kvlimits.decode(b'{"a": 1}') == []
    assert kvlimits.decode(kvlimits.encode([(5, 2)])) == [(5, 2)]


def test_keys_are_kv_safe_and_do_not_show_the_client_address() -> None:
    key = kvlimits.limit_key("submit", "2001:db8::1")
    scope, digest = key.split(".")
    assert scope == "submit" and len(digest) == 32 and digest.isalnum()
    assert "2001" not in key
    assert kvlimits.limit_key("read", "2001:db8::1") != key


# -- on real JetStream ----------------------------------------------------------------------
@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[tuple[NATS, NATS]]:
    """Two connections: what two gateway processes hold."""
    a = await connect(settings.nats, name="gateway-a", reconnect_wait=0.2)
    b = await connect(settings.nats, name="gateway-b", reconnect_wait=0.2)
    yield a, b
    for nc in (a, b):
        if not nc.is_closed:
            await nc.close()


@pytest.fixture
def bucket() -> LimitsBucket:
    return LimitsBucket(f"test_limits_{uuid.uuid4().hex[:8]}", storage="memory")


async def test_provisioning_is_idempotent_and_concurrent_replicas_agree(
    replicas: tuple[NATS, NATS], bucket: LimitsBucket
) -> None:
    a, b = (nc.jetstream() for nc in replicas)
    results = await asyncio.gather(
        kvlimits.provision_bucket(a, bucket), kvlimits.provision_bucket(b, bucket)
    )
    assert sorted(action for _, action in results) in (
        ["created", "created"],
        ["created", "unchanged"],
    )
    info = await a.stream_info(bucket.stream)
    assert info.config.max_age == pytest.approx(61.0)
    assert info.config.max_msgs_per_subject == 1
    assert (await kvlimits.provision_bucket(b, bucket))[1] == "unchanged"
    longer = LimitsBucket(bucket.name, window=120.0, storage="memory")
    assert (await kvlimits.provision_bucket(b, longer))[1] == "updated"
    assert (await a.stream_info(bucket.stream)).config.max_age == pytest.approx(122.0)


async def test_concurrent_bursts_from_two_replicas_never_exceed_the_limit(
    replicas: tuple[NATS, NATS], bucket: LimitsBucket
) -> None:
    """No lock within a replica here: every request races every other one on the revision."""
    kvs = [(await kvlimits.provision_bucket(nc.jetstream(), bucket))[0] for nc in replicas]
    key = kvlimits.limit_key("submit", "198.51.100.7")
    limit = 12
    waits = await asyncio.gather(
        *(
            kvlimits.hit(kvs[i % 2], key, limit=limit, window=60, timeout=10)
            for i in range(3 * limit)
        )
    )
    assert sum(1 for w in waits if w == 0) == limit
    assert all(0 < w <= 61 for w in waits if w)
    stored = json.loads((await kvs[0].get(key)).value)
    assert sum(count for _, count in stored) == limit


async def test_the_window_slides_the_same_for_every_replica(
    replicas: tuple[NATS, NATS], bucket: LimitsBucket
) -> None:
    a, b = [(await kvlimits.provision_bucket(nc.jetstream(), bucket))[0] for nc in replicas]
    key = kvlimits.limit_key("submit", "203.0.113.9")

    async def at(kv: KeyValue, now: float) -> float:
        return await kvlimits.hit(kv, key, limit=3, window=60, clock=lambda: now)

    assert [await at(a, T0), await at(b, T0 + 10), await at(a, T0 + 20)] == [0, 0, 0]
    assert await at(b, T0 + 30) == pytest.approx(31)  # until the slot of T0 has left
    assert await at(a, T0 + 61) == 0  # the first one left the window
    assert await at(b, T0 + 62) == pytest.approx(9)  # now T0+10 is the oldest


async def test_a_refusal_writes_nothing(replicas: tuple[NATS, NATS], bucket: LimitsBucket) -> None:
    kv, _ = await kvlimits.provision_bucket(replicas[0].jetstream(), bucket)
    key = kvlimits.limit_key("read", "192.0.2.1")
    assert await kvlimits.hit(kv, key, limit=1, window=60) == 0
    revision = (await kv.get(key)).revision
    assert await kvlimits.hit(kv, key, limit=1, window=60) > 0
    assert (await kv.get(key)).revision == revision


async def test_a_closed_connection_is_limiter_unavailable(
    replicas: tuple[NATS, NATS], bucket: LimitsBucket
) -> None:
    kv, _ = await kvlimits.provision_bucket(replicas[0].jetstream(), bucket)
    await replicas[0].close()
    with pytest.raises(LimiterUnavailable):
        await kvlimits.hit(kv, kvlimits.limit_key("submit", "x"), limit=5, window=60)


async def test_a_missing_bucket_is_limiter_unavailable(
    replicas: tuple[NATS, NATS], bucket: LimitsBucket
) -> None:
    """What a NATS restarted without its (memory) bucket looks like to a running gateway."""
    js = replicas[0].jetstream()
    kv, _ = await kvlimits.provision_bucket(js, bucket)
    await js.delete_key_value(bucket.name)
    with pytest.raises(LimiterUnavailable):
        await kvlimits.hit(kv, kvlimits.limit_key("submit", "x"), limit=5, window=60, timeout=2)
