"""A sliding-window rate limiter per client: at most ``limit`` requests in any ``window`` s.

Exact, not approximate: the 6th request within a minute of the first of five
is refused, and ``Retry-After`` says when the oldest request leaves the
window. State is per gateway process and bounded: idle clients are
forgotten, and at most ``max_clients`` are tracked (the least recently seen
is dropped first).

This is the limiter of a gateway without NATS (the in-process test fakes,
``rate_limit_shared: false``) and the fallback of the shared one
(:mod:`.sharedlimit`), which counts across replicas. Both answer
:class:`RateLimiter`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class RateLimiter(Protocol):
    """What the guard asks: record a request of a client; 0 if allowed, else the wait in s."""

    limit: int

    async def acquire(self, key: str) -> float: ...


@dataclass
class SlidingWindowLimiter:
    limit: int
    window: float = 60.0
    max_clients: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _hits: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def check(self, key: str) -> float:
        """Record a request of ``key``; 0 if allowed, else seconds until one would be."""
        if self.limit <= 0:
            return 0.0
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        self._hits.move_to_end(key)
        while hits and now - hits[0] >= self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(hits[0] + self.window - now, 0.001)
        hits.append(now)
        self._evict(now)
        return 0.0

    async def acquire(self, key: str) -> float:
        return self.check(key)

    def _evict(self, now: float) -> None:
        while len(self._hits) > self.max_clients:
            self._hits.popitem(last=False)
        # Drop a few idle clients from the cold end on every call (amortised O(1)).
        for _ in range(2):
            if not self._hits:
                return
            hits = next(iter(self._hits.values()))
            if hits and now - hits[-1] < self.window:
                return
            self._hits.popitem(last=False)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
