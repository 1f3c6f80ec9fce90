"""What warm dispatch knows: the attempts it owns, each pool's queue, the workers it hears.

Shared by the dispatcher (:mod:`.warmpool`: hand-out, results, deadlines) and the scaler
(:mod:`.warmscaler`: how many workers each pool runs, which to replace or retire); neither
keeps state of its own about attempts, pools or workers.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from editflow.events.worker_contract import HEARTBEAT_EXPIRY_SECONDS, WorkerHeartbeat, WorkerResult
from editflow.operator.kube import JSON
from editflow.operator.workindex import SortKey

Key = tuple[str, str]
PoolKey = tuple[str, str]  # (namespace, model)


@dataclass
class WarmAttempt:
    """One attempt the dispatcher owns, from hand-out queue to result."""

    namespace: str
    name: str
    edit_id: str
    attempt: int
    model: str
    order: SortKey
    payload: bytes
    msg_id: str
    deadline: float
    #: The EditJob as dispatched: its credentials are minted at hand-out, not before.
    editjob: JSON | None = None
    created: float = field(default_factory=time.time)
    published_at: float | None = None
    seq: int | None = None
    result: WorkerResult | None = None
    #: Set when the dispatcher itself gave up on it (deadline, model failure).
    failed: dict[str, str] | None = None
    #: After an operator restart: look for a result in S3 once before waiting on.
    check_result: bool = False


@dataclass
class Pool:
    namespace: str
    model: str
    waiting: list[tuple[SortKey, str]] = field(default_factory=list)  # sorted
    consumer_ready: bool = False
    failures_in_a_row: int = 0
    next_start: float = 0.0
    last_error: str = ""


#: Unclaimed results kept at most (oldest dropped first), and for at most this long: one
#: claimed after a restart is claimed within a resync, seconds.
UNCLAIMED_LIMIT = 1000
UNCLAIMED_SECONDS = 600.0


class WorkerRegistry:
    """Heartbeats by Pod; a worker not heard from for a while is gone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.workers: dict[Key, tuple[WorkerHeartbeat, float]] = {}

    def heard(self, beat: WorkerHeartbeat) -> WorkerHeartbeat | None:
        """Record ``beat``; returns the previous one of that Pod."""
        key = (beat.namespace, beat.pod)
        previous = self.workers.get(key)
        self.workers[key] = (beat, self.clock())
        return previous[0] if previous else None

    def expire(self) -> list[WorkerHeartbeat]:
        horizon = self.clock() - HEARTBEAT_EXPIRY_SECONDS
        gone = [k for k, (_, at) in self.workers.items() if at < horizon]
        return [self.workers.pop(k)[0] for k in gone]

    def forget(self, namespace: str, pod: str) -> None:
        self.workers.pop((namespace, pod), None)

    def of_pool(self, namespace: str, model: str) -> list[WorkerHeartbeat]:
        return [
            beat
            for (ns, _), (beat, _) in self.workers.items()
            if ns == namespace and beat.model == model
        ]

    def running(self, namespace: str, edit_id: str, attempt: int) -> WorkerHeartbeat | None:
        for (ns, _), (beat, _) in self.workers.items():
            if (
                ns == namespace
                and beat.state in ("busy", "draining")
                and beat.edit_id == edit_id
                and beat.attempt == attempt
            ):
                return beat
        return None


@dataclass
class WarmState:
    """The attempts, pools and workers of warm dispatch, in one place."""

    registry: WorkerRegistry = field(default_factory=WorkerRegistry)
    attempts: dict[Key, WarmAttempt] = field(default_factory=dict)
    pools: dict[PoolKey, Pool] = field(default_factory=dict)

    def pool(self, namespace: str, model: str) -> Pool:
        return self.pools.setdefault((namespace, model), Pool(namespace, model))

    def enqueue(self, attempt: WarmAttempt) -> None:
        self.attempts[(attempt.namespace, attempt.name)] = attempt
        bisect.insort(
            self.pool(attempt.namespace, attempt.model).waiting, (attempt.order, attempt.name)
        )

    def leave_waiting(self, pool: Pool, attempt: WarmAttempt) -> None:
        entry = (attempt.order, attempt.name)
        i = bisect.bisect_left(pool.waiting, entry)
        if i < len(pool.waiting) and pool.waiting[i] == entry:
            pool.waiting.pop(i)

    def demand(self, pool: Pool) -> int:
        """Attempts of ``pool`` that still need a worker (not ended, not given up)."""
        return sum(
            1
            for a in self.attempts.values()
            if a.namespace == pool.namespace
            and a.model == pool.model
            and a.result is None
            and a.failed is None
        )
