"""The gateway's shell: the event bus (through the OA SDK) and S3.

:class:`Bus` is exactly what an OA system uses (:class:`~editflow.events.sdk.OAClient`):
publish the approval event, read or wait for its completion by subject.
There is one path into the system, and no database: an edit's status is its
completion event in the completions stream.

:class:`Store` keeps uploads and one small JSON record per accepted edit in
the platform bucket (``<record_prefix>/<id>.json``: when, by whom, the
request fingerprint), which is how ``GET /v1/edits/{id}`` tells a pending
edit from an id nobody issued, and how a reused Idempotency-Key is checked;
S3 lifecycle rules expire both with the inputs.

An approval event the operator refused never completes; its dead letter does
(:class:`DeadLetterIndex`), and the API reports such an edit as ``rejected``.

Both connect lazily and keep retrying, so the gateway starts (and answers
``/healthz``) while NATS or S3 is still coming up; ``/readyz`` says when
they are reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from minio.error import S3Error
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from editflow.core.backoff import Backoff
from editflow.core.errors import UpstreamError
from editflow.core.s3 import presigning_client, s3_client
from editflow.core.settings import Settings
from editflow.events.dlq import get_dead_letter
from editflow.events.models import (
    ApprovalEvent,
    CompletionEvent,
    Person,
    ProgressEvent,
    SelectionEvent,
)
from editflow.events.sdk import CompletionTimeout, OAClient
from editflow.events.topology import Topology, provision
from editflow.gateway.service import Rejection

log = logging.getLogger("editflow.gateway")


class EditBus(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, event: ApprovalEvent) -> None: ...
    async def completion(self, edit_id: str) -> CompletionEvent | None: ...
    async def wait(self, edit_id: str, timeout: float) -> CompletionEvent | None: ...
    async def rejection(self, edit_id: str) -> Rejection | None: ...
    async def select(
        self, *, form_id: str, approval_id: str, edit_id: str, variant: int, by: str | None
    ) -> None: ...
    async def selection(self, edit_id: str) -> SelectionEvent | None: ...
    async def progress(self, edit_id: str) -> ProgressEvent | None: ...
    async def check(self) -> str: ...


class DeadLetterIndex:
    """Which approval events the operator dead-lettered, read incrementally from the DLQ.

    Without it an edit whose event was refused (bad signature, a spec the
    cluster refuses) would look ``pending`` for ever. The DLQ has no lookup
    by event id, so the index reads each new dead letter once (at most once
    a second, the last ``backlog`` at start) and keeps those of approval
    events. A hit is checked again before it is reported: a dead letter
    that was replayed (``editflow dlq replay``) is gone, and the edit is
    pending again.
    """

    def __init__(
        self, js: JetStreamContext, topology: Topology, *, backlog: int = 1000, keep: int = 10_000
    ) -> None:
        self.js = js
        self.topology = topology
        self.backlog = backlog
        self.keep = keep
        self.next_seq: int | None = None
        self.letters: OrderedDict[str, tuple[int, Rejection]] = OrderedDict()
        self._lock = asyncio.Lock()
        self._checked = 0.0

    async def lookup(self, edit_id: str) -> Rejection | None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self._checked >= 1.0:
                await self._refresh()
                self._checked = loop.time()
            hit = self.letters.get(edit_id)
            if hit is None:
                return None
            try:
                await get_dead_letter(self.js, self.topology, hit[0])
            except NotFoundError:  # replayed or expired
                self.letters.pop(edit_id, None)
                return None
            return hit[1]

    async def _refresh(self) -> None:
        try:
            state = (await self.js.stream_info(self.topology.dlq_stream)).state
        except NotFoundError:
            return
        last = state.last_seq
        start = self.next_seq if self.next_seq is not None else last - self.backlog + 1
        for seq in range(max(start, state.first_seq, 1), last + 1):
            try:
                letter = await get_dead_letter(self.js, self.topology, seq)
            except NotFoundError:
                continue
            if letter.subject == self.topology.approval_subject and letter.event_id:
                rejection = Rejection(letter.reason, letter.message, letter.time)
                self.letters[letter.event_id] = (seq, rejection)
                while len(self.letters) > self.keep:
                    self.letters.popitem(last=False)
        self.next_seq = last + 1


class ObjectStore(Protocol):
    async def check(self) -> str: ...
    async def get_record(self, edit_id: str) -> dict[str, Any] | None: ...
    async def put_record(self, edit_id: str, record: dict[str, Any]) -> None: ...
    async def put_upload(self, key: str, data: bytes, content_type: str) -> None: ...
    def presign(self, key: str) -> tuple[str, datetime]: ...


class Bus:
    """NATS JetStream through the OA SDK, connected in the background."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: OAClient | None = None
        self.dead_letters: DeadLetterIndex | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error = "connecting"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="gateway-nats-connect")

    async def _connect(self) -> None:
        backoff = Backoff(1.0, 10.0)
        while self.client is None:
            try:
                client = await OAClient.connect(
                    self.settings,
                    source=self.settings.gateway.source,
                    name="editflow-gateway",
                    poll_interval=2.0,
                )
                if self.settings.gateway.provision_streams:
                    await provision(client.js, client.topology)
                self.dead_letters = DeadLetterIndex(client.js, client.topology)
                self.client = client
                log.info("connected to NATS at %s", self.settings.nats.url)
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("NATS not reachable yet: %s; retrying in %.0fs", exc, backoff.delay)
                await asyncio.sleep(backoff.grow())

    def jetstream(self) -> JetStreamContext | None:
        """The connected JetStream context, or ``None`` while NATS is unreachable (never waits)."""
        if self.client is None or not self.client.nc.is_connected:
            return None
        return self.client.js

    def _ready(self) -> OAClient:
        if self.client is None or not self.client.nc.is_connected:
            raise UpstreamError(f"the event bus is unavailable ({self._last_error}); retry shortly")
        return self.client

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.client is not None:
            await self.client.close()

    async def publish(self, event: ApprovalEvent) -> None:
        await self._ready().publish(event)

    async def completion(self, edit_id: str) -> CompletionEvent | None:
        client = self._ready()
        try:
            return await client.get_completion(edit_id)
        except Exception as exc:
            raise UpstreamError(f"reading the completions stream failed: {exc!r}") from exc

    async def wait(self, edit_id: str, timeout: float) -> CompletionEvent | None:
        try:
            return await self._ready().wait_for_completion(edit_id, timeout)
        except CompletionTimeout:
            return None

    async def select(
        self, *, form_id: str, approval_id: str, edit_id: str, variant: int, by: str | None
    ) -> None:
        try:
            await self._ready().select(
                form_id=form_id,
                approval_id=approval_id,
                approval_event_id=edit_id,
                variant=variant,
                selected_by=Person(id=by) if by else None,
            )
        except Exception as exc:
            raise UpstreamError(f"publishing the selection failed: {exc!r}") from exc

    async def selection(self, edit_id: str) -> SelectionEvent | None:
        try:
            return await self._ready().get_selection(edit_id)
        except Exception as exc:
            raise UpstreamError(f"reading the selections failed: {exc!r}") from exc

    async def progress(self, edit_id: str) -> ProgressEvent | None:
        try:
            return await self._ready().get_progress(edit_id)
        except Exception as exc:
            raise UpstreamError(f"reading the progress failed: {exc!r}") from exc

    async def rejection(self, edit_id: str) -> Rejection | None:
        self._ready()
        assert self.dead_letters is not None
        try:
            return await self.dead_letters.lookup(edit_id)
        except Exception as exc:
            raise UpstreamError(f"reading the dead letters failed: {exc!r}") from exc

    async def check(self) -> str:
        client = self._ready()
        topology = client.topology
        try:
            await client.js.stream_info(topology.approvals_stream)
            await client.js.stream_info(topology.completions_stream)
        except Exception as exc:
            raise UpstreamError(f"JetStream streams not available: {exc!r}") from exc
        return "ok"


class Store:
    """The platform bucket (MinIO client calls run in threads: they block)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3.bucket
        self.client = s3_client(settings.s3)
        self.signer = presigning_client(settings.s3)
        self.record_prefix = settings.gateway.record_prefix.rstrip("/")

    def _record_key(self, edit_id: str) -> str:
        return f"{self.record_prefix}/{edit_id}.json"

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(f"S3 {what} failed: {exc!r}") from exc

    async def check(self) -> str:
        if not await self._call("bucket check", self.client.bucket_exists, self.bucket):
            raise UpstreamError(f"bucket {self.bucket!r} does not exist")
        return "ok"

    async def get_record(self, edit_id: str) -> dict[str, Any] | None:
        def read() -> bytes | None:
            try:
                resp = self.client.get_object(self.bucket, self._record_key(edit_id))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise UpstreamError(f"S3 read of the edit record failed: {exc}") from exc
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        raw = await self._call("read", read)
        return json.loads(raw) if raw else None

    async def put_record(self, edit_id: str, record: dict[str, Any]) -> None:
        body = json.dumps(record, ensure_ascii=False).encode()
        await self._put(self._record_key(edit_id), body, "application/json")

    async def put_upload(self, key: str, data: bytes, content_type: str) -> None:
        await self._put(key, data, content_type)

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        def put() -> None:
            try:
                self.client.put_object(
                    self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
                )
            except S3Error as exc:
                raise UpstreamError(f"S3 write of {key} failed: {exc}") from exc

        await self._call("write", put)

    def presign(self, key: str) -> tuple[str, datetime]:
        """A fresh GET URL for ``key`` on the public endpoint (computed locally, no call)."""
        expiry = timedelta(seconds=self.settings.s3.presign_expiry_seconds)
        url = self.signer.presigned_get_object(self.bucket, key, expires=expiry)
        return url, datetime.now(UTC) + expiry
