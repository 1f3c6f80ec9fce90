"""The operator's view of the cluster: EditJobs, Jobs and Pods, fed by watches.

One :class:`ClusterCache` per operator process holds a store per kind and an
informer per (kind, namespace). Reconciles read only from here; the only
requests a reconcile makes are the writes it decides on (plus, rarely, the
result JSON in S3 when a Job is gone). Finished EditJobs whose completion was
recorded are kept slim (what retention and a resolve annotation need), which
keeps 70,000 of them within the operator's memory budget; the reconciler reads
such an EditJob whole from the apiserver in the rare case it acts on one.

What the operator's RSS is made of (issue 11, measured with tracemalloc and
``/proc/self/status`` at 10,000 finished EditJobs): the objects it keeps are
small (~1 KB per slim EditJob in this cache, ~0.8 KB of kopf's own memory per
object), but a whole EditJob decoded from JSON is ~15 KB, and CPython keeps
the memory of its high-water mark (an arena is returned only once every
object in it is gone). So what decides the RSS is how many whole objects are
alive *at once* during the first list: one page here (``Informer.relist``;
kopf watches no resource, issue 21 item 3), then
:func:`release_freed_memory` after the sync: 434 MB before, 146 MB after
(``benchmarks/control_plane.py --rss-only``; 125 -> 119 MB at 1,000).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from editflow.operator.crd import GROUP, editjob_path, editoutcome_path
from editflow.operator.informer import JSON, Informer, Key, Store, strip_noise
from editflow.operator.kube import AsyncKube
from editflow.operator.names import LABEL_EDITJOB, LABEL_POOL, MANAGED_BY
from editflow.operator.phases import FINAL_PHASES, delivered

SLIM_MARK = f"{GROUP}/slim"


def job_path(namespace: str, name: str = "") -> str:
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return f"{base}/{name}" if name else base


def pod_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def is_settled(editjob: JSON) -> bool:
    """Finished and its completion recorded: nothing left to do but expire."""
    status = editjob.get("status") or {}
    return status.get("phase") in FINAL_PHASES and delivered(status)


def project_editjob(obj: JSON) -> JSON:
    """Whole for active EditJobs; for settled ones only what retention and resolve read."""
    obj = strip_noise(obj)
    if not is_settled(obj):
        return obj
    meta, status = obj["metadata"], obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            k: meta[k]
            # finalizers: the reconciler releases its own when a settled EditJob is deleted.
            for k in (
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "deletionTimestamp",
                "finalizers",
            )
            if k in meta
        }
        | {"annotations": {k: v for k, v in annotations.items() if k.startswith(f"{GROUP}/")}}
        | {"labels": {SLIM_MARK: "true"}},
        "status": {
            k: status[k]
            for k in (
                "phase",
                "finishedAt",
                "completionEventId",
                "completionPublishedAt",
                "callbackDelivery",
                "jobName",
                # What decides a desk lane (operator/desk.lane_of), so that a ticket missing
                # from the read model at start is found without reading every EditJob whole.
                "sampledForReview",
                "reviewVerdict",
                "reviewedBy",
            )
            if k in status
        }
        | (
            {"quality": {"verdict": status["quality"].get("verdict")}}
            if isinstance(status.get("quality"), dict)
            else {}
        ),
    } | ({"spec": {"preview": True}} if (obj.get("spec") or {}).get("preview") else {})


#: What the operator reads of a Job's or a Pod's metadata.
OWNED_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "labels",
    "creationTimestamp",
    "deletionTimestamp",
)


def _owned_metadata(obj: JSON) -> JSON:
    meta = obj["metadata"]
    return {k: meta[k] for k in OWNED_METADATA if k in meta}


def project_job(obj: JSON) -> JSON:
    return {"metadata": _owned_metadata(obj), "status": obj.get("status") or {}}


def project_pod(obj: JSON) -> JSON:
    spec = obj.get("spec") or {}
    return {
        "metadata": _owned_metadata(obj),
        "spec": {"nodeName": spec.get("nodeName")},
        "status": obj.get("status") or {},
    }


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; ``None`` where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Collect cycles, then hand the C heap's free pages back to the kernel.

    After the first list the operator has parsed (and dropped) every object
    of every collection once. CPython's own arenas go back to the kernel as
    soon as they are empty, but what was allocated with ``malloc`` (blocks
    over 512 bytes: large dict tables, the list responses' bytes and text)
    stays in glibc's heap until ``malloc_trim`` returns it. With the list
    paged (one page of whole objects alive at a time) this is a few MB (5-7
    MB of ~145 at 10,000 finished EditJobs); it is done once, after the first
    sync, where it costs nothing. Returns whether the trim ran (glibc only).
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def is_slim(editjob: JSON | None) -> bool:
    return bool(editjob) and SLIM_MARK in (editjob["metadata"].get("labels") or {})


class ClusterCache:
    """Stores and informers for the operator's namespaces."""

    def __init__(
        self,
        kube: AsyncKube,
        namespaces: list[str],
        *,
        watch_timeout: int = 60,
        warm_pools: bool = False,
    ) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.editjobs = Store(project=project_editjob)
        self.jobs = Store(project=project_job)
        self.pods = Store(project=project_pod)
        self.outcomes = Store()  # the outbox: few and small, kept whole
        # Warm workers (worker.mode warm): their Jobs and Pods, watched apart from the
        # attempts' so neither the work index nor the attempt view ever mistakes one.
        self.warm_jobs = Store(project=project_job)
        self.warm_pods = Store(project=project_pod)
        self._pods_by_job: dict[Key, set[Key]] = defaultdict(set)
        self.pods.listeners.append(self._index_pod)
        managed = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        managed_owned = f"{managed},{LABEL_EDITJOB}"
        managed_pool = f"{managed},{LABEL_POOL}"
        self.informers: list[Informer] = []
        for ns in namespaces:
            self.informers += [
                Informer(
                    kube,
                    editjob_path(ns),
                    self.editjobs,
                    kind="editjobs",
                    watch_timeout=watch_timeout,
                ),
                Informer(
                    kube,
                    job_path(ns),
                    self.jobs,
                    kind="jobs",
                    label_selector=managed_owned,
                    watch_timeout=watch_timeout,
                ),
                Informer(
                    kube,
                    editoutcome_path(ns),
                    self.outcomes,
                    kind="editoutcomes",
                    watch_timeout=watch_timeout,
                ),
                Informer(
                    kube,
                    pod_path(ns),
                    self.pods,
                    kind="pods",
                    label_selector=managed_owned,
                    watch_timeout=watch_timeout,
                ),
            ]
            if warm_pools:
                self.informers += [
                    Informer(
                        kube,
                        job_path(ns),
                        self.warm_jobs,
                        kind="warm-jobs",
                        label_selector=managed_pool,
                        watch_timeout=watch_timeout,
                    ),
                    Informer(
                        kube,
                        pod_path(ns),
                        self.warm_pods,
                        kind="warm-pods",
                        label_selector=managed_pool,
                        watch_timeout=watch_timeout,
                    ),
                ]

    def _index_pod(self, key: Key, old: JSON | None, new: JSON | None) -> None:
        for obj, add in ((old, False), (new, True)):
            if obj is None:
                continue
            job = (obj["metadata"].get("labels") or {}).get("job-name")
            if not job:
                continue
            bucket = self._pods_by_job[(key[0], job)]
            if add:
                bucket.add(key)
            else:
                bucket.discard(key)
                if not bucket:
                    self._pods_by_job.pop((key[0], job), None)

    def pods_of(self, namespace: str, job: str) -> list[JSON]:
        keys = self._pods_by_job.get((namespace, job)) or ()
        return [p for k in sorted(keys) if (p := self.pods.get(k)) is not None]

    async def run(self) -> None:
        await asyncio.gather(
            *(informer.run() for informer in self.informers), self._release_after_sync()
        )

    async def _release_after_sync(self) -> None:
        """Once every cache has its first list: give the list's garbage back to the kernel."""
        await self.wait_synced()
        release_freed_memory()

    async def wait_synced(self) -> None:
        await asyncio.gather(*(informer.synced.wait() for informer in self.informers))

    @property
    def synced(self) -> bool:
        return all(informer.synced.is_set() for informer in self.informers)

    def stale_for(self) -> float:
        """Seconds since the least recently heard-from watch said anything."""
        if not self.informers:
            return 0.0
        return time.monotonic() - min(i.last_contact for i in self.informers)

    def sizes(self) -> dict[str, Any]:
        return {
            "editjobs": len(self.editjobs),
            "jobs": len(self.jobs),
            "pods": len(self.pods),
            "outcomes": len(self.outcomes),
            "warm_workers": len(self.warm_jobs),
        }
