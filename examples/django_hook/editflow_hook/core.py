"""What the OA system does when a form is approved: the whole hook, with no Django in it.

The first deployment did this inside the approval view::

    resp = requests.post("http://gpu-box:8000/edit",
                         json={"image_url": form.image_url, "prompt": form.instruction},
                         timeout=300)            # a worker thread blocked for ~95 s
    form.result_url = resp.json()["result_url"]  # a timeout lost the edit

:class:`EditHook` replaces it with publish + completion handling:

* ``on_approved`` publishes the approval event (the id is derived from the
  form and approval ids, so calling it again never starts a second edit) and
  waits a bounded time for the outcome;
* on ``success`` the result is attached to the form; on ``failed`` the
  applicant is told what to fix; on ``needs_review`` a ticket is opened for
  a designer; on ``cancelled`` the form records it;
* on timeout the form is marked *pending* and ``retry_pending`` (run from
  cron or a Celery beat) checks again later — resubmitting with the same id,
  which JetStream drops as a duplicate, so an event lost before it was
  stored is sent again and a stored one is not run twice.

Everything the hook touches in the OA system goes through two small
protocols (:class:`FormStore`, :class:`TicketDesk`) so the logic is tested
without Django; ``django_app.py`` implements them with the ORM.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from editflow.events.models import CompletionEvent, Person
from editflow.events.sdk import CompletionTimeout, OAClient

log = logging.getLogger("editflow_hook")


class Outcome(enum.StrEnum):
    """What happened to a form's edit, from the OA side."""

    DONE = "done"
    FAILED = "failed"
    IN_REVIEW = "in_review"
    CANCELLED = "cancelled"
    PENDING = "pending"


@dataclass(frozen=True)
class ApprovedForm:
    """The fields of an approved OA form that the edit needs."""

    form_id: str
    approval_id: str
    applicant_id: str
    instruction: str
    image_url: str
    applicant_name: str | None = None
    approver_ids: Sequence[str] = field(default_factory=tuple)
    usage: str = "default"


class FormStore(Protocol):
    """Where the OA system records an edit's progress on the form."""

    def mark_submitted(self, form: ApprovedForm, event_id: str) -> None: ...
    def mark_pending(self, form_id: str, event_id: str, note: str) -> None: ...
    def attach_result(self, form_id: str, result_url: str, result_key: str | None) -> None: ...
    def mark_failed(self, form_id: str, message: str) -> None: ...
    def mark_in_review(self, form_id: str, ticket_id: str) -> None: ...
    def mark_cancelled(self, form_id: str) -> None: ...
    def pending(self) -> Iterable[ApprovedForm]: ...


class TicketDesk(Protocol):
    """The designers' queue (a helpdesk, a Jira project, a chat group)."""

    def open_ticket(self, form: ApprovedForm, event_id: str, reason: str) -> str: ...


class EditHook:
    """Publish an approved form's edit and turn its completion into OA actions."""

    def __init__(
        self,
        client: OAClient,
        store: FormStore,
        tickets: TicketDesk,
        *,
        wait_seconds: float = 300.0,
    ) -> None:
        self.client = client
        self.store = store
        self.tickets = tickets
        self.wait_seconds = wait_seconds

    async def submit(self, form: ApprovedForm) -> str:
        """Publish the approval event; idempotent per (form, approval)."""
        event_id = await self.client.submit_approval(
            form_id=form.form_id,
            approval_id=form.approval_id,
            applicant=Person(id=form.applicant_id, name=form.applicant_name),
            approvers=[Person(id=a) for a in form.approver_ids],
            image_url=form.image_url,
            instruction=form.instruction,
            usage=form.usage,
        )
        self.store.mark_submitted(form, event_id)
        return event_id

    async def on_approved(
        self, form: ApprovedForm, *, wait_seconds: float | None = None
    ) -> Outcome:
        """Submit and wait (bounded); a timeout leaves the form pending, never lost."""
        event_id = await self.submit(form)
        try:
            done = await self.client.wait_for_completion(
                event_id, timeout=self.wait_seconds if wait_seconds is None else wait_seconds
            )
        except CompletionTimeout as exc:
            self.store.mark_pending(form.form_id, event_id, exc.message)
            log.info("edit of form %s still running; will check again", form.form_id)
            return Outcome.PENDING
        return self.apply(form, done)

    def apply(self, form: ApprovedForm, done: CompletionEvent) -> Outcome:
        """Turn a completion into OA actions (safe to call twice with the same event)."""
        data = done.data
        if data.status == "success":
            self.store.attach_result(form.form_id, data.result_url or "", data.result_key)
            return Outcome.DONE
        if data.status == "cancelled":
            self.store.mark_cancelled(form.form_id)
            return Outcome.CANCELLED
        message = data.error.message if data.error else (data.message or data.status)
        if data.status == "needs_review":
            ticket = self.tickets.open_ticket(form, data.approval_event_id, message)
            self.store.mark_in_review(form.form_id, ticket)
            return Outcome.IN_REVIEW
        self.store.mark_failed(form.form_id, message)
        return Outcome.FAILED

    async def retry_pending(self, *, wait_seconds: float = 5.0) -> dict[str, Outcome]:
        """Check every pending form again (run periodically); returns each form's outcome."""
        results = {}
        for form in list(self.store.pending()):
            results[form.form_id] = await self.on_approved(form, wait_seconds=wait_seconds)
        return results

    async def on_withdrawn(self, form: ApprovedForm, event_id: str, reason: str) -> None:
        """The approval was revoked in OA: cancel the edit (it completes as ``cancelled``)."""
        await self.client.withdraw(
            form_id=form.form_id,
            approval_id=form.approval_id,
            approval_event_id=event_id,
            reason=reason,
        )
