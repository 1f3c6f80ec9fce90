"""The thin Django adapter around :mod:`editflow_hook.core` (copy into your OA project).

Wiring, assuming the OA project has an ``ApprovalForm`` model with
``status``, ``image_url``, ``instruction``, ``applicant``, ``approval_id``
and a few fields for the edit (see :class:`DjangoFormStore`), and a
``DesignTicket`` model for the designers' queue::

    # oa/apps.py
    class OAConfig(AppConfig):
        def ready(self):
            from editflow_hook import django_app  # noqa: F401  (connects the signal)

    # crontab / Celery beat, every 5 minutes:
    python manage.py retry_pending_edits

Settings: ``EDITFLOW_NATS__URL`` and credentials, ``EDITFLOW_EVENTS__SIGNING_KEY``
(the same key the operator has), ``EDITFLOW_HOOK_WAIT_SECONDS`` (default 300,
as the first deployment's HTTP timeout).

The signal only starts the hook *after the transaction commits* and in a
background thread: the approval request returns at once, unlike the first
deployment, whose request thread blocked for the whole GPU run.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from oa.models import ApprovalForm, DesignTicket  # the OA project's own models

from editflow.events.sdk import OAClient
from editflow_hook.core import ApprovedForm, EditHook

SOURCE = os.environ.get("EDITFLOW_HOOK_SOURCE", "/oa/django")
WAIT_SECONDS = float(os.environ.get("EDITFLOW_HOOK_WAIT_SECONDS", "300"))


def _form(row: ApprovalForm) -> ApprovedForm:
    return ApprovedForm(
        form_id=str(row.pk),
        approval_id=row.approval_id,
        applicant_id=str(row.applicant_id),
        applicant_name=row.applicant.get_full_name(),
        approver_ids=[str(a.pk) for a in row.approvers.all()],
        image_url=row.image_url,
        instruction=row.instruction,
        usage=row.usage or "default",
    )


class DjangoFormStore:
    """:class:`editflow_hook.core.FormStore` on the ORM."""

    def _update(self, form_id: str, **fields: object) -> None:
        ApprovalForm.objects.filter(pk=form_id).update(**fields)

    def mark_submitted(self, form: ApprovedForm, event_id: str) -> None:
        self._update(form.form_id, edit_event_id=event_id, edit_state="submitted")

    def mark_pending(self, form_id: str, event_id: str, note: str) -> None:
        self._update(form_id, edit_state="pending", edit_note=note)

    def attach_result(self, form_id: str, result_url: str, result_key: str | None) -> None:
        self._update(form_id, edit_state="done", result_url=result_url, result_key=result_key)

    def mark_failed(self, form_id: str, message: str) -> None:
        self._update(form_id, edit_state="failed", edit_note=message)

    def mark_in_review(self, form_id: str, ticket_id: str) -> None:
        self._update(form_id, edit_state="in_review", edit_note=f"ticket {ticket_id}")

    def mark_cancelled(self, form_id: str) -> None:
        self._update(form_id, edit_state="cancelled")

    def pending(self) -> Iterable[ApprovedForm]:
        for row in ApprovalForm.objects.filter(edit_state__in=("submitted", "pending")):
            yield _form(row)


class DjangoTicketDesk:
    """:class:`editflow_hook.core.TicketDesk` as a ``DesignTicket`` row."""

    def open_ticket(self, form: ApprovedForm, event_id: str, reason: str) -> str:
        ticket, _ = DesignTicket.objects.get_or_create(
            edit_event_id=event_id,
            defaults={
                "form_id": form.form_id,
                "instruction": form.instruction,
                "image_url": form.image_url,
                "reason": reason,
            },
        )
        return str(ticket.pk)


async def run_hook(form: ApprovedForm | None = None, *, retry_pending: bool = False) -> None:
    """One connection per run: approve one form, or sweep the pending ones."""
    client = await OAClient.connect(source=SOURCE)
    try:
        hook = EditHook(client, DjangoFormStore(), DjangoTicketDesk(), wait_seconds=WAIT_SECONDS)
        if form is not None:
            await hook.on_approved(form)
        if retry_pending:
            await hook.retry_pending()
    finally:
        await client.close()


@receiver(post_save, sender=ApprovalForm)
def start_edit_when_approved(sender: type, instance: ApprovalForm, **kwargs: object) -> None:
    """Level 2 approved and not yet submitted: start the edit once the row is committed."""
    if instance.status != "approved" or instance.edit_state:
        return
    form = _form(instance)
    transaction.on_commit(
        lambda: threading.Thread(
            target=asyncio.run, args=(run_hook(form),), name=f"edit-{form.form_id}", daemon=True
        ).start()
    )
