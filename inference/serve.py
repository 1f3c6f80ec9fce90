"""Warm mode (``editflow worker serve``): one loaded pipeline, many edits.

The worker loads its model once, then pulls :class:`WorkerRequest` messages
from the JetStream work-queue stream ``WORK_STREAM`` on the subject of its
namespace and model (``editflow.work.<namespace>.<model>``, durable consumer
``worker_<namespace>_<model>`` shared by every warm worker of that namespace and
model; the namespace is ``EDITFLOW_NAMESPACE``, which the operator sets from the
Pod's own). For each message it runs exactly the
same :func:`~editflow.inference.worker.execute` as ``editflow worker run``
(result JSON in S3 next to the image), publishes the :class:`WorkerResult`
to the subject in the ``Editflow-Reply-To`` header (if any) and to
``editflow.worker.results.<namespace>.<edit_id>``, and only then acknowledges the
message. Whether a failed attempt is retried is the requester's decision, as
it is for Jobs: the result says ``retriable``.

While an edit runs the worker sends ``in_progress`` so JetStream does not
redeliver it; a worker killed mid-edit never acks, and the message goes to
another worker after ``ack_wait``.

HTTP (``--http-port``): ``/healthz`` (the loop is alive), ``/readyz`` (model
loaded, NATS connected, not draining) and ``/metrics`` (Prometheus).
If the model does not load the worker exits 71 (model failed), if NATS is
unreachable at start 70, so the Pod restarts with backoff.

SIGTERM/SIGINT: stop pulling, finish the edit in flight, ack it, drain NATS,
exit 0. If the edit is still running after ``EDITFLOW_WORKER__DRAIN_SECONDS``
(default 300; keep it below the Pod's termination grace period), it is
nak'ed so another worker takes it at once, and the worker exits without it.
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
from collections.abc import Callable
from typing import Any, TypeVar

from editflow.core.errors import EditflowError, ExitCode
from editflow.core.logging import log_context
from editflow.core.settings import NatsSettings, Settings
from editflow.events.worker_contract import (
    REPLY_TO_HEADER,
    WORK_STREAM,
    WORK_SUBJECT_PREFIX,
    WorkerResult,
    result_subject,
    work_consumer,
    work_subject,
)
from editflow.inference import metrics
from editflow.inference.pipeline import ModelCache
from editflow.inference.registry import get_spec
from editflow.inference.report import result_json
from editflow.inference.worker import EDIT_ID_PATTERN as _EDIT_ID
from editflow.inference.worker import execute

log = logging.getLogger(__name__)
T = TypeVar("T")

ACK_WAIT_SECONDS = 60.0
PROGRESS_EVERY_SECONDS = 15.0
LIVENESS_STALE_SECONDS = 60.0


def nats_options(nats: NatsSettings) -> dict[str, Any]:
    """``nats.connect`` keywords from the settings (credentials and TLS when configured)."""
    import ssl

    options: dict[str, Any] = {"servers": [nats.url], "max_reconnect_attempts": -1}
    if nats.user:
        options["user"] = nats.user
    if nats.password:
        options["password"] = nats.password.get_secret_value()
    if nats.token:
        options["token"] = nats.token.get_secret_value()
    if nats.creds_file:
        options["user_credentials"] = nats.creds_file
    if nats.nkey_seed_file:
        options["nkeys_seed"] = nats.nkey_seed_file
    if nats.tls_ca_file or nats.tls_cert_file:
        context = ssl.create_default_context(cafile=nats.tls_ca_file)
        if nats.tls_cert_file:
            context.load_cert_chain(nats.tls_cert_file, nats.tls_key_file)
        options["tls"] = context
    return options


async def ensure_work_stream(js: Any) -> None:
    """Create the work-queue stream if it is missing (idempotent)."""
    from nats.js.api import RetentionPolicy, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(WORK_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=WORK_STREAM,
                subjects=[f"{WORK_SUBJECT_PREFIX}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                duplicate_window=600,
            )
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
    if isinstance(body.get("attempt"), int):
        ids["attempt"] = body["attempt"]
    return ids


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


class WarmWorker:
    def __init__(
        self, settings: Settings, *, model: str, http_port: int = 8080, namespace: str | None = None
    ) -> None:
        self.settings = settings
        self.spec = get_spec(model)
        self.namespace = namespace or settings.namespace
        # Refused here, with the field named, rather than as a NATS error after the model loaded.
        self.subject = work_subject(self.namespace, self.spec.name)
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

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        """Begin the graceful drain (signal handlers call this)."""
        if not self.stopping.is_set():
            log.info("draining: no new edits, finishing the one in flight")
        self.stopping.set()
        metrics.READY.set(0)

    async def run(self) -> int:
        import nats

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        http = await asyncio.start_server(self._http, "0.0.0.0", self.http_port)  # noqa: S104
        self.bound_port = http.sockets[0].getsockname()[1]
        log.info("warm worker http", extra={"port": self.bound_port, "model": self.spec.name})
        try:
            began = time.perf_counter()
            try:
                await asyncio.to_thread(self.models.get, self.spec)
            except EditflowError as exc:  # missing or broken weights: let the Pod restart
                log.error("model did not load", extra={"error": str(exc)})
                return int(exc.exit_code)
            metrics.MODEL_LOAD_SECONDS.labels(self.spec.name).set(time.perf_counter() - began)
            self.loaded = True
            try:
                nc = await nats.connect(**nats_options(self.settings.nats))
            except Exception as exc:  # no server reachable at start
                log.error("NATS unreachable", extra={"error": repr(exc)})
                return int(ExitCode.UPSTREAM_UNAVAILABLE)
            self._nc = nc
            self.connected = True
            consume = asyncio.create_task(self._consume(nc))
            try:
                await self._until_drained(consume)
            finally:
                self.connected = False
                metrics.READY.set(0)
                with contextlib.suppress(Exception):
                    await nc.drain()
        finally:
            http.close()
            await http.wait_closed()
        log.info("warm worker stopped", extra={"handled": self.handled})
        return 0

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
                consume.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consume
        stop.cancel()
        if consume.done() and not consume.cancelled() and consume.exception():
            raise consume.exception()  # type: ignore[misc]

    async def _consume(self, nc: Any) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig

        js = nc.jetstream()
        await ensure_work_stream(js)
        subscription = await js.pull_subscribe(
            self.subject,
            durable=work_consumer(self.namespace, self.spec.name),
            stream=WORK_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_SECONDS),
        )
        metrics.READY.set(1)
        log.info("warm worker ready", extra={"subject": self.subject})
        while not self.stopping.is_set():
            self.last_beat = time.monotonic()
            try:
                messages = await subscription.fetch(1, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # disconnected: nats-py reconnects, we wait and retry
                log.warning("pull failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._handle(nc, message)

    async def _handle(self, nc: Any, message: Any) -> None:
        # Every line logged while this message is handled names its edit and attempt, so one
        # attempt's lines can be picked out of a worker that serves many (editflow edits logs).
        with log_context(**_request_ids(message.data)):
            await self._handle_in_context(nc, message)

    async def _handle_in_context(self, nc: Any, message: Any) -> None:
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        progress = asyncio.create_task(self._keep_in_progress(message))
        try:
            raw = message.data.decode("utf-8", errors="replace")
            self._current = message
            # The same function as `editflow worker run`; no termination message here.
            result, code = await _in_daemon_thread(
                lambda: execute(raw, self.settings, self.models, termination_log="")
            )
            self._observe(result)
            payload = result_json(result).encode()
            reply_to = (message.headers or {}).get(REPLY_TO_HEADER)
            try:
                if reply_to:
                    await nc.publish(reply_to, payload)
                if result.edit_id != "unknown":
                    await nc.publish(result_subject(self.namespace, result.edit_id), payload)
                await nc.flush()
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
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            self._current = None
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()

    async def _keep_in_progress(self, message: Any) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_SECONDS)
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
        return self.loaded and connected and not self.stopping.is_set()

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
