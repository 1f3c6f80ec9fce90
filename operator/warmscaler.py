"""How many warm workers each pool runs, and which to replace or retire.

The scaler keeps each pool (namespace, model) at the workers its attempts need, bounded
by ``max_warm_workers`` and the namespace's cap; drops workers that never started once
nobody needs them; backs a pool off when its model does not load and, after
``LOAD_FAILURES_TO_GIVE_UP`` failed starts with no worker up, fails the attempts waiting
for it; deletes a worker stuck on one edit past its deadline; asks workers of an older
configuration to retire; and has an idle worker give its GPU to another pool of its
namespace that cannot schedule one. It reads and changes only :class:`WarmState`; the
dispatcher (:mod:`.warmpool`) hands the attempts out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.errors import Error as NatsError

from editflow.core.kubetime import parse_stamp
from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import (
    HEARTBEAT_EXPIRY_SECONDS,
    MODEL_LOAD_FAILED_CODE,
    WorkerControl,
    WorkerHeartbeat,
)
from editflow.operator import metrics
from editflow.operator.caches import ClusterCache, job_path
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import LABEL_POOL, job_name
from editflow.operator.podstate import exit_code, unschedulable
from editflow.operator.poolkeys import PoolKeys
from editflow.operator.warmjobs import config_hash, warm_job_manifest
from editflow.operator.warmregistry import Key, Pool, WarmState
from editflow.operator.workindex import job_finished

log = logging.getLogger(__name__)

#: What a warm worker's exit code says (editflow.core.errors.ExitCode).
EXIT_MEANINGS = {
    70: "NATS or another upstream unreachable: check the NATS URL and credentials",
    71: "the model did not load",
    72: "an unexpected error",
}
#: Failed worker starts in a row (no worker up meanwhile) after which waiting attempts fail.
LOAD_FAILURES_TO_GIVE_UP = 2


#: How long a deleted worker's heartbeats are not taken as news (its Pod's termination
#: grace and then some).
DELETED_MEMORY_SECONDS = 120.0


class PoolScaler:
    """Pool sizes, replacements and retirements of warm dispatch (module docstring)."""

    def __init__(
        self,
        state: WarmState,
        kube: AsyncKube,
        cache: ClusterCache,
        op: OperatorSettings,
        *,
        clock: Callable[[], float],
        pool_keys: PoolKeys | None,
        ensure_consumer: Callable[[Pool], Awaitable[None]],
        control: Callable[[str, str, WorkerControl], Awaitable[None]],
        wake: Callable[[Key], None],
        kick: Callable[[], None],
    ) -> None:
        self.state = state
        self.kube = kube
        self.cache = cache
        self.op = op
        self.clock = clock
        self.pool_keys = pool_keys
        self.ensure_consumer = ensure_consumer
        self.control = control
        self.wake = wake
        self.kick = kick
        self._retired: dict[Key, float] = {}
        self._deleting: set[Key] = set()
        #: Workers whose Job was deleted, and when: a stuck worker keeps saying "busy" until
        #: its Pod is gone, and deleting its Job again on every tick was a write every 2 s.
        self._deleted: dict[Key, float] = {}
        #: Worker Jobs whose failure was already counted (by heartbeat or by the Job).
        self._failures_counted: set[Key] = set()
        #: Worker Jobs whose worker was up (idle or busy) once: a later death is a crash, not
        #: a model that does not load, and does not hold the pool back.
        self._were_up: set[Key] = set()
        #: When this process began: a worker Job that had failed before is an earlier
        #: process's news (counted then), and an empty registry right after a start only
        #: means no heartbeat was heard yet.
        self.started = clock()
        cache.warm_jobs.listeners.append(self.warm_job_changed)

    async def tend(self) -> None:
        """Replace stuck workers, retire outdated ones, yield idle GPUs (every tick)."""
        await self._replace_stuck_workers()
        await self._retire_outdated()
        await self.yield_idle_gpus()

    def heard(self, beat: WorkerHeartbeat, pool: Pool) -> None:
        """What a heartbeat tells about the pool's health: a model that failed to load (counted
        once per worker Job), or a worker up (the pool is healthy again)."""
        if beat.state == "failed":
            job = self._job_of_pod(beat.namespace, beat.pod)
            if job is None or (beat.namespace, job) not in self._failures_counted:
                if job is not None:
                    self._failures_counted.add((beat.namespace, job))
                self.load_failed(pool, beat.error or "the model did not load")
            else:
                pool.last_error = beat.error or pool.last_error
            self.state.registry.forget(beat.namespace, beat.pod)
        elif beat.state in ("idle", "busy"):
            pool.failures_in_a_row = 0
            if (job := self._job_of_pod(beat.namespace, beat.pod)) is not None:
                self._were_up.add((beat.namespace, job))

    def warm_job_changed(self, key: Key, old: JSON | None, new: JSON | None) -> None:
        """A worker Job that failed without saying why (a crash before its first heartbeat)
        still counts as a failed start: the pool backs off instead of crash-looping."""
        if new is None:
            self._failures_counted.discard(key)
            self._were_up.discard(key)
            return
        failed_at = next(
            (
                c.get("lastTransitionTime") or ""
                for c in (new.get("status") or {}).get("conditions") or []
                if c.get("type") == "Failed" and c.get("status") == "True"
            ),
            None,
        )
        if failed_at is None or key in self._failures_counted or key in self._were_up:
            return
        self._failures_counted.add(key)
        if old is None and _before(failed_at, self.started - 2.0):
            # Failed before this process started (the cache's first list after a restart,
            # within the Job's TTL): counting it again would fail edits that a live worker
            # of the pool is about to be heard running.
            return
        model = (new["metadata"].get("labels") or {}).get(LABEL_POOL)
        if model:
            self.load_failed(self.state.pool(key[0], model), self._why_failed(key))
        self.kick()

    def _why_failed(self, job: Key) -> str:
        """A worker Job that failed before its worker was up, in words (its exit code)."""
        for (ns, _), pod in self.cache.warm_pods.items.items():
            if ns != job[0] or (pod["metadata"].get("labels") or {}).get("job-name") != job[1]:
                continue
            code = exit_code((pod,))
            if code is not None:
                meaning = EXIT_MEANINGS.get(code, "see the Pod's log")
                return f"worker Job {job[1]} exited {code} before it was up ({meaning})"
        return f"worker Job {job[1]} failed before it was up"

    def _job_of_pod(self, namespace: str, pod: str) -> str | None:
        found = self.cache.warm_pods.get((namespace, pod))
        return ((found or {}).get("metadata", {}).get("labels") or {}).get("job-name")

    # -- pool size ------------------------------------------------------------------------
    def pool_jobs(self, namespace: str, model: str) -> list[JSON]:
        return [
            job
            for (ns, _), job in self.cache.warm_jobs.items.items()
            if ns == namespace
            and (job["metadata"].get("labels") or {}).get(LABEL_POOL) == model
            and not job_finished(job)
            and not job["metadata"].get("deletionTimestamp")
        ]

    def pool_pods(self, namespace: str, model: str) -> list[JSON]:
        return [
            pod
            for (ns, _), pod in self.cache.warm_pods.items.items()
            if ns == namespace
            and (pod["metadata"].get("labels") or {}).get(LABEL_POOL) == model
            and not pod["metadata"].get("deletionTimestamp")
        ]

    async def scale(self, pool: Pool) -> None:
        target = min(
            self.op.max_warm_workers, self.op.max_running_per_namespace, self.state.demand(pool)
        )
        retiring = {
            w.pod
            for w in self.state.registry.of_pool(pool.namespace, pool.model)
            if w.state
            in (
                "draining",
                "stopped",
            )
        }
        live = [
            job
            for job in self.pool_jobs(pool.namespace, pool.model)
            if not any(p.startswith(job["metadata"]["name"]) for p in retiring)
        ]
        missing = target - len(live)
        now = self.clock()
        if missing < 0:
            await self._drop_unstarted(pool, live, -missing)
            return
        if missing == 0 or now < pool.next_start:
            return
        for _ in range(missing):
            manifest = warm_job_manifest(self.op, pool.namespace, pool.model)
            try:
                # What a worker needs exists before it: the pool key it mounts, the consumer
                # it pulls from.
                if self.pool_keys is not None:
                    await self.pool_keys.sealing_key(pool.namespace)
                await self.ensure_consumer(pool)
                job = await self.kube.create(job_path(pool.namespace), manifest)
            except (KubeAPIError, NatsError) as exc:
                log.warning("warm worker not created", extra={"error": str(exc)})
                pool.next_start = now + 5
                return
            self.cache.warm_jobs.upsert(job)  # write-through: the next tick must count it
            metrics.WARM_WORKERS_STARTED.inc()
            log.info(
                "started a warm worker",
                extra={"job": job["metadata"]["name"], "model": pool.model},
            )

    async def _drop_unstarted(self, pool: Pool, live: list[JSON], surplus: int) -> None:
        """Workers no attempt needs any more that have not started (still Pending) go: a Pod
        waiting for a GPU would take one the moment it frees, to idle on it."""
        pending = {
            (p["metadata"].get("labels") or {}).get("job-name")
            for p in self.pool_pods(pool.namespace, pool.model)
            if (p.get("status") or {}).get("phase") == "Pending"
        }
        for job in live:
            name = job["metadata"]["name"]
            if surplus <= 0:
                return
            if name in pending:
                with contextlib.suppress(KubeAPIError):
                    await self.kube.delete(job_path(pool.namespace, name))
                surplus -= 1
                log.info("dropped a warm worker that never started", extra={"job": name})

    def load_failed(self, pool: Pool, error: str) -> None:
        pool.failures_in_a_row += 1
        pool.last_error = error
        delay = min(300.0, 5.0 * 2 ** (pool.failures_in_a_row - 1))
        pool.next_start = self.clock() + delay
        log.warning(
            "a warm worker's model did not load",
            extra={"model": pool.model, "in_a_row": pool.failures_in_a_row, "error": error},
        )

    def give_up_if_no_worker_can_load(self, pool: Pool) -> None:
        if pool.failures_in_a_row < LOAD_FAILURES_TO_GIVE_UP:
            return
        if self.clock() - self.started < HEARTBEAT_EXPIRY_SECONDS:
            return  # every live worker is heard within this; until then none is not news
        if any(
            w.state in ("idle", "busy")
            for w in self.state.registry.of_pool(pool.namespace, pool.model)
        ):
            return
        for _, name in list(pool.waiting):
            attempt = self.state.attempts.get((pool.namespace, name))
            if attempt is None or attempt.failed is not None:
                continue
            attempt.failed = {
                "reason": "ModelLoadFailed",
                "message": f"{MODEL_LOAD_FAILED_CODE}: no warm worker of {pool.model} came up "
                f"({pool.failures_in_a_row} tries): {pool.last_error}"[:900],
            }
            self.state.leave_waiting(pool, attempt)
            self.wake((attempt.namespace, attempt.edit_id))

    async def _replace_stuck_workers(self) -> None:
        """A worker still busy with an edit long past its deadline is deleted (and replaced),
        once: its Job is not deleted again while its Pod winds down."""
        now = self.clock()
        for key, when in list(self._deleted.items()):
            if now - when > DELETED_MEMORY_SECONDS:
                del self._deleted[key]
        for (namespace, pod), (beat, _) in list(self.state.registry.workers.items()):
            if beat.state not in ("busy", "draining") or not beat.edit_id or not beat.attempt:
                continue
            if (namespace, pod) in self._deleted:
                continue
            attempt = self.state.attempts.get((namespace, job_name(beat.edit_id, beat.attempt)))
            deadline = attempt.deadline if attempt else float(self.op.deadline_seconds)
            if now - beat.since < deadline + self.op.warm_stuck_grace_seconds:
                continue
            await self._delete_worker(namespace, pod, "stuck on one edit past its deadline")

    async def _delete_worker(self, namespace: str, pod_name: str, why: str) -> None:
        key = (namespace, pod_name)
        if key in self._deleting:
            return
        pod = self.cache.warm_pods.get(key) or {"metadata": {"labels": {}}}
        job = (pod["metadata"].get("labels") or {}).get("job-name")
        if not job:
            return
        self._deleting.add(key)
        try:
            await self.kube.delete(job_path(namespace, job))
            self._deleted[key] = self.clock()
            self.state.registry.forget(namespace, pod_name)
            metrics.WARM_WORKERS_REPLACED.inc()
            log.warning("deleted a warm worker", extra={"pod": pod_name, "why": why})
        finally:
            self._deleting.discard(key)

    async def _retire_outdated(self) -> None:
        """Workers from an older configuration finish their edit, then make room for new ones."""
        for (namespace, pod), (beat, _) in list(self.state.registry.workers.items()):
            if beat.state not in ("idle", "busy", "loading"):
                continue
            if beat.config_hash == config_hash(self.op, namespace, beat.model):
                continue
            await self._retire(namespace, pod, "configuration changed")

    async def yield_idle_gpus(self) -> None:
        """An idle worker gives its GPU up when another pool of its namespace has attempts
        waiting and a worker Pod that cannot be scheduled: no idle preview worker (or any
        other) holds a GPU that a waiting edit needs. It retires; its pool starts again later
        if work for it comes."""
        for (namespace, model), pool in list(self.state.pools.items()):
            if not pool.waiting or not any(
                unschedulable(p) is not None for p in self.pool_pods(namespace, model)
            ):
                continue
            for (other_ns, other_model), other in self.state.pools.items():
                if other_ns != namespace or other_model == model or other.waiting:
                    continue
                idle = [
                    w
                    for w in self.state.registry.of_pool(namespace, other_model)
                    if w.state == "idle"
                ]
                if idle:
                    await self._retire(namespace, idle[0].pod, f"a GPU for the {model} pool")
                    break

    async def _retire(self, namespace: str, pod: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._retired.get((namespace, pod), -1e9) < 10:
            return
        self._retired[(namespace, pod)] = now
        await self.control(namespace, pod, WorkerControl(action="retire", reason=reason[:300]))


def _before(stamp: str, moment: float) -> bool:
    """Whether the Kubernetes timestamp ``stamp`` (1 s resolution) is before ``moment``."""
    try:
        when = parse_stamp(stamp)
    except ValueError:
        return False
    return when is not None and when.timestamp() < moment
