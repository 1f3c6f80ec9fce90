"""Rate limits that every gateway replica shares (NATS KV), with this replica's own as fallback.

``gateway.replicas: 2`` behind a load balancer must limit like one gateway:
each decision reads and conditionally updates the client's window in the
KV bucket ``rate_limit_bucket`` (:mod:`editflow.events.kvlimits`: two round
trips to admit, one to refuse, no lost increments between replicas).

**When NATS does not answer** (not yet connected, reconnecting, or slower
than ``timeout``), the decision falls back to this replica's in-process
:class:`~editflow.gateway.ratelimit.SlidingWindowLimiter` instead of failing
open or closed: failing open would drop the one guard on GPU spending
exactly when something is wrong, and failing closed would refuse status
polls that need no NATS at all. The local limiter also records every
request the shared one admitted, so a fallback starts from this replica's
own recent traffic. While it lasts a client may get the limit from each
replica (at most replicas x limit, as before sharing existed);
``editflow_gateway_rate_limit_fallbacks_total`` counts such decisions,
``editflow_gateway_rate_limit_shared`` is 0, and one warning line is
logged when sharing stops and one info line when it resumes.

Within one process the decisions for one client are serialised (a lock per
key), so a burst from one client costs no KV conflicts; only replicas race,
and the KV revision check settles those races.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from editflow.core.keyedlocks import KeyedLocks
from editflow.events import kvlimits
from editflow.events.kvlimits import LimiterUnavailable, LimitsBucket
from editflow.gateway.metrics import GatewayMetrics
from editflow.gateway.ratelimit import SlidingWindowLimiter

log = logging.getLogger("editflow.gateway")


@dataclass
class LimitsStore:
    """The rate-limit bucket of this gateway, provisioned on first use once NATS is connected.

    ``jetstream`` returns the connected JetStream context, or ``None`` while
    the connection is down (then no request waits for NATS at all). After a
    failed provisioning the next attempt waits ``retry_seconds``, so a broken
    NATS does not add a timeout to every request.
    """

    jetstream: Callable[[], JetStreamContext | None]
    bucket: LimitsBucket
    metrics: GatewayMetrics
    timeout: float = 2.0
    retry_seconds: float = 5.0
    _kv: KeyValue | None = None
    _failed_at: float = float("-inf")
    _failure: str = ""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _shared: bool | None = None

    async def kv(self) -> KeyValue:
        js = self.jetstream()
        if js is None:
            raise LimiterUnavailable("not connected to NATS")
        if self._kv is not None:
            return self._kv
        async with self._lock:
            if self._kv is not None:
                return self._kv
            if time.monotonic() - self._failed_at < self.retry_seconds:
                raise LimiterUnavailable(self._failure)
            try:
                async with asyncio.timeout(self.timeout):
                    self._kv, _ = await kvlimits.provision_bucket(js, self.bucket)
            except Exception as exc:  # any failure: count locally for a while
                self._failed_at = time.monotonic()
                self._failure = f"cannot provision KV bucket {self.bucket.name!r}: {exc!r}"
                raise LimiterUnavailable(self._failure) from exc
            return self._kv

    def failed(self, exc: LimiterUnavailable) -> None:
        """A decision fell back: log the change once, and provision again next time
        (a NATS restarted with memory storage has lost the bucket)."""
        self._kv = None
        self.metrics.rate_limit_shared.set(0)
        if self._shared is not False:
            log.warning(
                "rate limits are counted per replica until NATS answers again",
                extra={"bucket": self.bucket.name, "reason": exc.message},
            )
        self._shared = False

    def succeeded(self) -> None:
        if self._shared is not True:
            self.metrics.rate_limit_shared.set(1)
            if self._shared is False:
                log.info("rate limits are shared again", extra={"bucket": self.bucket.name})
        self._shared = True


@dataclass
class SharedLimiter:
    """At most ``limit`` requests per ``window`` s per client key, counted across replicas."""

    scope: str
    limit: int
    store: LimitsStore
    window: float = 60.0
    timeout: float = 0.5
    local: SlidingWindowLimiter = field(init=False)
    _locks: KeyedLocks = field(default_factory=KeyedLocks, init=False)

    def __post_init__(self) -> None:
        self.local = SlidingWindowLimiter(self.limit, self.window)

    async def acquire(self, key: str) -> float:
        """Record a request of ``key``; 0 if allowed, else seconds until one would be."""
        if self.limit <= 0:
            return 0.0
        try:
            kv = await self.store.kv()
            async with self._locks.hold(key):
                wait = await kvlimits.hit(
                    kv,
                    kvlimits.limit_key(self.scope, key),
                    limit=self.limit,
                    window=self.window,
                    timeout=self.timeout,
                )
        except LimiterUnavailable as exc:
            self.store.failed(exc)
            self.store.metrics.rate_limit_fallbacks.labels(self.scope).inc()
            return self.local.check(key)
        self.store.succeeded()
        if not wait:
            self.local.check(key)  # this replica's own view, for a later fallback
        return wait
