"""Warm mode (``editflow worker serve``): one loaded pipeline, many edits.

The worker loads its model once, then pulls :class:`WorkerRequest` messages
from the JetStream work-queue stream ``WORK_STREAM`` on the subject of its
namespace and model (``editflow.work.<namespace>.<model>``, durable consumer
``worker_<namespace>_<model>`` shared by every warm worker of that namespace and
model; the namespace is ``EDITFLOW_NAMESPACE``, which the operator sets from the
Pod's own). For each message it runs exactly the
same :func:`~editflow.inference.worker.execute` as ``editflow worker run``
(result JSON in S3 next to the image), publishes the :class:`WorkerResult`
(``worker``: this Pod's name, ``POD_NAME`` or the host name; ``token``: the attempt's
result token from its sealed credentials) to
``editflow.worker.results.<namespace>.<edit_id>`` only, and then acknowledges the
message. Whether a failed attempt is retried is the requester's decision, as
it is for Jobs: the result says ``retriable``.

It pulls one message at a time and only while idle, so a message waits in the
stream, not in a busy worker's buffer.

Heartbeats. The operator hands attempts out only to workers it hears are idle
(publishing more would queue them behind a running edit), shows which Pod runs an
attempt, and replaces a worker stuck on one. So the worker publishes a
:class:`~editflow.events.worker_contract.WorkerHeartbeat` (core NATS) on
``editflow.worker.status.<namespace>.<model>`` every ``HEARTBEAT_SECONDS`` and at once
on each change of state:

* ``loading``: connected to NATS, the model loading (NATS comes first so the operator
  hears about a load that fails);
* ``failed``: the model did not load (``error``: why); the worker exits 71;
* ``idle``: ready, waiting for a message;
* ``busy``: running an edit (``edit_id``, ``attempt``, ``deliveries``: JetStream's
  delivery count, ``since``: when the edit started);
* ``draining``: SIGTERM, a retire request or the maximum age arrived while an edit runs;
  the edit is finished and no new message taken;
* ``stopped``: once, right before a clean exit (0).

A heartbeat that cannot be sent (NATS briefly down) is logged and skipped.

Control: ``editflow.worker.control.<namespace>.<pod>`` takes a
:class:`~editflow.events.worker_contract.WorkerControl`; ``retire`` finishes the edit in
flight, takes no new one, publishes ``stopped`` and exits 0 (the operator retires
workers whose configuration is outdated). Unreadable control messages are logged.

Ending by itself (0, after ``stopped``): after ``EDITFLOW_WORKER__IDLE_SECONDS``
(``--idle-seconds``; default 300, 0 never) without a message, counted from ready or
from the end of the last edit, so an idle pool shrinks to zero; and between edits
once older than ``EDITFLOW_WORKER__MAX_AGE_SECONDS`` (0: no limit).

Bounded deliveries. While an edit runs the worker sends ``in_progress`` so JetStream
does not redeliver it; a worker killed mid-edit never acks, and the message goes to
another worker after ``ack_wait`` (``EDITFLOW_WORKER__ACK_WAIT_SECONDS``). An edit that
kills every worker it reaches would otherwise take the pool down one worker at a time,
forever. The consumer (:func:`~editflow.events.workqueue.ensure_work_consumer`, made by
the operator alone, before a pool's first worker; a worker waits for it) allows
``max_deliver = EDITFLOW_WORKER__MAX_DELIVERIES + 1``: a delivery whose
``num_delivered`` exceeds ``MAX_DELIVERIES`` is not run but answered with a failed
result, code ``poison_edit``, not retriable, stored in S3 and published like any result,
and acked so it leaves the queue. Without the extra delivery JetStream would stop
delivering the message silently and its EditJob would wait until its deadline.

HTTP (``--http-port``): ``/healthz`` (the loop is alive), ``/readyz`` (model
loaded, NATS connected, not draining) and ``/metrics`` (Prometheus).
If NATS is unreachable for ``NATS_START_SECONDS`` (30) at start the worker exits 70, if
the model does not load 71,
so the Pod restarts (or the pool replaces it) with backoff.

SIGTERM/SIGINT: stop pulling, finish the edit in flight, ack it, drain NATS,
exit 0. If the edit is still running after ``EDITFLOW_WORKER__DRAIN_SECONDS``
(default 300; keep it below the Pod's termination grace period), it is
nak'ed so another worker takes it at once, and the worker exits without it.
A retire request or the maximum age has no such deadline: nobody is waiting to kill
the Pod, so the edit gets the time it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from editflow.core.errors import EditflowError, ExitCode, PermanentError
from editflow.core.logging import log_context
from editflow.core.sealing import SealError
from editflow.core.settings import Settings
from editflow.events.connection import connect
from editflow.events.worker_contract import (
    HEARTBEAT_SECONDS,
    POISON_EDIT_CODE,
    WORK_STREAM,
    WorkerControl,
    WorkerHeartbeat,
    WorkerResult,
    WorkerState,
    result_subject,
    work_consumer,
    work_subject,
    worker_control_subject,
    worker_status_subject,
)
from editflow.inference import attemptlog, cancel, metrics
from editflow.inference.pipeline import ModelCache
from editflow.inference.registry import get_spec
from editflow.inference.report import result_json
from editflow.inference.worker import EDIT_ID_PATTERN as _EDIT_ID
from editflow.inference.worker import execute, pod_name, refuse

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_EVERY_SECONDS = 15.0
LIVENESS_STALE_SECONDS = 60.0
#: The longest one pull waits; between pulls the worker checks whether to leave.
FETCH_SECONDS = 1.0
#: How long the first connection to NATS is retried before the worker exits 70.
NATS_START_SECONDS = 30.0
#: How often a worker that started before its pool's consumer existed looks again.
CONSUMER_POLL_SECONDS = 0.5
#: The heartbeat's ``error`` field holds at most this many characters.
_ERROR_LIMIT = 1000


class PoisonEditError(PermanentError):
    """An edit delivered more often than ``max_deliveries``: each worker died holding it."""

    code = POISON_EDIT_CODE


def poison_message(num_delivered: int) -> str:
    """The poison result's message; the delivery that carries it (the one not run) not counted."""
    return (
        f"this edit was delivered {num_delivered - 1} times and every worker that took it "
        "died before finishing; not run again"
    )


def _request_ids(data: bytes) -> dict[str, Any]:
    """``edit_id`` and ``attempt`` of a work message, as far as it holds valid ones."""
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    ids: dict[str, Any] = {}
    if isinstance(body.get("edit_id"), str) and _EDIT_ID.fullmatch(body["edit_id"]):
        ids["edit_id"] = body["edit_id"]
    attempt = body.get("attempt", 1)  # WorkerRequest's default: heartbeats match on it
    if isinstance(attempt, int) and not isinstance(attempt, bool):
        ids["attempt"] = attempt
    return ids


def _deliveries(message: Any) -> int:
    """JetStream's delivery count of ``message`` (1 on the first delivery)."""
    try:
        return int(message.metadata.num_delivered)
    except Exception:  # not a JetStream message (no ack subject to parse)
        return 1


def _in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread: unlike executor threads, nothing waits for it at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            value = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(deliver, future.set_exception, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, future.set_result, value)

    # The caller's context (its log_context fields) goes with the work into the thread.
    context = contextvars.copy_context()
    threading.Thread(target=lambda: context.run(target), name="editflow-edit", daemon=True).start()
    return future


@dataclass(frozen=True)
class _Edit:
    """The edit in flight, as heartbeats report it."""

    edit_id: str | None
    attempt: int | None
    deliveries: int
    since: float


class WarmWorker:
    """One warm worker process: its state, its heartbeats and its pull loop (module docs)."""

    def __init__(
        self, settings: Settings, *, model: str, http_port: int = 8080, namespace: str | None = None
    ) -> None:
        self.settings = settings
        self.spec = get_spec(model)
        self.namespace = namespace or settings.namespace
        # Refused here, with the field named, rather than as a NATS error after the model loaded.
        self.subject = work_subject(self.namespace, self.spec.name)
        self.pod = pod_name()
        self.status_subject = worker_status_subject(self.namespace, self.spec.name)
        self.control_subject = worker_control_subject(self.namespace, self.pod)
        self.http_port = http_port
        self.models = ModelCache(settings.worker, settings.s3)
        metrics.MODEL_LOADS.set_function(lambda: self.models.loads)
        self.stopping = asyncio.Event()
        self.loaded = False
        self.connected = False
        self.in_flight = 0
        self.last_beat = time.monotonic()
        self.handled = 0
        self.bound_port: int | None = None
        self._nc: Any = None
        self._current: Any = None
        #: Set when the drain deadline passed with an edit still running.
        self.abandoned = False
        # What heartbeats say.
        self.started_at = time.time()
        self._started = time.monotonic()
        self.state: WorkerState = "loading"
        self.since = self.started_at
        self.error: str | None = None
        self._edit: _Edit | None = None
        #: The edit in flight's cancel request (a ``cancel`` control message sets it).
        self._cancellation: cancel.Cancellation | None = None
        #: Why the worker leaves after the edit in flight (retire request, maximum age).
        self.retiring: str | None = None
        self._beats_failing = False
        self._background: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        """Begin the graceful drain (signal handlers call this)."""
        if not self.stopping.is_set():
            log.info("draining: no new edits, finishing the one in flight")
        self.stopping.set()
        metrics.READY.set(0)
        self._soon(self._drain_state())

    def retire(self, reason: str) -> None:
        """Finish the edit in flight, take no new one, exit 0 (no drain deadline)."""
        if self.retiring is None:
            log.info("retiring after the edit in flight", extra={"reason": reason})
            self.retiring = reason
        metrics.READY.set(0)
        self._soon(self._drain_state())

    def _leaving(self) -> bool:
        return self.stopping.is_set() or self.retiring is not None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        http = await asyncio.start_server(self._http, "0.0.0.0", self.http_port)  # noqa: S104
        self.bound_port = http.sockets[0].getsockname()[1]
        log.info(
            "warm worker http",
            extra={"port": self.bound_port, "model": self.spec.name, "pod": self.pod},
        )
        try:
            code = await self._run_connected()
        finally:
            http.close()
            await http.wait_closed()
        log.info("warm worker stopped", extra={"handled": self.handled, "exit_code": code})
        return code

    async def _run_connected(self) -> int:
        """Connect, say ``loading``, load, serve until told or timed out, say how it ended."""
        first = connect(
            self.settings.nats, name=f"warm-worker-{self.pod}", connect_for=NATS_START_SECONDS
        )
        try:
            # Bounded here too: nats-py (2.16) retries an unreachable first server for ever.
            nc = await asyncio.wait_for(first, timeout=NATS_START_SECONDS)
        except Exception as exc:  # no server reachable at start (or credentials refused)
            log.error("NATS unreachable", extra={"error": repr(exc)})
            return int(ExitCode.UPSTREAM_UNAVAILABLE)
        self._nc = nc
        self.connected = True
        beats = asyncio.create_task(self._beat_forever())
        try:
            await self._announce()  # loading
            await nc.subscribe(self.control_subject, cb=self._on_control)
            code = await self._load()
            if code == 0:
                self._arm_max_age()
                await self._until_drained(asyncio.create_task(self._consume(nc)))
            await _cancel(beats)
            # Failed or stopped: the last word, sent before NATS is drained.
            await self._enter("failed" if code else "stopped")
            return code
        finally:
            await _cancel(beats)
            self.connected = False
            metrics.READY.set(0)
            with contextlib.suppress(Exception):
                await nc.drain()

    async def _load(self) -> int:
        """Load the model; 0, or the exit code of a model that did not load."""
        began = time.perf_counter()
        try:
            await asyncio.to_thread(self.models.get, self.spec)
        except EditflowError as exc:  # missing or broken weights: let the Pod restart
            log.error("model did not load", extra={"error": str(exc)})
            self.error = exc.message[:_ERROR_LIMIT]
            return int(exc.exit_code)
        metrics.MODEL_LOAD_SECONDS.labels(self.spec.name).set(time.perf_counter() - began)
        self.loaded = True
        return 0

    def _arm_max_age(self) -> None:
        """Past the maximum age an edit in flight becomes ``draining`` (checked between edits)."""
        limit = self.settings.worker.max_age_seconds
        if limit <= 0:
            return
        delay = max(0.0, limit - (time.monotonic() - self._started))
        asyncio.get_running_loop().call_later(delay, self.retire, f"older than {limit:g}s")

    async def _until_drained(self, consume: asyncio.Task[None]) -> None:
        """Run ``consume``; after SIGTERM give the edit in flight ``drain_seconds`` to finish.

        Past that deadline the in-flight request is nak'ed (redelivered to another worker
        at once instead of after ``ack_wait``) and the worker stops without it; the edit's
        thread is a daemon and dies with the process.
        """
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({consume, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not consume.done():
            grace = self.settings.worker.drain_seconds
            done, _ = await asyncio.wait({consume}, timeout=grace)
            if not done:
                self.abandoned = True
                log.warning("drain deadline passed; handing the edit in flight back")
                if self._current is not None:
                    with contextlib.suppress(Exception):
                        await self._current.nak()
                await _cancel(consume)
        stop.cancel()
        if consume.done() and not consume.cancelled() and consume.exception():
            raise consume.exception()  # type: ignore[misc]

    # -- heartbeats and control --------------------------------------------------
    def heartbeat(self) -> WorkerHeartbeat:
        edit = self._edit
        return WorkerHeartbeat(
            pod=self.pod,
            namespace=self.namespace,
            model=self.spec.name,
            state=self.state,
            edit_id=edit.edit_id if edit else None,
            attempt=edit.attempt if edit else None,
            deliveries=edit.deliveries if edit else None,
            since=self.since,
            started_at=self.started_at,
            config_hash=self.settings.worker.config_hash,
            handled=self.handled,
            error=self.error,
        )

    async def _announce(self) -> None:
        """Publish the heartbeat; never raises, never waits long (NATS may be reconnecting)."""
        if self._nc is None:
            return
        payload = self.heartbeat().model_dump_json().encode()
        try:
            await asyncio.wait_for(
                self._nc.publish(self.status_subject, payload), timeout=HEARTBEAT_SECONDS
            )
        except Exception as exc:
            if not self._beats_failing:
                log.warning("heartbeat not sent", extra={"error": repr(exc), "state": self.state})
            self._beats_failing = True
        else:
            if self._beats_failing:
                log.info("heartbeats sent again", extra={"state": self.state})
            self._beats_failing = False

    async def _enter(self, state: WorkerState, *, edit: _Edit | None = None) -> None:
        """Change state (and the edit in flight) and say so at once."""
        self.state = state
        self._edit = edit
        self.since = edit.since if edit else time.time()
        await self._announce()

    async def _drain_state(self) -> None:
        # A worker that is told to leave while idle simply stops at its next check.
        if self.state == "busy":
            await self._enter("draining", edit=self._edit)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self._announce()

    async def _on_control(self, msg: Any) -> None:
        try:
            control = WorkerControl.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning(
                "unreadable control message ignored",
                extra={"subject": msg.subject, "error": str(exc)[:500]},
            )
            return
        if control.action == "retire":
            self.retire(control.reason or "asked to retire")
        elif control.action == "cancel":
            self._cancel_edit(control)

    def _cancel_edit(self, control: WorkerControl) -> None:
        """Stop the edit in flight if it is the one named; the worker stays up (issue 20 §6)."""
        edit, token = self._edit, self._cancellation
        named = (control.edit_id, control.attempt)
        if edit is None or token is None or (edit.edit_id, edit.attempt) != named:
            log.info(
                "cancel for an edit not in flight ignored",
                extra={"edit_id": control.edit_id, "attempt": control.attempt},
            )
            return
        token.cancel(control.reason or "cancelled")
        log.info(
            "edit cancelled in flight",
            extra={"edit_id": control.edit_id, "attempt": control.attempt, "why": control.reason},
        )

    def _soon(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the loop from synchronous code (signal handlers, timers)."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop yet: there is nothing to announce
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the work queue --------------------------------------------------------
    async def _subscribe(self, js: Any) -> Any | None:
        """Bind to the pool's durable consumer once the operator has made it.

        Only the operator creates streams and consumers (issue 20 §2): a worker's NATS
        identity may pull and acknowledge its namespace's consumers and nothing else, so a
        worker that starts first waits here (``None``: it was told to leave meanwhile). The
        operator makes the consumer before it starts a pool's first worker, so the wait is
        short unless NATS or the operator is away.
        """
        from nats.js.errors import NotFoundError

        durable = work_consumer(self.namespace, self.spec.name)
        waiting_since: float | None = None
        while not self._leaving():
            try:
                info = await js.consumer_info(WORK_STREAM, durable)
            except NotFoundError:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    log.info(
                        "waiting for the operator to create the work consumer",
                        extra={"consumer": durable},
                    )
                await asyncio.sleep(CONSUMER_POLL_SECONDS)
                continue
            self._check_bounds(info)
            return await js.pull_subscribe_bind(durable=durable, stream=WORK_STREAM)
        return None

    def _check_bounds(self, info: Any) -> None:
        """Warn when the consumer's ``max_deliver`` does not leave room for the poison report."""
        expected = self.settings.worker.max_deliveries + 1
        if info.config.max_deliver != expected:
            log.warning(
                "the work consumer's max_deliver differs from max_deliveries + 1",
                extra={"max_deliver": info.config.max_deliver, "expected": expected},
            )

    def _idle_for(self, idle_since: float) -> float | None:
        """Seconds left before the idle exit (``None``: no idle limit)."""
        limit = self.settings.worker.idle_seconds
        if limit <= 0:
            return None
        return limit - (time.monotonic() - idle_since)

    async def _consume(self, nc: Any) -> None:
        subscription = await self._subscribe(nc.jetstream())
        if subscription is None:
            return
        try:
            await self._pull(nc, subscription)
        finally:
            # Before NATS is drained: nats-py's drain waits out its whole timeout on a pull
            # subscription whose fetches timed out. Nothing is pulled any more, so nothing is lost.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _pull(self, nc: Any, subscription: Any) -> None:
        """Take one message at a time while idle, until told to leave or idle too long."""
        from nats.errors import TimeoutError as NatsTimeout

        if not self._leaving():
            metrics.READY.set(1)
            log.info("warm worker ready", extra={"subject": self.subject, "pod": self.pod})
            await self._enter("idle")
        idle_since = time.monotonic()
        while not self._leaving():
            left = self._idle_for(idle_since)
            if left is not None and left <= 0:
                log.info("idle; exiting", extra={"idle_seconds": self.settings.worker.idle_seconds})
                return
            self.last_beat = time.monotonic()
            timeout = FETCH_SECONDS if left is None else max(0.1, min(FETCH_SECONDS, left))
            try:
                messages = await subscription.fetch(1, timeout=timeout)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # disconnected: nats-py reconnects, we wait and retry
                log.warning("pull failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._handle(nc, message)
            idle_since = time.monotonic()
            if not self._leaving():
                await self._enter("idle")
        log.info("leaving", extra={"retiring": self.retiring, "signal": self.stopping.is_set()})

    async def _handle(self, nc: Any, message: Any) -> None:
        ids = _request_ids(message.data)
        # Every line logged while this message is handled names its edit and attempt, so one
        # attempt's lines can be picked out of a worker that serves many (editflow edits logs).
        with log_context(**ids):
            deliveries = _deliveries(message)
            if deliveries > self.settings.worker.max_deliveries:
                await self._refuse_poison(nc, message, deliveries)
            else:
                await self._run_edit(
                    nc,
                    message,
                    _Edit(ids.get("edit_id"), ids.get("attempt"), deliveries, time.time()),
                )

    async def _run_edit(self, nc: Any, message: Any, edit: _Edit) -> None:
        """Run one edit (busy), publish its result, then ack; unacked if publishing fails."""
        await self._enter("draining" if self._leaving() else "busy", edit=edit)
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        progress = asyncio.create_task(self._keep_in_progress(message))
        token = self._cancellation = cancel.Cancellation()
        reset = cancel.CURRENT.set(token)  # copied into the edit's thread with the context
        try:
            raw = message.data.decode("utf-8", errors="replace")
            self._current = message
            # The same function as `editflow worker run`; no termination message here. Its
            # own log lines are kept: a warm attempt has no Pod whose log the desk could show.
            with attemptlog.capture() as lines:
                result, code = await _in_daemon_thread(
                    lambda: execute(
                        raw, self.settings, self.models, termination_log="", worker=self.pod
                    )
                )
            if result.status == "failed" and lines:
                result = result.model_copy(update={"log": list(lines)})
            self._observe(result)
            if result.error is not None and result.error.code == SealError.code:
                # Its mounted pool key is older than the pool's (rotated since it started):
                # a fresh worker reads the current Secret; this one leaves after this edit.
                self.retire("the pool key was rotated since this worker started")
            try:
                await self._publish_result(nc, message, result)
                await message.ack()
            except Exception as exc:
                # Not acked: JetStream redelivers after ack_wait and the edit runs again
                # (its result JSON in S3 is simply rewritten). Losing it would be worse.
                log.warning(
                    "result not delivered; leaving the request for redelivery",
                    extra={"edit_id": result.edit_id, "error": repr(exc)},
                )
                return
            self.handled += 1
            log.info(
                "warm edit handled",
                extra={"edit_id": result.edit_id, "status": result.status, "exit_code": code},
            )
        finally:
            cancel.CURRENT.reset(reset)
            self._cancellation = None
            await _cancel(progress)
            self._current = None
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()

    async def _refuse_poison(self, nc: Any, message: Any, deliveries: int) -> None:
        """Answer an edit that used up its deliveries with a ``poison_edit`` result; ack it.

        This is the consumer's last delivery (``max_deliver``), so the message is acked
        even if the result cannot be published: it would never be delivered again, and the
        result is in S3 where the operator looks after a restart.
        """
        raw = message.data.decode("utf-8", errors="replace")
        error = PoisonEditError(poison_message(deliveries))
        result = await asyncio.to_thread(refuse, raw, self.settings, error, worker=self.pod)
        log.warning(
            "poison edit not run",
            extra={"edit_id": result.edit_id, "attempt": result.attempt, "deliveries": deliveries},
        )
        self._observe(result)
        try:
            await self._publish_result(nc, message, result)
        except Exception as exc:
            log.warning("poison result not published", extra={"error": repr(exc)})
        try:
            await message.ack()
        except Exception as exc:
            log.warning("poison edit not acked", extra={"error": repr(exc)})
            return
        self.handled += 1

    async def _publish_result(self, nc: Any, message: Any, result: WorkerResult) -> None:
        """Send ``result`` to the requester's reply subject and the edit's results subject."""
        payload = result_json(result).encode()
        # Only ever this namespace's results subject: a requester-chosen reply subject let a
        # work message send a worker's results (and their tokens) anywhere (issue 20 §2).
        if result.edit_id != "unknown":
            await nc.publish(result_subject(self.namespace, result.edit_id), payload)
        await nc.flush()

    async def _keep_in_progress(self, message: Any) -> None:
        # Well inside the consumer's ack wait (a short one, say 6 s, would otherwise hand a
        # running edit to a second worker before the first said it is still on it).
        every = min(PROGRESS_EVERY_SECONDS, self.settings.worker.ack_wait_seconds / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await message.in_progress()

    def _observe(self, result: WorkerResult) -> None:
        code = result.error.code if result.error else ""
        metrics.EDITS.labels(result.model, result.status, code).inc()
        for step in ("fetch", "preprocess", "load", "infer", "gate", "upload"):
            value = getattr(result.cost, step)
            if value:
                metrics.STEP_SECONDS.labels(result.model, step).observe(value)

    # -- health ------------------------------------------------------------------
    def healthy(self) -> bool:
        return self.in_flight > 0 or time.monotonic() - self.last_beat < LIVENESS_STALE_SECONDS

    def ready(self) -> bool:
        connected = self.connected and (self._nc is None or self._nc.is_connected)
        return self.loaded and connected and not self._leaving()

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            content_type = "text/plain; charset=utf-8"
            if path == "/healthz":
                ok = self.healthy()
                status, body = (200 if ok else 503), (b"ok" if ok else b"stale")
            elif path == "/readyz":
                ok = self.ready()
                status, body = (200 if ok else 503), (b"ready" if ok else b"not ready")
            elif path == "/metrics":
                status, body = 200, generate_latest(metrics.REGISTRY)
                content_type = CONTENT_TYPE_LATEST
            else:
                status, body = 404, b"not found"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
