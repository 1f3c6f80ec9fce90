"""The imperative shell around :func:`editflow.operator.decide.decide`.

Reads come from the watch-fed :class:`~editflow.operator.caches.ClusterCache`
(never a live list per reconcile), so a reconcile's cost does not grow with
the number of EditJobs in the cluster; the queue position and the namespace
cap come from a :class:`~editflow.operator.workindex.WorkIndex` kept from the
same events. Reconciles run from a rate-limited :class:`WorkQueue`
(de-duplicated keys, bounded workers, per-key exponential backoff on errors).

One reconcile carries out :func:`decide`'s answer in a crash-safe order:

1. stop an attempt that must go, 2. start the next attempt (a repeated start
is ``AlreadyExists``: the name is deterministic; the GPU slot is reserved in
the same synchronous step as the decision, so concurrent reconciles never
exceed the cap), 3. write status through the one
:class:`~editflow.operator.statuswriter.StatusWriter`, only when it changed (the final
phase carries the outcome to deliver), 4. deliver a final outcome from the EditJob
(:class:`~editflow.operator.delivery.EditJobDelivery`, recorded in one more write), or,
for an EditJob being deleted, hand it to the :class:`~editflow.operator.outbox.Outbox`
and release the finalizer. A crash between two steps is repaired by the next
reconcile, which sees the same state and makes the same decision.

The operator owns the EditJob finalizer (issue 21 item 3): the bridge creates EditJobs
with it, the reconciler adds it to a kubectl-applied one when accepting it, and removes
it once a deleted EditJob's outcome is delivered or in the outbox. Deletion is one more
way to cancel: :func:`decide` takes the same branch as for the cancel annotation.

A status write that changes only what is shown (queue position, message, worker,
conditions) without a phase change is made at most every
``queue_status_refresh_seconds`` per edit; the progress events carry it at once.

What wakes a reconcile: a change of the EditJob or of its Job or Pods; a
freed GPU slot (the head of the namespace's queue is woken); the decision's
own requeue (running attempts, retry backoff); a slow refresher of the queue
positions shown in status; and the retention sweep. Settled EditJobs
(finished, completion recorded) are not resynced at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from minio import Minio

from editflow.core.kube_events import event_body
from editflow.core.kubetime import parse_stamp as parse_time
from editflow.core.kubetime import stamp
from editflow.core.settings import OperatorSettings, Settings
from editflow.events.models import completion_event_id
from editflow.events.worker_contract import USAGE_NAMES
from editflow.operator import lanes, metrics
from editflow.operator.caches import ClusterCache, is_settled, is_slim
from editflow.operator.crd import GROUP, MODELS, VERSION, editjob_path
from editflow.operator.decide import Decision, Observed, decide, wants_resolution
from editflow.operator.delivery import EditJobDelivery
from editflow.operator.desk import DeskPublisher, lane_of
from editflow.operator.dispatch import Dispatcher
from editflow.operator.informer import JSON, Key, resource_version
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.names import FINALIZER, LABEL_EDITJOB
from editflow.operator.names import job_name as job_name_for
from editflow.operator.outbox import Outbox
from editflow.operator.phases import FINAL_PHASES, OUTCOMES, delivered, gpu_seconds
from editflow.operator.progress import ProgressPublisher
from editflow.operator.refusals import spec_refusal
from editflow.operator.statuswriter import StatusWriter, merged, status_changes
from editflow.operator.workindex import WorkIndex, job_finished
from editflow.operator.workqueue import WorkQueue

log = logging.getLogger("editflow.operator")

#: What a person is shown of an edit in flight; a write that changes only these (and not
#: the phase) is throttled: a moving queue would otherwise rewrite every queued EditJob,
#: and every running one would cost a write when its worker takes it.
DISPLAY_FIELDS = frozenset({"message", "conditions", "queuePosition", "workerPod"})


def waiting_for_cap(decision: Decision) -> bool:
    return any(
        c.get("reason") == "ConcurrencyCap" and c.get("status") == "False"
        for c in decision.status.get("conditions") or []
    )


def finalizer_patch(editjob: JSON, *, present: bool) -> JSON | None:
    """A merge patch that adds (``present``) or removes the operator's finalizer, or None.

    The whole list is written with the resourceVersion it was read at, so a finalizer
    another controller added meanwhile is a 409 (and a retry), never lost.
    """
    meta = editjob["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if (FINALIZER in finalizers) == present:
        return None
    wanted = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
    return {"metadata": {"finalizers": wanted, "resourceVersion": meta.get("resourceVersion")}}


def cost_labels(spec: JSON, settings: OperatorSettings) -> tuple[str, str, str]:
    """(department, usage, model) label values, each from a bounded set."""
    department = (spec.get("oa") or {}).get("department")
    if not department:
        department = "none"
    elif department not in settings.metrics_departments:
        department = "other"
    usage = spec.get("usage") or "default"
    model = spec.get("model") or settings.default_model
    return (
        department,
        usage if usage in USAGE_NAMES or usage == "default" else "other",
        model if model in MODELS else "other",
    )


class Reconciler:
    """Drives EditJobs; one instance per operator process (on the leader)."""

    def __init__(
        self,
        settings: Settings,
        kube: AsyncKube,
        *,
        cache: ClusterCache,
        dispatcher: Dispatcher,
        outbox: Outbox,
        s3: Minio,
        writer: StatusWriter,
        delivery: EditJobDelivery,
        progress: ProgressPublisher | None = None,
        desk: DeskPublisher | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.op = settings.operator
        self.kube = kube
        self.cache = cache
        self.dispatcher = dispatcher
        self.outbox = outbox
        self.s3 = s3
        #: The one writer of EditJob status (shared with the delivery).
        self.writer = writer
        #: Final outcomes go out from their EditJobs, beside the reconciles.
        self.delivery = delivery
        #: Queued (with its place) and running, for the OA side and the gateway (best effort).
        self.progress = progress
        #: The designer's desk read model (tickets in NATS KV), from the EditJobs written here.
        self.desk = desk
        self.now = now
        self.index = WorkIndex()
        self.queue: WorkQueue[Key] = WorkQueue(
            base_delay=self.op.error_backoff_seconds, max_delay=self.op.error_backoff_max_seconds
        )
        self._written_at: dict[Key, float] = {}
        #: EditJobs whose finalizer this process released: their DELETED event is no news.
        self._released: set[Key] = set()
        self._refresh_due: set[Key] = set()
        self._pumps: set[str] = set()
        self._events: set[asyncio.Task[None]] = set()
        self._event_slots = asyncio.Semaphore(8)
        cache.editjobs.listeners.append(self._editjob_changed)
        cache.jobs.listeners.append(self._job_changed)
        cache.pods.listeners.append(self._pod_changed)
        self.last_sweep = time.monotonic()

    # -- what wakes a reconcile ------------------------------------------------------
    def _lane(self, key: Key, obj: JSON | None) -> Key:
        """The work index's key of an EditJob or Job: its lane of the namespace cap."""
        return (lanes.lane(key[0], obj, self.op), key[1])

    def _editjob_changed(self, key: Key, old: JSON | None, new: JSON | None) -> None:
        self.index.editjob_changed(self._lane(key, new or old), old, new)
        self._pump(key[0])
        if new is None:
            if old is not None and key not in self._released:
                self._spawn(self.forget_unfinalized(old))
            self._released.discard(key)
            if self.progress is not None:
                self.progress.forget(key)
            if self.desk is not None:
                self.desk.gone(key)
            self.queue.discard(key)
            self._written_at.pop(key, None)
            self._refresh_due.discard(key)
            return
        deleting = bool(new["metadata"].get("deletionTimestamp"))
        if (
            old is not None
            and is_settled(old)
            and is_settled(new)
            and not wants_resolution(new)
            and not deleting  # a settled EditJob deleted: only its finalizer holds it
        ):
            return  # settled and nothing asked of it: no resync of finished EditJobs
        self.queue.add(key)

    def _job_changed(self, key: Key, old: JSON | None, new: JSON | None) -> None:
        was_running = old is not None and not job_finished(old)
        self.index.job_changed(self._lane(key, new or old), old, new)
        obj = new or old
        owner = ((obj or {}).get("metadata", {}).get("labels") or {}).get(LABEL_EDITJOB)
        if owner:
            self.queue.add((key[0], owner))
        if was_running and (new is None or job_finished(new)):
            self._pump(key[0])

    def _pod_changed(self, key: Key, old: JSON | None, new: JSON | None) -> None:
        obj = new or old
        owner = ((obj or {}).get("metadata", {}).get("labels") or {}).get(LABEL_EDITJOB)
        if owner:
            self.queue.add((key[0], owner))

    def _pump(self, namespace: str) -> None:
        """Soon: wake as many of the queue's head as there are free slots (once per tick)."""
        if namespace in self._pumps:
            return
        self._pumps.add(namespace)
        try:
            asyncio.get_running_loop().call_soon(self._do_pump, namespace)
        except RuntimeError:  # no loop (a unit test feeding the caches directly)
            self._pumps.discard(namespace)

    def _do_pump(self, namespace: str) -> None:
        self._pumps.discard(namespace)
        for lane in lanes.lanes(namespace, self.op):
            free = lanes.cap(lane, self.op) - self.index.in_flight(lane)
            for _, name in self.index.head(lane, free, self.now()):
                self.queue.add((namespace, name))

    # -- loops -------------------------------------------------------------------------
    async def run(self) -> None:
        """Workers, the queue-position refresher and the retention sweep (until cancelled)."""
        await self.cache.wait_synced()
        for key in list(self.cache.editjobs.items):
            editjob = self.cache.editjobs.get(key)
            if editjob is not None and not is_settled(editjob):
                self.queue.add(key)
        for namespace in self.cache.namespaces:
            self._pump(namespace)
        log.info("caches synced", extra=self.cache.sizes())
        await asyncio.gather(
            self._load_desk(),  # beside the workers: a slow NATS must not hold up the edits
            self.queue.run_workers(self.op.reconcile_workers, self.work),
            self._refresh_loop(),
            self._sweep_loop(),
        )

    async def _load_desk(self) -> None:
        """Which tickets exist; those of EditJobs deleted while no operator ran are deleted."""
        if self.desk is None:
            return
        try:
            await self.desk.load(self.cache.namespaces)
        except Exception as exc:  # the desk is a view: the edits go on without it
            log.warning("the desk's tickets could not be read: %s", exc)
            return
        self.desk.prune(self.cache.editjobs.items)
        await self._backfill_desk()

    async def _backfill_desk(self) -> None:
        """Tickets the read model lacks (a lost bucket, an upgrade from before the desk):
        written now rather than on the edit's next change, which a finished edit never has.
        A settled EditJob is slim in the cache, so each one missing is read whole once: the
        cost follows the open tickets, never the number of EditJobs."""
        assert self.desk is not None
        missing = [
            (key, editjob)
            for key, editjob in list(self.cache.editjobs.items.items())
            if lane_of(editjob) is not None and not self.desk.knows(key)
        ]
        for (namespace, name), editjob in missing:
            if is_slim(editjob):
                try:
                    editjob = await self.kube.get(editjob_path(namespace, name))
                except KubeAPIError as exc:
                    if exc.status == 404:
                        continue
                    raise
            self.desk.update(editjob)
        if missing:
            log.info("desk: wrote the tickets the read model lacked", extra={"count": len(missing)})

    async def _refresh_loop(self) -> None:
        """Queue positions in status follow the queue at most every few seconds."""
        while True:
            await asyncio.sleep(self.op.queue_status_refresh_seconds)
            now = self.now()
            for lane in self.index.namespaces():
                namespace = lanes.namespace_of(lane)
                for _, name in self.index.head(lane, self.op.queue_status_refresh_batch, now):
                    self._refresh_due.add((namespace, name))
                    self.queue.add((namespace, name))
                metrics.QUEUE_LENGTH.labels(namespace).set(self.index.queue_length(namespace))
                metrics.IN_FLIGHT.labels(namespace).set(self.index.in_flight(namespace))
            metrics.WORKQUEUE_DEPTH.set(len(self.queue))

    async def _sweep_loop(self) -> None:
        """Settled EditJobs past retention are deleted; unrecorded outcomes are retried."""
        while True:
            await asyncio.sleep(self.op.sweep_seconds)
            self.sweep()

    def _retention_horizon(self) -> str:
        """EditJobs that finished at or before this stamp are past retention."""
        horizon = self.now() - timedelta(seconds=self.op.retention_seconds)
        return stamp(horizon)

    def sweep(self) -> int:
        stamp = self._retention_horizon()
        woken = 0
        for key, editjob in list(self.cache.editjobs.items.items()):
            status = editjob.get("status") or {}
            if status.get("phase") not in FINAL_PHASES:
                continue
            finished = status.get("finishedAt") or ""
            if not delivered(status) or (finished and finished <= stamp):
                self.queue.add(key)
                woken += 1
        self.last_sweep = time.monotonic()
        return woken

    async def work(self, key: Key) -> None:
        try:
            requeue = await self.reconcile(*key)
        except Exception as exc:
            delay = self.queue.add_rate_limited(key)
            metrics.RECONCILE_ERRORS.inc()
            log.warning(
                "reconcile failed (%s); retrying in %.1fs",
                exc,
                delay,
                extra={"editjob": "/".join(key), "failures": self.queue.failures(key)},
                exc_info=not isinstance(exc, KubeAPIError),
            )
            return
        self.queue.forget(key)
        if requeue is not None:
            self.queue.add_after(key, requeue)

    # -- one EditJob -------------------------------------------------------------
    def _count_finished(self, editjob: JSON, phase: str) -> None:
        """GPU-seconds and edits by department, usage and model (bounded label values)."""
        spec, status = editjob["spec"], editjob.get("status") or {}
        labels = cost_labels(spec, self.op)
        metrics.EDITS_FINISHED.labels(*labels, phase).inc()
        if spent := gpu_seconds(status):
            metrics.GPU_SECONDS.labels(*labels).inc(spent)
        verdict = (status.get("quality") or {}).get("verdict")
        if verdict in ("ok", "no_visible_change", "global_change"):
            metrics.QUALITY_VERDICTS.labels(verdict).inc()
        began = parse_time(editjob["metadata"].get("creationTimestamp"))
        if began is not None:
            metrics.EDIT_SECONDS.labels(phase).observe(
                max(0.0, (self.now() - began).total_seconds())
            )

    async def reconcile(self, namespace: str, name: str) -> float | None:
        with metrics.RECONCILE_SECONDS.time():
            return await self._reconcile((namespace, name))

    async def _reconcile(self, key: Key) -> float | None:
        editjob = self.cache.editjobs.get(key)
        if editjob is None:
            return None
        if is_slim(editjob):
            if editjob["metadata"].get("deletionTimestamp"):
                # Settled: delivered long ago; nothing but the finalizer holds it.
                await self._set_finalizer(key, editjob, present=False)
                return None
            if not wants_resolution(editjob):
                return await self._expire_if_due(key, editjob)
            # The rare settled EditJob that needs its spec again: read it whole.
            editjob = await self.kube.get(editjob_path(*key))
            if editjob is None:
                return None
        obs = await self.observe(key, editjob)
        decision = decide(obs, self.op)
        if decision.create_job is not None:
            job = job_name_for(key[1], decision.create_job)
            lane = lanes.lane(key[0], editjob, self.op)
            if not self.index.reserve(lane, job, lanes.cap(lane, self.op)):
                return 1.0  # another reconcile took the last slot a moment ago
        await self.apply(key, editjob, decision)
        return self._requeue(editjob, decision)

    async def _expire_if_due(self, key: Key, editjob: JSON) -> None:
        """A settled EditJob has only one thing left to happen: retention."""
        finished = (editjob.get("status") or {}).get("finishedAt") or ""
        if finished and finished <= self._retention_horizon():
            await self.kube.delete(editjob_path(*key))
            log.info("retention: deleted finished editjob", extra={"editjob": "/".join(key)})
        return None

    def _requeue(self, editjob: JSON, decision: Decision) -> float | None:
        if decision.delete_editjob or decision.release_finalizer:
            return None
        after = merged(editjob, decision.status)["status"]
        if after.get("phase") in FINAL_PHASES:
            if delivered(after):
                return None  # settled: retention is the sweep's job
            # Looked at again until its delivery is recorded (or at a webhook's next try).
            return decision.requeue_after or self.op.delivery_recheck_seconds
        if waiting_for_cap(decision):
            return self.op.queue_safety_seconds  # a freed slot wakes the head of the queue
        return decision.requeue_after

    async def observe(self, key: Key, editjob: JSON) -> Observed:
        namespace, name = key
        status = editjob.get("status") or {}
        phase = status.get("phase") or ""
        now = self.now()
        attempt = None
        in_flight = queued_ahead = 0
        cap = None
        completion_id = None
        job_name = status.get("jobName")
        if job_name and phase not in FINAL_PHASES:
            # The attempt as its dispatcher sees it, its result read from its own channel.
            attempt = await self.dispatcher.observe(editjob)
        elif phase in ("", "Pending", "Queued"):
            lane = lanes.lane(namespace, editjob, self.op)
            in_flight = self.index.in_flight(lane)
            queued_ahead = self.index.queued_ahead((lane, name), editjob, now)
            cap = lanes.cap(lane, self.op)
        refusal = None
        if phase == "":
            refused = spec_refusal(editjob.get("spec") or {}, self.settings)
            refusal = refused.info() if refused is not None else None
        if phase in FINAL_PHASES:
            completion_id = completion_event_id(
                namespace=namespace,
                name=name,
                uid=editjob["metadata"]["uid"],
                status=OUTCOMES[phase],
            )
        return Observed(
            editjob=editjob,
            now=now,
            attempt=attempt,
            words=self.dispatcher.words,
            in_flight=in_flight,
            queued_ahead=queued_ahead,
            completion_id=completion_id,
            refusal=refusal,
            cap=cap,
        )

    # -- acting --------------------------------------------------------------------
    def _status_patch(self, key: Key, editjob: JSON, decision: Decision) -> JSON | None:
        """The status to write, or None when nothing changed or only what is shown changed
        and it was written a moment ago (progress events carry that at once)."""
        current = editjob.get("status") or {}
        patch = dict(decision.status)
        changed = status_changes(current, patch)
        if not changed:
            return None
        same_phase = patch.get("phase", current.get("phase")) == current.get("phase")
        throttled = (
            same_phase
            and current.get("phase") in ("Queued", "Running")
            and changed <= DISPLAY_FIELDS
            and key not in self._refresh_due
        )
        if throttled:
            last = self._written_at.get(key, 0.0)
            if time.monotonic() - last < self.op.queue_status_refresh_seconds:
                return None
        return patch

    async def apply(self, key: Key, editjob: JSON, decision: Decision) -> None:
        namespace, name = key
        where = {"editjob": f"{namespace}/{name}"}
        deleting = bool(editjob["metadata"].get("deletionTimestamp"))
        before = (editjob.get("status") or {}).get("phase")
        if not before and not deleting:
            # A kubectl-applied EditJob (the bridge creates them with it): deleting it
            # must still cancel it and report, so the finalizer goes on before it runs.
            editjob = await self._set_finalizer(key, editjob, present=True) or editjob
        if decision.delete_job:
            await self.dispatcher.stop(namespace, decision.delete_job)
        if decision.create_job is not None:
            job = job_name_for(name, decision.create_job)
            try:
                await self.dispatcher.start(editjob, decision.create_job)
            except BaseException:
                self.index.release(lanes.lane(namespace, editjob, self.op), job)
                raise
        patch = self._status_patch(key, editjob, decision)
        self._refresh_due.discard(key)
        after = merged(editjob, decision.status)
        if patch is not None and not deleting:  # a vanishing object: its outcome says it all
            written = await self.writer.write(editjob, patch)
            if written is None:
                return  # deleted meanwhile
            editjob = after = written
            self._written_at[key] = time.monotonic()
        elif not deleting:
            self.writer.shown(after)  # what changed reaches people as a progress event
        phase = decision.status.get("phase")
        if phase and phase != before:
            metrics.PHASES.labels(phase).inc()
            if phase in FINAL_PHASES:
                self._count_finished(after, phase)
            log.info(
                "%s -> %s: %s",
                before or "new",
                phase,
                decision.status.get("message") or "",
                extra={**where, "attempt": decision.status.get("attempts")},
            )
        for kind, reason, message in decision.events:
            self.post_event(after, kind, reason, message)
        self.outbox.alert_if_needed(after, decision)
        if decision.release_finalizer:
            if decision.publish_completion:
                # Deleted before its outcome was delivered: the outbox keeps it (issue 21
                # item 2: the only case an EditOutcome is made).
                await self.outbox.hold(after, review=decision.publish_review)
            await self._set_finalizer(key, editjob, present=False)
            return
        if decision.publish_completion:
            self.delivery.submit(editjob, review=decision.publish_review)
        if decision.delete_editjob:
            await self.kube.delete(editjob_path(namespace, name))
            log.info("retention: deleted finished editjob", extra=where)

    async def _set_finalizer(self, key: Key, editjob: JSON, *, present: bool) -> JSON | None:
        """Add or remove the operator's finalizer (nothing when it already is so)."""
        patch = finalizer_patch(editjob, present=present)
        if patch is None:
            return None
        try:
            written = await self.kube.patch(editjob_path(*key), patch)
        except KubeAPIError as exc:
            if exc.status == 404:
                return None
            raise
        if not present:
            self._released.add(key)
            log.info("finalizer released", extra={"editjob": "/".join(key)})
            if written["metadata"].get("deletionTimestamp") and not written["metadata"].get(
                "finalizers"
            ):
                # No finalizer left: the apiserver deleted it with this write. Forgotten now
                # (never taken back by a later write-through), not reconciled again.
                self.cache.editjobs.remove(key, version=resource_version(written))
                return written
        self.cache.editjobs.upsert(written)
        return written

    async def forget_unfinalized(self, editjob: JSON) -> None:
        """An EditJob deleted without the operator's finalizer (kubectl-applied, deleted before
        it was accepted) is gone already: its cancellation still reaches the outbox."""
        status = editjob.get("status") or {}
        if (
            is_slim(editjob)
            or delivered(status)
            or FINALIZER in (editjob["metadata"].get("finalizers") or [])
        ):
            return
        meta = editjob["metadata"]
        gone = {**editjob, "metadata": {**meta, "deletionTimestamp": stamp(self.now())}}
        # Not observed through the dispatcher: it would take the attempt over (warm mode).
        decision = decide(Observed(gone, self.now(), words=self.dispatcher.words), self.op)
        if decision.delete_job:
            await self.dispatcher.stop(meta["namespace"], decision.delete_job)
        if decision.publish_completion:
            after = merged(gone, decision.status)
            await self.outbox.hold(after, review=decision.publish_review)

    def post_event(self, editjob: JSON, kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event for `kubectl describe`, posted beside the reconcile (bounded)."""
        self._spawn(self._post_event(editjob, kind, reason, message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the reconciles, kept referenced until it ends."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (a unit test feeding the caches directly)
            work.close()
            return
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _post_event(self, editjob: JSON, kind: str, reason: str, message: str) -> None:
        meta = editjob["metadata"]
        body = event_body(
            editjob,
            api_version=f"{GROUP}/{VERSION}",
            kind="EditJob",
            event_type=kind,
            reason=reason,
            message=message,
            component="editflow-operator",
            instance="editflow-operator",
            now=self.now(),
        )
        async with self._event_slots:
            try:
                await self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
            except (KubeAPIError, OSError, httpx.HTTPError, RuntimeError) as exc:
                # RuntimeError: the client was closed under an Event still in flight (shutdown).
                log.warning("could not post event: %s", exc)
