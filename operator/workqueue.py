"""A rate-limited work queue of EditJob keys, modelled on client-go's workqueue.

Three promises, the same as controller-runtime's:

* a key is never reconciled by two workers at once: a key added while it is
  being processed is marked dirty and queued again once its worker is done;
* a key waiting in the queue is there once, however often it was added
  (a burst of watch events for one EditJob costs one reconcile);
* a key that fails backs off exponentially, per key (``base * 2**failures``,
  capped), until :meth:`WorkQueue.forget` says it succeeded.

Delayed adds (``add_after``) coalesce to the earliest wake-up, so a requeue
never postpones a reconcile someone already asked for sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """De-duplicating FIFO with per-key exponential backoff."""

    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return self._queue.qsize()

    @property
    def processing(self) -> int:
        return len(self._processing)

    def add(self, key: K) -> None:
        """Reconcile ``key`` as soon as a worker is free (no-op if already waiting)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Reconcile ``key`` after ``delay`` seconds, unless asked sooner."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._queued or key in self._dirty:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= when:
                return
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def add_rate_limited(self, key: K) -> float:
        """Requeue after this key's next backoff step; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.max_delay, self.base_delay * (2**failures))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts from the base delay again."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def discard(self, key: K) -> None:
        """The object is gone: drop its timer and backoff state."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> K:
        """The next key to process; the caller must call :meth:`done` with it."""
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def run_workers(self, count: int, work: Callable[[K], Awaitable[None]]) -> None:
        """``count`` workers taking keys until cancelled (bounded concurrency)."""

        async def worker() -> None:
            while True:
                key = await self.get()
                try:
                    await work(key)
                finally:
                    self.done(key)

        tasks = [asyncio.create_task(worker(), name=f"reconcile-worker-{i}") for i in range(count)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
