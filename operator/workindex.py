"""Queue order and the namespace cap, kept from cache events instead of per-reconcile lists.

Before this index every waiting EditJob listed all EditJobs and Jobs of its
namespace on every reconcile: N queued edits cost N full lists every resync.
Here both numbers :func:`editflow.operator.decide.decide` needs are answered
from memory in O(log n):

* **in flight** = attempts holding (or about to hold) a GPU slot in the
  namespace: unfinished managed Jobs in the Job cache, EditJobs whose status
  names a Job that the cache has not seen finish, and *reservations*: Jobs
  this process decided to create and has not observed yet. The reservation
  is taken in the same synchronous step as the decision, so two concurrent
  reconciles can never both take the last slot, however far the caches lag
  behind a burst (controller-runtime's "expectations" play this role in the
  Job controller).
* **queued ahead** = EditJobs waiting for a slot that sort before this one by
  (priority desc, queuedAt, name). Those still in a retry backoff are not
  ready and do not count until their ``retryAfter`` passes.

The index never talks to the apiserver; listeners feed it
``(key, old, new)`` from the EditJob and Job stores.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from editflow.core.kubetime import parse_stamp as parse_time
from editflow.operator.names import LABEL_EDITJOB
from editflow.operator.phases import FINAL_PHASES
from editflow.operator.podstate import job_outcome

Key = tuple[str, str]
SortKey = tuple[int, str, str]
WAITING = ("", "Pending", "Queued")


def _parse(value: str | None) -> datetime | None:
    """:func:`parse_time`, with a malformed stamp read as none (a queue entry without backoff)."""
    try:
        return parse_time(value)
    except ValueError:
        return None


def job_finished(job: dict[str, Any]) -> bool:
    return job_outcome(job) is not None


def sort_key(editjob: dict[str, Any]) -> SortKey:
    meta, spec = editjob["metadata"], editjob.get("spec") or {}
    status = editjob.get("status") or {}
    queued = status.get("queuedAt") or meta.get("creationTimestamp") or ""
    return (-int(spec.get("priority", 50)), queued, meta["name"])


def waits_for_slot(editjob: dict[str, Any] | None) -> bool:
    """An EditJob that will need a GPU slot before anything else happens to it."""
    if editjob is None or editjob["metadata"].get("deletionTimestamp"):
        return False
    status = editjob.get("status") or {}
    return (status.get("phase") or "") in WAITING and not status.get("jobName")


@dataclass
class _Namespace:
    ready: list[tuple[SortKey, str]] = field(default_factory=list)  # sorted
    backoff: list[tuple[datetime, SortKey, str]] = field(default_factory=list)  # heap
    members: dict[str, tuple[SortKey, datetime | None]] = field(default_factory=dict)
    unfinished_jobs: set[str] = field(default_factory=set)
    finished_jobs: set[str] = field(default_factory=set)
    claimed: dict[str, str] = field(default_factory=dict)  # editjob -> job named in status
    reserved: set[str] = field(default_factory=set)


class WorkIndex:
    """Per-namespace queue and slot accounting; see the module docstring."""

    def __init__(self) -> None:
        self._ns: dict[str, _Namespace] = defaultdict(_Namespace)

    # -- feeding --------------------------------------------------------------
    def editjob_changed(self, key: Key, old: Any, new: dict[str, Any] | None) -> None:
        namespace, name = key
        ns = self._ns[namespace]
        self._leave_queue(ns, name)
        status = (new or {}).get("status") or {}
        job = status.get("jobName")
        if new is not None and job and status.get("phase") not in FINAL_PHASES:
            released = ns.claimed.get(name)
            ns.claimed[name] = job
        else:
            released = ns.claimed.pop(name, None)
        if released and released != job:
            # The status no longer names that attempt: its reservation is over too (a warm
            # attempt has no Job whose event would end it; a Job still running counts anyway).
            ns.reserved.discard(released)
        if waits_for_slot(new):
            assert new is not None
            entry = sort_key(new)
            retry_at = _parse(status.get("retryAfter"))
            ns.members[name] = (entry, retry_at)
            if retry_at is not None:
                heapq.heappush(ns.backoff, (retry_at, entry, name))
            else:
                bisect.insort(ns.ready, (entry, name))

    def job_changed(self, key: Key, old: Any, new: dict[str, Any] | None) -> None:
        namespace, name = key
        ns = self._ns[namespace]
        ns.reserved.discard(name)
        ns.unfinished_jobs.discard(name)
        ns.finished_jobs.discard(name)
        if new is None:
            return
        if not (new["metadata"].get("labels") or {}).get(LABEL_EDITJOB):
            return
        (ns.finished_jobs if job_finished(new) else ns.unfinished_jobs).add(name)

    def _leave_queue(self, ns: _Namespace, name: str) -> None:
        member = ns.members.pop(name, None)
        if member is None:
            return
        entry, retry_at = member
        if retry_at is None:
            i = bisect.bisect_left(ns.ready, (entry, name))
            if i < len(ns.ready) and ns.ready[i] == (entry, name):
                ns.ready.pop(i)
        # Backoff heap entries are dropped lazily in _promote (membership is checked).

    def _promote(self, ns: _Namespace, now: datetime) -> None:
        while ns.backoff and ns.backoff[0][0] <= now:
            retry_at, entry, name = heapq.heappop(ns.backoff)
            member = ns.members.get(name)
            if member is None or member != (entry, retry_at):
                continue  # left the queue or re-entered with another retry time
            ns.members[name] = (entry, None)
            bisect.insort(ns.ready, (entry, name))

    # -- answering --------------------------------------------------------------
    def in_flight(self, namespace: str) -> int:
        ns = self._ns[namespace]
        names = ns.unfinished_jobs | ns.reserved
        names |= {job for job in ns.claimed.values() if job not in ns.finished_jobs}
        return len(names)

    def queued_ahead(self, key: Key, editjob: dict[str, Any], now: datetime) -> int:
        """How many ready EditJobs sort before ``editjob`` in its namespace's queue."""
        ns = self._ns[key[0]]
        self._promote(ns, now)
        return bisect.bisect_left(ns.ready, (sort_key(editjob), key[1]))

    def head(self, namespace: str, count: int, now: datetime) -> list[Key]:
        """The first ``count`` ready EditJobs: who gets the next free slots."""
        ns = self._ns[namespace]
        self._promote(ns, now)
        return [(namespace, name) for _, name in ns.ready[: max(0, count)]]

    def queue_length(self, namespace: str) -> int:
        return len(self._ns[namespace].members)

    def namespaces(self) -> list[str]:
        return list(self._ns)

    # -- reservations -------------------------------------------------------------
    def reserve(self, namespace: str, job: str, cap: int) -> bool:
        """Take a slot for ``job`` if one is free (synchronous: no await in between)."""
        ns = self._ns[namespace]
        if job in ns.reserved or job in ns.unfinished_jobs:
            return True
        if self.in_flight(namespace) >= cap:
            return False
        ns.reserved.add(job)
        return True

    def release(self, namespace: str, job: str) -> None:
        self._ns[namespace].reserved.discard(job)
