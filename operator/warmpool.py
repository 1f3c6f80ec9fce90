"""Warm dispatch (``worker.mode: warm``): attempts go to workers that keep the model loaded.

Per namespace and model the operator keeps 0..N warm worker Jobs
(:mod:`editflow.operator.warmjobs`, ``editflow worker serve``). N follows the
attempts waiting and running, bounded by ``max_warm_workers`` and the namespace's
cap; a worker exits by itself after ``warm_idle_seconds`` without work, so an idle
pool shrinks to zero.

An attempt is one message on the JetStream work queue (``Nats-Msg-Id`` per
attempt, so a repeated hand-out is dropped as a duplicate) and its deliveries.
The operator hands attempts out itself, in the namespace queue's order (priority,
then age), and only as many as there are idle workers it hears from
(:class:`~editflow.events.worker_contract.WorkerHeartbeat`): the work queue is
never deep enough to reorder anything. The outcome is the worker's result JSON,
heard on the result subject (and read from S3 after an operator restart).

What the reconciler sees is the same :class:`~editflow.operator.dispatch.AttemptView`
as in Job mode: a Job-shaped record whose conditions say Complete, or Failed with
``DeadlineExceeded`` / ``ModelLoadFailed``, and the worker's Pod while it runs the
attempt. So :func:`~editflow.operator.decide.decide` is one function for both
modes, with the same phases, conditions, retries and timeouts.

Guarantees and where they are kept:

* deadline: an attempt handed out longer than its deadline is reported failed
  (``DeadlineExceeded``), its message deleted; a worker still busy with it past
  deadline + ``warm_stuck_grace_seconds`` is deleted, and the pool replaces it;
* pending timeout: while no worker of the pool is running, an attempt waits with
  the pool's unschedulable Pod in its view (``decide`` ends it after the pending
  timeout);
* cancel: :meth:`WarmDispatcher.stop` forgets the attempt, deletes its message if
  it was not taken yet; a result that arrives later names an attempt nobody waits
  for and is dropped;
* a worker killed mid-edit: JetStream redelivers after ``ack_wait`` to another
  worker; the same attempt writes the same result key, so it never yields two
  results; past ``warm_max_deliveries`` the worker that receives it reports it as
  poison (NeedsReview);
* a model that fails to load: the pool backs off between worker starts, and after
  two failed starts in a row with no worker up, waiting attempts fail with the
  reason (retried with backoff, then NeedsReview);
* upgrades: a worker whose configuration hash is not the current one is asked to
  retire after its edit (control subject), and a new one started.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.errors import Error as NatsError
from pydantic import ValidationError

from editflow.core.kubetime import parse_stamp as parse_time
from editflow.core.kubetime import stamp as _stamp
from editflow.core.sealing import attempt_token, seal, token_key, token_matches
from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import (
    HEARTBEAT_EXPIRY_SECONDS,
    MODEL_LOAD_FAILED_CODE,
    RESULT_SUBJECT_PREFIX,
    WORK_STREAM,
    WORKER_STATUS_PREFIX,
    WorkerControl,
    WorkerHeartbeat,
    WorkerResult,
    work_msg_id,
    work_subject,
    worker_control_subject,
    worker_status_subject,
)
from editflow.events.workqueue import ensure_work_consumer
from editflow.operator import metrics
from editflow.operator.caches import ClusterCache, job_path
from editflow.operator.credentials import AttemptCredentialMinter, CredentialMintError
from editflow.operator.dispatch import AttemptView
from editflow.operator.jobspec import worker_request
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import LABEL_POOL, job_name
from editflow.operator.podstate import exit_code, unschedulable
from editflow.operator.poolkeys import PoolKeys
from editflow.operator.warmjobs import config_hash, warm_job_manifest
from editflow.operator.workindex import SortKey, job_finished, sort_key

log = logging.getLogger(__name__)

Key = tuple[str, str]
PoolKey = tuple[str, str]  # (namespace, model)

#: What a warm worker's exit code says (editflow.core.errors.ExitCode).
EXIT_MEANINGS = {
    70: "NATS or another upstream unreachable: check the NATS URL and credentials",
    71: "the model did not load",
    72: "an unexpected error",
}
#: Failed worker starts in a row (no worker up meanwhile) after which waiting attempts fail.
LOAD_FAILURES_TO_GIVE_UP = 2
TICK_SECONDS = 0.5


def _record(name: str, created: float, condition: dict[str, str] | None = None) -> JSON:
    """The Job-shaped view of a warm attempt that :func:`decide` reads."""
    status: JSON = {}
    if condition is not None:
        status["conditions"] = [{"status": "True", **condition}]
    return {"metadata": {"name": name, "creationTimestamp": _stamp(created)}, "status": status}


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


class WarmDispatcher:
    """The :class:`~editflow.operator.dispatch.Dispatcher` of warm mode (module docstring)."""

    def __init__(
        self,
        kube: AsyncKube,
        cache: ClusterCache,
        op: OperatorSettings,
        *,
        nats: Any,
        wake: Callable[[Key], None] = lambda key: None,
        clock: Callable[[], float] = time.time,
        minter: AttemptCredentialMinter | None = None,
        pool_keys: PoolKeys | None = None,
        token_secret: str = "",
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.op = op
        self.nc = nats
        self.js = nats.jetstream() if nats is not None else None
        self.wake = wake
        self.clock = clock
        #: Per-attempt credentials (operator.attempt_credentials): minted and sealed at
        #: hand-out. Without them warm workers read S3 with the namespace's shared key.
        self.minter = minter
        self.pool_keys = pool_keys
        #: Keys the per-attempt result tokens (sealing.attempt_token), from the operator's S3
        #: secret: derived once, not per hand-out and per result.
        self.token_key = token_key(token_secret)
        self.registry = WorkerRegistry()
        self.attempts: dict[Key, WarmAttempt] = {}
        self.pools: dict[PoolKey, Pool] = {}
        #: Results heard for attempts this process does not (yet) own: an operator restart.
        #: Bounded and expiring (UNCLAIMED_LIMIT, UNCLAIMED_SECONDS): a cancelled attempt's
        #: late result, or a result of an EditJob gone meanwhile, is never claimed.
        self.unclaimed_results: OrderedDict[Key, tuple[WorkerResult, float]] = OrderedDict()
        self._retired: dict[Key, float] = {}
        self._deleting: set[Key] = set()
        self._kick = asyncio.Event()
        self._subscriptions: list[Any] = []
        #: Worker Jobs whose failure was already counted (by heartbeat or by the Job).
        self._failures_counted: set[Key] = set()
        #: Worker Jobs whose worker was up (idle or busy) once: a later death is a crash, not
        #: a model that does not load, and does not hold the pool back.
        self._were_up: set[Key] = set()
        #: When this process began: a worker Job that had failed before is an earlier
        #: process's news (counted then), and an empty registry right after a start only
        #: means no heartbeat was heard yet.
        self.started = clock()
        cache.warm_jobs.listeners.append(self._warm_job_changed)

    # -- the Dispatcher seam -------------------------------------------------------
    def observe(self, namespace: str, name: str, editjob: JSON | None = None) -> AttemptView:
        key = (namespace, name)
        attempt = self.attempts.get(key)
        if attempt is None and editjob is not None:
            attempt = self._adopt(editjob, name)
        if attempt is None:
            return AttemptView(job=None, pods=())
        if attempt.result is None and key in self.unclaimed_results:
            attempt.result = self.unclaimed_results.pop(key)[0]
        if attempt.result is not None:
            return AttemptView(
                job=_record(name, attempt.created, {"type": "Complete", "reason": "Completed"}),
                pods=(),
                result=attempt.result,
            )
        check, attempt.check_result = attempt.check_result, False
        if attempt.failed is not None:
            return AttemptView(
                job=_record(name, attempt.created, {"type": "Failed", **attempt.failed}), pods=()
            )
        worker = self.registry.running(namespace, attempt.edit_id, attempt.attempt)
        if worker is not None:
            pod = self.cache.warm_pods.get((namespace, worker.pod))
            return AttemptView(
                job=_record(name, attempt.created), pods=(pod,) if pod else (), check_result=check
            )
        return AttemptView(
            job=_record(name, attempt.created),
            pods=self._waiting_pods(attempt),
            check_result=check,
        )

    async def start(self, editjob: JSON, attempt: int) -> str:
        meta = editjob["metadata"]
        name = job_name(meta["name"], attempt)
        key = (meta["namespace"], name)
        if key not in self.attempts:
            self._enqueue(self._new_attempt(editjob, attempt))
        return name

    async def stop(self, namespace: str, name: str) -> bool:
        attempt = self.attempts.pop((namespace, name), None)
        self.unclaimed_results.pop((namespace, name), None)
        if attempt is None:
            return False
        worker = self.registry.running(namespace, attempt.edit_id, attempt.attempt)
        if worker is not None:  # running: the worker stops it and frees the GPU (#20 §6)
            await self._control(
                namespace,
                worker.pod,
                WorkerControl(
                    action="cancel",
                    reason="the edit was cancelled",
                    edit_id=attempt.edit_id,
                    attempt=attempt.attempt,
                ),
            )
        pool = self.pools.get((namespace, attempt.model))
        if pool is not None:
            self._leave_waiting(pool, attempt)
        if attempt.seq is not None:
            await self._delete_message(attempt)
        self._kick.set()
        return True

    def record_result(self, namespace: str, name: str, result: WorkerResult) -> None:
        """A result found elsewhere (S3, after a restart) for an attempt this process owns."""
        attempt = self.attempts.get((namespace, name))
        if attempt is not None and result.attempt == attempt.attempt:
            attempt.result = result

    # -- attempts ---------------------------------------------------------------------
    def _new_attempt(self, editjob: JSON, number: int) -> WarmAttempt:
        meta, spec = editjob["metadata"], editjob["spec"]
        request = worker_request(editjob, number, self.op)
        return WarmAttempt(
            namespace=meta["namespace"],
            name=job_name(meta["name"], number),
            edit_id=meta["name"],
            attempt=number,
            model=request.model,
            order=sort_key(editjob),
            # exclude_unset: the worker tells an explicit field from a default (profiles).
            payload=request.model_dump_json(exclude_unset=True).encode(),
            msg_id=work_msg_id(meta["namespace"], request),
            deadline=float(spec.get("deadlineSeconds") or self.op.deadline_seconds),
            created=self.clock(),
            editjob=editjob if self.minter is not None else None,
        )

    def _adopt(self, editjob: JSON, name: str) -> WarmAttempt | None:
        """An attempt a previous operator process started: take it over where it is.

        Handing it out again is safe: the message id is the attempt's, so JetStream drops
        the repeat while the first is still known (the duplicate window), and a worker
        busy with it keeps it. A result written while no operator listened is in S3.
        """
        status = editjob.get("status") or {}
        number = int(status.get("attempts") or 0)
        if number < 1 or status.get("jobName") != name:
            return None
        attempt = self._new_attempt(editjob, number)
        with contextlib.suppress(ValueError):
            if started := parse_time(status.get("startedAt")):
                attempt.created = started.timestamp()
        attempt.check_result = True
        self._enqueue(attempt)
        log.info("adopted a warm attempt", extra={"editjob": editjob["metadata"]["name"]})
        return attempt

    def _enqueue(self, attempt: WarmAttempt) -> None:
        self.attempts[(attempt.namespace, attempt.name)] = attempt
        pool = self._pool(attempt.namespace, attempt.model)
        bisect.insort(pool.waiting, (attempt.order, attempt.name))
        self._kick.set()

    def _leave_waiting(self, pool: Pool, attempt: WarmAttempt) -> None:
        entry = (attempt.order, attempt.name)
        i = bisect.bisect_left(pool.waiting, entry)
        if i < len(pool.waiting) and pool.waiting[i] == entry:
            pool.waiting.pop(i)

    def _pool(self, namespace: str, model: str) -> Pool:
        return self.pools.setdefault((namespace, model), Pool(namespace, model))

    def _waiting_pods(self, attempt: WarmAttempt) -> tuple[JSON, ...]:
        """While no worker can take it: the pool's Pods that cannot start, for decide()."""
        pods = []
        for pod in self._pool_pods(attempt.namespace, attempt.model):
            if (pod.get("status") or {}).get("phase") != "Pending":
                continue
            # The wait counts from the attempt, not from a Pod that was pending before it.
            meta = dict(pod["metadata"])
            meta["creationTimestamp"] = max(
                meta.get("creationTimestamp") or "", _stamp(attempt.created)
            )
            pods.append({**pod, "metadata": meta})
        return tuple(pods)

    # -- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        """Heartbeats and results in, hand-outs, pool sizes and replacements out."""
        self._subscriptions = [
            await self.nc.subscribe(f"{WORKER_STATUS_PREFIX}.>", cb=self._on_heartbeat),
            await self.nc.subscribe(f"{RESULT_SUBJECT_PREFIX}.>", cb=self._on_result),
        ]
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), TICK_SECONDS)
                self._kick.clear()
                try:
                    await self.tick()
                except Exception:
                    log.exception("warm dispatch tick failed; retrying")
                    await asyncio.sleep(1.0)
        finally:
            for sub in self._subscriptions:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def tick(self) -> None:
        for beat in self.registry.expire():
            self._worker_gone(beat)
        for pool in list(self.pools.values()):
            await self._hand_out(pool)
            await self._scale(pool)
            self._give_up_if_no_worker_can_load(pool)
        self._check_deadlines()
        await self._replace_stuck_workers()
        await self._retire_outdated()
        await self._yield_idle_gpus()
        self._export_metrics()

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            beat = WorkerHeartbeat.model_validate_json(msg.data)
        except ValidationError:
            log.warning("unreadable worker heartbeat", extra={"subject": msg.subject})
            return
        if beat.namespace not in self.cache.namespaces:
            return
        if msg.subject != worker_status_subject(beat.namespace, beat.model):
            # A beat about one namespace's pool published on another's subject: forged.
            log.warning(
                "worker heartbeat refused: its subject and body disagree",
                extra={"subject": msg.subject, "namespace": beat.namespace, "pod": beat.pod},
            )
            return
        previous = self.registry.heard(beat)
        pool = self._pool(beat.namespace, beat.model)
        if beat.state == "failed":
            job = self._job_of_pod(beat.namespace, beat.pod)
            if job is None or (beat.namespace, job) not in self._failures_counted:
                if job is not None:
                    self._failures_counted.add((beat.namespace, job))
                self._load_failed(pool, beat.error or "the model did not load")
            else:
                pool.last_error = beat.error or pool.last_error
            self.registry.forget(beat.namespace, beat.pod)
        elif beat.state in ("idle", "busy"):
            pool.failures_in_a_row = 0
            if (job := self._job_of_pod(beat.namespace, beat.pod)) is not None:
                self._were_up.add((beat.namespace, job))
        if beat.state == "stopped":
            self.registry.forget(beat.namespace, beat.pod)
        changed = previous is None or (previous.state, previous.edit_id, previous.attempt) != (
            beat.state,
            beat.edit_id,
            beat.attempt,
        )
        if changed:
            for edit_id, number in {
                (b.edit_id, b.attempt) for b in (previous, beat) if b and b.edit_id and b.attempt
            }:
                self.wake((beat.namespace, edit_id))
                attempt = self.attempts.get((beat.namespace, job_name(edit_id, number)))
                if attempt is not None and beat.edit_id == edit_id and attempt.seq is None:
                    # Taken before this process handed it out: an attempt adopted after a
                    # restart whose first hand-out a worker already runs.
                    attempt.published_at = attempt.published_at or attempt.created
                    self._leave_waiting(self._pool(beat.namespace, attempt.model), attempt)
            self._kick.set()

    async def _on_result(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        namespace = parts[len(RESULT_SUBJECT_PREFIX.split("."))] if len(parts) > 4 else ""
        try:
            result = WorkerResult.model_validate_json(msg.data)
        except ValidationError:
            log.warning("unreadable worker result", extra={"subject": msg.subject})
            return
        # The subject names the namespace, the payload the attempt, and only the worker the
        # attempt was handed to holds its token: all three must agree (issue 20 §2).
        if not token_matches(self._token(namespace, result.edit_id, result.attempt), result.token):
            metrics.WARM_RESULTS_REFUSED.inc()
            log.warning(
                "worker result refused: its token does not match the attempt",
                extra={
                    "subject": msg.subject,
                    "edit_id": result.edit_id,
                    "attempt": result.attempt,
                },
            )
            return
        key = (namespace, job_name(result.edit_id, result.attempt))
        attempt = self.attempts.get(key)
        if attempt is not None and attempt.attempt == result.attempt:
            attempt.result = result
        elif namespace in self.cache.namespaces:
            self._keep_unclaimed(key, result)
        self.wake((namespace, result.edit_id))
        self._kick.set()

    def _keep_unclaimed(self, key: Key, result: WorkerResult) -> None:
        now = time.monotonic()
        self.unclaimed_results[key] = (result, now)
        self.unclaimed_results.move_to_end(key)
        while self.unclaimed_results:
            oldest, (_, at) = next(iter(self.unclaimed_results.items()))
            if len(self.unclaimed_results) <= UNCLAIMED_LIMIT and now - at <= UNCLAIMED_SECONDS:
                break
            del self.unclaimed_results[oldest]

    def _warm_job_changed(self, key: Key, old: JSON | None, new: JSON | None) -> None:
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
            self._load_failed(self._pool(key[0], model), self._why_failed(key))
        self._kick.set()

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

    def _worker_gone(self, beat: WorkerHeartbeat) -> None:
        log.info("warm worker gone silent", extra={"pod": beat.pod, "state": beat.state})
        if beat.edit_id:
            self.wake((beat.namespace, beat.edit_id))

    # -- hand-out ------------------------------------------------------------------------
    async def _hand_out(self, pool: Pool) -> None:
        """Publish as many waiting attempts, head of the queue first, as workers are idle."""
        if not pool.waiting:
            return
        workers = self.registry.of_pool(pool.namespace, pool.model)
        idle = sum(1 for w in workers if w.state == "idle")
        busy = {(w.edit_id, w.attempt) for w in workers if w.edit_id}
        untaken = sum(
            1
            for a in self.attempts.values()
            if a.namespace == pool.namespace
            and a.model == pool.model
            and a.seq is not None
            and a.result is None
            and (a.edit_id, a.attempt) not in busy
        )
        free = idle - untaken
        if free <= 0:
            return
        await self._ensure_consumer(pool)
        for _, name in list(pool.waiting[:free]):
            attempt = self.attempts.get((pool.namespace, name))
            if attempt is None:
                pool.waiting.remove(next(e for e in pool.waiting if e[1] == name))
                continue
            try:
                payload = await self._sealed_payload(attempt)
            except CredentialMintError as exc:
                # S3's STS away (an outage, a restart): the attempt keeps its place and the
                # next tick tries again; other pools and the deadlines go on meanwhile.
                log.warning(
                    "hand-out waits: attempt credentials could not be minted",
                    extra={"editjob": attempt.edit_id, "error": str(exc)[:300]},
                )
                return
            ack = await self.js.publish(
                work_subject(pool.namespace, pool.model),
                payload,
                headers={"Nats-Msg-Id": attempt.msg_id},
            )
            self._leave_waiting(pool, attempt)
            attempt.seq = ack.seq
            attempt.published_at = attempt.published_at or self.clock()
            metrics.WARM_HANDED_OUT.inc()
            log.info(
                "handed out to the warm pool",
                extra={"editjob": attempt.edit_id, "attempt": attempt.attempt, "seq": ack.seq},
            )
            self.wake((attempt.namespace, attempt.edit_id))

    async def _ensure_consumer(self, pool: Pool) -> None:
        """The pool's work consumer, made by the operator alone (issue 20 §2): a worker's NATS
        identity may only pull from it, so it must exist before the pool's first worker."""
        if pool.consumer_ready:
            return
        await ensure_work_consumer(
            self.js,
            pool.namespace,
            pool.model,
            ack_wait=self.op.warm_ack_wait_seconds,
            max_deliveries=self.op.warm_max_deliveries,
            duplicate_window=self.op.work_duplicate_window,
        )
        pool.consumer_ready = True

    async def _sealed_payload(self, attempt: WarmAttempt) -> bytes:
        """The work message, with the attempt's own STS credentials sealed for its pool.

        Minted at hand-out (not when queued) so that waiting does not eat their life; the
        same session policy as Job mode: the input object and the attempt's output prefix.
        """
        body = json.loads(attempt.payload)
        token = self._token(attempt.namespace, attempt.edit_id, attempt.attempt)
        if self.minter is None or self.pool_keys is None or attempt.editjob is None:
            body["result_token"] = token  # the insecure shared-key mode: nothing to seal with
            return json.dumps(body, separators=(",", ":")).encode()
        creds = await self.minter.mint(attempt.editjob, attempt.attempt)
        key = await self.pool_keys.sealing_key(attempt.namespace)
        body["credentials"] = seal(
            {
                "access_key": creds.access_key,
                "secret_key": creds.secret_key,
                "session_token": creds.session_token,
                "expires_at": creds.expires_at.isoformat(),
                "result_token": token,
            },
            key,
        )
        return json.dumps(body, separators=(",", ":")).encode()

    def _token(self, namespace: str, edit_id: str, attempt: int) -> str:
        return attempt_token(self.token_key, namespace, edit_id, attempt)

    async def _delete_message(self, attempt: WarmAttempt) -> None:
        """Take an attempt that nobody may run any more off the work queue (if still there)."""
        with contextlib.suppress(Exception):
            await self.js.delete_msg(WORK_STREAM, attempt.seq)

    # -- pool size ------------------------------------------------------------------------
    def _pool_jobs(self, namespace: str, model: str) -> list[JSON]:
        return [
            job
            for (ns, _), job in self.cache.warm_jobs.items.items()
            if ns == namespace
            and (job["metadata"].get("labels") or {}).get(LABEL_POOL) == model
            and not job_finished(job)
            and not job["metadata"].get("deletionTimestamp")
        ]

    def _pool_pods(self, namespace: str, model: str) -> list[JSON]:
        return [
            pod
            for (ns, _), pod in self.cache.warm_pods.items.items()
            if ns == namespace
            and (pod["metadata"].get("labels") or {}).get(LABEL_POOL) == model
            and not pod["metadata"].get("deletionTimestamp")
        ]

    def demand(self, pool: Pool) -> int:
        return sum(
            1
            for a in self.attempts.values()
            if a.namespace == pool.namespace
            and a.model == pool.model
            and a.result is None
            and a.failed is None
        )

    async def _scale(self, pool: Pool) -> None:
        target = min(self.op.max_warm_workers, self.op.max_running_per_namespace, self.demand(pool))
        retiring = {
            w.pod
            for w in self.registry.of_pool(pool.namespace, pool.model)
            if w.state
            in (
                "draining",
                "stopped",
            )
        }
        live = [
            job
            for job in self._pool_jobs(pool.namespace, pool.model)
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
                await self._ensure_consumer(pool)
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
            for p in self._pool_pods(pool.namespace, pool.model)
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

    def _load_failed(self, pool: Pool, error: str) -> None:
        pool.failures_in_a_row += 1
        pool.last_error = error
        delay = min(300.0, 5.0 * 2 ** (pool.failures_in_a_row - 1))
        pool.next_start = self.clock() + delay
        log.warning(
            "a warm worker's model did not load",
            extra={"model": pool.model, "in_a_row": pool.failures_in_a_row, "error": error},
        )

    def _give_up_if_no_worker_can_load(self, pool: Pool) -> None:
        if pool.failures_in_a_row < LOAD_FAILURES_TO_GIVE_UP:
            return
        if self.clock() - self.started < HEARTBEAT_EXPIRY_SECONDS:
            return  # every live worker is heard within this; until then none is not news
        if any(
            w.state in ("idle", "busy") for w in self.registry.of_pool(pool.namespace, pool.model)
        ):
            return
        for _, name in list(pool.waiting):
            attempt = self.attempts.get((pool.namespace, name))
            if attempt is None or attempt.failed is not None:
                continue
            attempt.failed = {
                "reason": "ModelLoadFailed",
                "message": f"{MODEL_LOAD_FAILED_CODE}: no warm worker of {pool.model} came up "
                f"({pool.failures_in_a_row} tries): {pool.last_error}"[:900],
            }
            self._leave_waiting(pool, attempt)
            self.wake((attempt.namespace, attempt.edit_id))

    # -- deadlines and stuck workers ----------------------------------------------------
    def _check_deadlines(self) -> None:
        now = self.clock()
        for attempt in list(self.attempts.values()):
            if attempt.result is not None or attempt.failed is not None:
                continue
            if attempt.published_at is None or now - attempt.published_at < attempt.deadline:
                continue
            attempt.failed = {
                "reason": "DeadlineExceeded",
                "message": f"not finished within {attempt.deadline:.0f}s",
            }
            if attempt.seq is not None:
                asyncio.get_running_loop().create_task(self._delete_message(attempt))
            self.wake((attempt.namespace, attempt.edit_id))

    async def _replace_stuck_workers(self) -> None:
        """A worker still busy with an edit long past its deadline is deleted (and replaced)."""
        now = self.clock()
        for (namespace, pod), (beat, _) in list(self.registry.workers.items()):
            if beat.state not in ("busy", "draining") or not beat.edit_id or not beat.attempt:
                continue
            attempt = self.attempts.get((namespace, job_name(beat.edit_id, beat.attempt)))
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
            self.registry.forget(namespace, pod_name)
            metrics.WARM_WORKERS_REPLACED.inc()
            log.warning("deleted a warm worker", extra={"pod": pod_name, "why": why})
        finally:
            self._deleting.discard(key)

    async def _retire_outdated(self) -> None:
        """Workers from an older configuration finish their edit, then make room for new ones."""
        for (namespace, pod), (beat, _) in list(self.registry.workers.items()):
            if beat.state not in ("idle", "busy", "loading"):
                continue
            if beat.config_hash == config_hash(self.op, namespace, beat.model):
                continue
            await self._retire(namespace, pod, "configuration changed")

    async def _yield_idle_gpus(self) -> None:
        """An idle worker gives its GPU up when another pool of its namespace has attempts
        waiting and a worker Pod that cannot be scheduled: no idle preview worker (or any
        other) holds a GPU that a waiting edit needs. It retires; its pool starts again later
        if work for it comes."""
        for (namespace, model), pool in list(self.pools.items()):
            if not pool.waiting or not any(
                unschedulable(p) is not None for p in self._pool_pods(namespace, model)
            ):
                continue
            for (other_ns, other_model), other in self.pools.items():
                if other_ns != namespace or other_model == model or other.waiting:
                    continue
                idle = [
                    w for w in self.registry.of_pool(namespace, other_model) if w.state == "idle"
                ]
                if idle:
                    await self._retire(namespace, idle[0].pod, f"a GPU for the {model} pool")
                    break

    async def _retire(self, namespace: str, pod: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._retired.get((namespace, pod), -1e9) < 10:
            return
        self._retired[(namespace, pod)] = now
        await self._control(namespace, pod, WorkerControl(action="retire", reason=reason[:300]))

    async def _control(self, namespace: str, pod: str, control: WorkerControl) -> None:
        """Best effort: a retire is asked again later, a missed cancel ends at the deadline."""
        with contextlib.suppress(Exception):
            await self.nc.publish(
                worker_control_subject(namespace, pod), control.model_dump_json().encode()
            )
            log.info(
                "asked a warm worker to %s",
                control.action,
                extra={"pod": pod, "why": control.reason, "edit_id": control.edit_id},
            )

    def _export_metrics(self) -> None:
        states: dict[str, int] = {}
        for beat, _ in self.registry.workers.values():
            states[beat.state] = states.get(beat.state, 0) + 1
        for state in ("loading", "idle", "busy", "draining"):
            metrics.WARM_WORKERS.labels(state).set(states.get(state, 0))
        metrics.WARM_WAITING.set(sum(len(p.waiting) for p in self.pools.values()))


def _before(stamp: str, moment: float) -> bool:
    """Whether the Kubernetes timestamp ``stamp`` (1 s resolution) is before ``moment``."""
    try:
        when = parse_time(stamp)
    except ValueError:
        return False
    return when is not None and when.timestamp() < moment
