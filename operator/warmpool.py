"""Warm dispatch (``worker.mode: warm``): attempts go to workers that keep the model loaded.

Three modules, one job each: :mod:`.warmregistry` holds the state (the attempts this
process owns, each pool's queue, the workers it hears); :mod:`.warmscaler` keeps each
pool at the workers its attempts need and replaces or retires workers; this module is
the dispatcher: attempts in, hand-out, results and heartbeats, deadlines.

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

What the reconciler sees is an :class:`~editflow.operator.attempts.AttemptState`, as in
Job mode: the result heard on the result subject (or read from S3 after a restart), an end
without one (past its deadline, a model no worker of the pool loads), the pool's Pods that
cannot start while no worker is up, or the worker running it. So
:func:`~editflow.operator.decide.decide` is one function for both modes, with the same
phases, conditions, retries and timeouts, and no branch for either.

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
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from editflow.core.errors import ErrorInfo
from editflow.core.kubetime import parse_stamp as parse_time
from editflow.core.kubetime import stamp as _stamp
from editflow.core.sealing import attempt_token, seal, token_key, token_matches
from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import (
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
from editflow.operator.attempts import (
    AttemptState,
    ResultReader,
    StartWords,
    gone,
    pods_state,
)
from editflow.operator.caches import ClusterCache
from editflow.operator.credentials import AttemptCredentialMinter, CredentialMintError
from editflow.operator.jobspec import deadline_of, worker_request
from editflow.operator.kube import JSON, AsyncKube
from editflow.operator.names import job_name
from editflow.operator.poolkeys import PoolKeys
from editflow.operator.warmregistry import (
    UNCLAIMED_LIMIT,
    UNCLAIMED_SECONDS,
    Key,
    Pool,
    WarmAttempt,
    WarmState,
)
from editflow.operator.warmscaler import PoolScaler
from editflow.operator.workindex import sort_key

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5


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
        results: ResultReader | None = None,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.op = op
        self.nc = nats
        self.js = nats.jetstream() if nats is not None else None
        self.wake = wake
        self.clock = clock
        #: The result JSON in S3 (after a restart) and the operator's signature of its URL.
        self.results = results
        #: Per-attempt credentials (operator.attempt_credentials): minted and sealed at
        #: hand-out. Without them warm workers read S3 with the namespace's shared key.
        self.minter = minter
        self.pool_keys = pool_keys
        #: Keys the per-attempt result tokens (sealing.attempt_token), from the operator's S3
        #: secret: derived once, not per hand-out and per result.
        self.token_key = token_key(token_secret)
        self.state = WarmState()
        #: The state's parts, by their old names (the scaler shares the same objects).
        self.registry = self.state.registry
        self.attempts = self.state.attempts
        self.pools = self.state.pools
        #: Results heard for attempts this process does not (yet) own: an operator restart.
        #: Bounded and expiring (UNCLAIMED_LIMIT, UNCLAIMED_SECONDS): a cancelled attempt's
        #: late result, or a result of an EditJob gone meanwhile, is never claimed.
        self.unclaimed_results: OrderedDict[Key, tuple[WorkerResult, float]] = OrderedDict()
        self._kick = asyncio.Event()
        self._subscriptions: list[Any] = []
        self.scaler = PoolScaler(
            self.state,
            kube,
            cache,
            op,
            clock=clock,
            pool_keys=pool_keys,
            ensure_consumer=self._ensure_consumer,
            control=self._control,
            wake=lambda key: self.wake(key),
            kick=self._kick.set,
        )

    # -- the Dispatcher seam -------------------------------------------------------
    words = StartWords(
        "HandedToWarmPool", "attempt {attempt} handed to the warm pool", "waiting for a warm worker"
    )

    async def observe(self, editjob: JSON) -> AttemptState:
        namespace = editjob["metadata"]["namespace"]
        name = (editjob.get("status") or {}).get("jobName") or ""
        key = (namespace, name)
        attempt = self.attempts.get(key) or self._adopt(editjob, name)
        if attempt is None:
            return gone(name)
        if attempt.result is None and key in self.unclaimed_results:
            attempt.result = self.unclaimed_results.pop(key)[0]
        if attempt.result is None and attempt.check_result and self.results is not None:
            # Finished while no operator listened (after a restart): its result is in S3.
            attempt.check_result = False
            found = await self.results.from_s3(editjob, attempt.attempt)
            if found is not None and found.attempt == attempt.attempt:
                attempt.result = found
        started = datetime.fromtimestamp(attempt.created, UTC)
        if attempt.result is not None:
            result = attempt.result
            if self.results is not None:
                result = self.results.signed(editjob, result)
            return AttemptState(name, started=started, result=result)
        if attempt.failed is not None:
            return AttemptState(name, started=started, ended=self._failure(editjob, attempt))
        worker = self.registry.running(namespace, attempt.edit_id, attempt.attempt)
        if worker is not None:
            pod = self.cache.warm_pods.get((namespace, worker.pod)) or {}
            return AttemptState(
                name,
                started=started,
                worker=worker.pod,
                node=(pod.get("spec") or {}).get("nodeName"),
                running_message=f"running in warm worker {worker.pod}",
            )
        return pods_state(name, self._waiting_pods(attempt), started)

    def _failure(self, editjob: JSON, attempt: WarmAttempt) -> ErrorInfo:
        """Why an attempt ended without a result, in the error taxonomy."""
        failed = attempt.failed or {}
        if failed.get("reason") == "DeadlineExceeded":
            deadline = deadline_of(editjob, self.op)
            return ErrorInfo("timeout", f"the edit did not finish within {deadline}s", True)
        detail = failed.get("message") or "no warm worker could load the model"
        return ErrorInfo("model_load_failed", detail, True)

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
            self.state.leave_waiting(pool, attempt)
        if attempt.seq is not None:
            await self._delete_message(attempt)
        self._kick.set()
        return True

    # -- attempts ---------------------------------------------------------------------
    def _new_attempt(self, editjob: JSON, number: int) -> WarmAttempt:
        meta = editjob["metadata"]
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
            deadline=float(deadline_of(editjob, self.op)),
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
        self.state.enqueue(attempt)
        self._kick.set()

    def _waiting_pods(self, attempt: WarmAttempt) -> tuple[JSON, ...]:
        """While no worker can take it: the pool's Pods that cannot start, for decide()."""
        pods = []
        for pod in self.scaler.pool_pods(attempt.namespace, attempt.model):
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
            await self.scaler.scale(pool)
            self.scaler.give_up_if_no_worker_can_load(pool)
        self._check_deadlines()
        await self.scaler.tend()
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
        self.scaler.heard(beat, self.state.pool(beat.namespace, beat.model))
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
                    self.state.leave_waiting(
                        self.state.pool(beat.namespace, attempt.model), attempt
                    )
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
            self.state.leave_waiting(pool, attempt)
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
