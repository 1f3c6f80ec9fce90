"""The OA-side SDK: submit an approved edit, withdraw it, wait for its outcome.

This is what an OA system (and editflow's own HTTP gateway) uses instead of a
synchronous HTTP call::

    client = await OAClient.connect(settings, source="https://oa.example.com")
    event_id = await client.submit_approval(
        form_id="F-1024", approval_id="AP-77", applicant=Person(id="u42", name="李雷"),
        image_url="https://oa.example.com/files/poster.png",
        instruction="把背景换成海边日落", usage="wechat-article",
    )
    try:
        done = await client.wait_for_completion(event_id, timeout=300)
    except CompletionTimeout:
        ...   # the edit continues; ask again later with the same id
    await client.close()

Guarantees:

* ``submit_*`` is idempotent: the event id defaults to a uuid5 of (source,
  form id, approval id), so a retried submission is a JetStream duplicate.
  It returns once JetStream stored the event (retrying through NATS restarts).
* ``wait_for_completion`` misses nothing: the client subscribes to all
  completion subjects when it connects (before anything is published), and
  also reads the completions stream by the approval's subject — at the
  start, every few seconds while waiting and at the timeout — so an outcome
  published before the call, or while NATS was reconnecting, is found.
* With a signing key configured (``EDITFLOW_EVENTS__SIGNING_KEY``) every
  approval and withdraw event is signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from editflow.core.errors import RetriableError
from editflow.core.settings import Settings, get_settings
from editflow.events.binding import ContentMode
from editflow.events.connection import connect
from editflow.events.models import (
    COMPLETION_V1,
    PROGRESS_V1,
    SELECTION_V1,
    ApprovalData,
    ApprovalEvent,
    Callback,
    CloudEvent,
    CompletionEvent,
    Generation,
    Person,
    Priority,
    ProgressEvent,
    SelectData,
    SelectEvent,
    SelectionEvent,
    Template,
    WithdrawData,
    WithdrawEvent,
    approval_event_id,
    preview_event_id,
)
from editflow.events.problems import EventRejected
from editflow.events.publish import publish_event
from editflow.events.topology import Topology, provision
from editflow.events.validation import Policy, parse_event

log = logging.getLogger("editflow.events.sdk")


class CompletionTimeout(RetriableError):
    """No completion arrived in time. The edit goes on: wait again later with the same id."""

    code = "completion_timeout"

    def __init__(self, event_id: str, timeout: float) -> None:
        super().__init__(
            f"no completion for event {event_id} within {timeout:g}s; the edit continues, "
            "ask again later with the same id"
        )
        self.event_id = event_id


class OAClient:
    """A connection to editflow's event bus for an OA system."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        *,
        source: str,
        mode: ContentMode = "structured",
        poll_interval: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.topology = Topology(settings.events)
        self.source = source
        self.mode = mode
        self.poll_interval = poll_interval
        key = settings.events.signing_key
        self._signing_key = key.get_secret_value() if key else None
        self._policy = Policy(
            max_event_bytes=settings.events.max_event_bytes,
            accept={COMPLETION_V1, SELECTION_V1, PROGRESS_V1},
        )
        self._waiters: dict[str, list[asyncio.Future[CompletionEvent]]] = defaultdict(list)
        self._sub: Any = None

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        source: str = "/oa",
        name: str = "editflow-oa-client",
        mode: ContentMode = "structured",
        provision_streams: bool = False,
        poll_interval: float = 5.0,
    ) -> OAClient:
        """Connect with the NATS credentials and TLS of ``settings`` and start listening.

        ``provision_streams`` creates the streams if missing (the operator
        normally does; handy for a standalone demo).
        """
        settings = settings or get_settings()
        nc = await connect(settings.nats, name=name)
        client = cls(nc, settings, source=source, mode=mode, poll_interval=poll_interval)
        if provision_streams:
            await provision(client.js, client.topology)
        client._sub = await nc.subscribe(
            client.topology.completions_wildcard, cb=client._on_message
        )
        return client

    async def close(self) -> None:
        """Stop listening and close the connection (pending publishes are flushed)."""
        for futures in self._waiters.values():
            for fut in futures:
                fut.cancel()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        if not self.nc.is_closed:
            await self.nc.close()

    async def __aenter__(self) -> OAClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- publishing --------------------------------------------------------------------------
    async def publish(self, event: ApprovalEvent | WithdrawEvent | SelectEvent) -> str:
        """Publish a prepared OA event to its subject; returns its id (also for a duplicate)."""
        if isinstance(event, ApprovalEvent):
            subject = self.topology.approval_subject
        elif isinstance(event, SelectEvent):
            subject = self.topology.select_subject
        else:
            subject = self.topology.withdraw_subject
        await publish_event(self.js, event, subject, mode=self.mode, signing_key=self._signing_key)
        return event.id

    async def submit_approval(
        self,
        *,
        form_id: str,
        approval_id: str,
        applicant: Person,
        instruction: str,
        image_url: str | None = None,
        image_key: str | None = None,
        approvers: Sequence[Person] = (),
        usage: str = "default",
        template: Template | None = None,
        priority: Priority = "normal",
        callback: Callback | None = None,
        model: str | None = None,
        generation: Generation | None = None,
        event_id: str | None = None,
        department: str | None = None,
        cost_center: str | None = None,
        variants: int = 1,
        stage: Literal["final", "preview"] = "final",
    ) -> str:
        """Publish an approval event; returns its id, the key to wait on and to withdraw with.

        ``variants`` (1..4) asks for several results to pick from (:meth:`select`);
        ``stage="preview"`` asks for an approver's approximate preview (:meth:`submit_preview`).
        Raises ``pydantic.ValidationError`` for invalid fields before anything is sent.
        """
        data = ApprovalData(
            form_id=form_id, approval_id=approval_id, applicant=applicant,
            approvers=list(approvers), image_url=image_url, image_key=image_key,
            instruction=instruction, usage=usage, template=template, priority=priority,
            callback=callback, model=model, generation=generation,
            department=department, cost_center=cost_center, variants=variants, stage=stage,
        )  # fmt: skip
        default_id = preview_event_id if stage == "preview" else approval_event_id
        event = ApprovalEvent(
            id=event_id or default_id(self.source, form_id, approval_id),
            source=self.source,
            subject=f"{form_id}/{approval_id}"[:256],
            data=data,
        )
        return await self.publish(event)

    async def withdraw(
        self,
        *,
        form_id: str,
        approval_id: str,
        approval_event_id: str | None = None,
        reason: str | None = None,
        withdrawn_by: Person | None = None,
        event_id: str | None = None,
    ) -> str:
        """Publish a withdraw event (the edit is cancelled and completes as ``cancelled``)."""
        data = WithdrawData(
            form_id=form_id,
            approval_id=approval_id,
            approval_event_id=approval_event_id,
            reason=reason,
            withdrawn_by=withdrawn_by,
        )
        event = WithdrawEvent(
            id=event_id or f"withdraw:{approval_event_id or f'{form_id}/{approval_id}'}",
            source=self.source,
            subject=f"{form_id}/{approval_id}"[:256],
            data=data,
        )
        return await self.publish(event)

    async def submit_preview(self, **fields: Any) -> str:
        """An approver's preview of the edit an approval asks for (after the first approval
        level): the Turbo model at 8 steps and a reduced size, completed with
        ``stage="preview"`` and ``approximate=True``. Its id is its own (the final approval of
        the same form and approval instance is not its duplicate); wait on it as on any."""
        return await self.submit_approval(stage="preview", **fields)

    async def select(
        self,
        *,
        form_id: str,
        approval_id: str,
        approval_event_id: str,
        variant: int,
        selected_by: Person | None = None,
    ) -> str:
        """Publish the applicant's pick among an edit's variants (1-based).

        editflow records it in the EditJob's status and the audit log and publishes it as a
        selection event (:meth:`get_selection`). Raises ``pydantic.ValidationError`` for a
        variant outside 1..4 before anything is sent; a variant the edit does not have is
        refused by the operator (dead letter naming ``data.variant``).
        """
        data = SelectData(
            form_id=form_id,
            approval_id=approval_id,
            approval_event_id=approval_event_id,
            variant=variant,
            selected_by=selected_by,
        )
        event = SelectEvent(
            id=f"select:{approval_event_id}:{variant}",
            source=self.source,
            subject=f"{form_id}/{approval_id}"[:256],
            data=data,
        )
        return await self.publish(event)

    async def get_selection(self, approval_event_id: str) -> SelectionEvent | None:
        """The latest recorded choice of a variant for an approval, if any."""
        event = await self._last_event(self.topology.selection_subject(approval_event_id))
        return event if isinstance(event, SelectionEvent) else None

    async def get_progress(self, approval_event_id: str) -> ProgressEvent | None:
        """Where the edit is before its completion: queued (with its place) or running.

        Best effort: the operator publishes a phase change at once and a new queue position
        at most every few seconds; ``None`` before the first one (or after a NATS outage).
        """
        event = await self._last_event(self.topology.progress_subject(approval_event_id))
        return event if isinstance(event, ProgressEvent) else None

    # -- completions -------------------------------------------------------------------------
    async def get_completion(self, approval_event_id: str) -> CompletionEvent | None:
        """The latest completion of an approval from the completions stream, if any."""
        event = await self._last_event(self.topology.completion_subject(approval_event_id))
        return event if isinstance(event, CompletionEvent) else None

    async def _last_event(self, subject: str) -> CloudEvent | None:
        """The last event stored on ``subject`` of the completions stream (None: none, or
        one that does not validate, which is logged)."""
        try:
            raw = await self.js.get_last_msg(self.topology.completions_stream, subject)
        except NotFoundError:
            return None
        try:
            return parse_event(raw.data or b"", raw.headers, subject=subject, policy=self._policy)
        except EventRejected as exc:
            log.error("ignoring an invalid event on %s: %s", subject, exc)
            return None

    async def wait_for_completion(self, approval_event_id: str, timeout: float) -> CompletionEvent:
        """The completion of an approval; raises :class:`CompletionTimeout` after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CompletionEvent] = loop.create_future()
        self._waiters[approval_event_id].append(future)
        deadline = loop.time() + timeout
        try:
            while True:
                try:
                    found = await self.get_completion(approval_event_id)
                except Exception as exc:  # NATS reconnecting: keep waiting on the subscription
                    log.info("reading completion %s failed: %r", approval_event_id, exc)
                    found = None
                if found is not None:
                    return found
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CompletionTimeout(approval_event_id, timeout)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(future), min(remaining, self.poll_interval)
                    )
        finally:
            waiters = self._waiters.get(approval_event_id, [])
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(approval_event_id, None)

    async def submit_and_wait(self, *, timeout: float, **fields: Any) -> CompletionEvent:
        """:meth:`submit_approval` then :meth:`wait_for_completion` (the legacy sync call)."""
        event_id = await self.submit_approval(**fields)
        return await self.wait_for_completion(event_id, timeout)

    def _parse(
        self, body: bytes, headers: dict[str, str] | None, subject: str
    ) -> CompletionEvent | None:
        try:
            event = parse_event(body, headers, subject=subject, policy=self._policy)
        except EventRejected as exc:
            log.error("ignoring an invalid completion on %s: %s", subject, exc)
            return None
        # Selections share the completions stream; completion waiters never see one.
        return event if isinstance(event, CompletionEvent) else None

    async def _on_message(self, msg: Msg) -> None:
        event = self._parse(msg.data, msg.headers, msg.subject)
        if event is None:
            return
        for future in self._waiters.get(event.data.approval_event_id, []):
            if not future.done():
                future.set_result(event)
