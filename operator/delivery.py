"""Delivering an outcome: its parts sent, then recorded in one status write.

An outcome is delivered from its EditJob (issue 21 item 2): the final phase and the
outcome's id go in one status write (:func:`~editflow.operator.decide.decide`), then
:class:`EditJobDelivery` publishes the completion with its id as ``Nats-Msg-Id``, the
review request, the audit record and the NATS callback, makes one attempt at the
signed webhook, and records what happened in one more write: ``completionPublishedAt``
and ``callbackDelivery`` when everything is done, or the webhook's retry state
(``status.delivery``) when it must be tried again after a backoff. Only an outcome that
cannot be delivered from its EditJob (the EditJob is deleted first) goes through the
outbox's EditOutcome object (:mod:`.outbox`); both send with :class:`OutcomeSender`.

Delivery is at least once: a crash between sending a part and recording it sends it
again with the same id (JetStream drops a republish inside its duplicate window; webhook
receivers drop it by ``Idempotency-Key``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from editflow.core.kubetime import parse_stamp, stamp
from editflow.core.settings import OperatorSettings
from editflow.events.audit import AuditRecord, publish_audit
from editflow.events.binding import encode
from editflow.events.callback_subjects import CallbackSubjects
from editflow.events.models import CompletionEvent, ReviewEvent
from editflow.events.outcomes import publish_completion, publish_review
from editflow.events.topology import Topology
from editflow.operator import metrics
from editflow.operator.callbacks import deliver_callback, webhook_refusal
from editflow.operator.kube import JSON
from editflow.operator.outcomes import outcome_parts, wire_body

log = logging.getLogger("editflow.operator.delivery")

#: The parts that go to NATS (all at once, before any webhook).
NATS_PARTS = ("completion", "review", "audit", "subject")


class FinishedLedger(Protocol):
    """The part of the approval ledger a delivery writes to."""

    async def record_finished(self, event_id: str, *, outcome: str) -> Any: ...


def parts_present(parts: dict[str, Any]) -> list[tuple[str, bool]]:
    """Each part an outcome may have, and whether this one has it."""
    return [
        ("completion", bool(parts.get("completion"))),
        ("review", bool(parts.get("review"))),
        ("audit", bool(parts.get("audit"))),
        ("subject", bool(parts.get("natsSubject") and parts.get("completion"))),
        ("webhook", bool(parts.get("webhookUrl") and parts.get("completion"))),
        ("alert", bool(parts.get("alert"))),
    ]


def all_sent(parts: dict[str, Any], done: list[str], gave_up: list[str]) -> bool:
    return all(p in done or p in gave_up for p, present in parts_present(parts) if present)


def callback_state(parts: dict[str, Any], gave_up: list[str]) -> str:
    """``callbackDelivery`` of a delivered outcome."""
    if "webhook" in gave_up:
        return "gave_up"
    return "delivered" if parts.get("webhookUrl") else "none"


class OutcomeSender:
    """Sends an outcome's parts; ``done`` and ``gave_up`` say what is already behind it."""

    def __init__(
        self,
        op: OperatorSettings,
        *,
        nats: NATS | None,
        topology: Topology,
        now: Callable[[], datetime],
    ) -> None:
        self.op = op
        self.nats = nats
        self.topology = topology
        self.now = now

    async def send_nats(self, parts: dict[str, Any], done: list[str], gave_up: list[str]) -> None:
        """Completion, review, audit, then the NATS callback subject. Raises when NATS is
        unreachable (nothing is recorded then: the next round sends it all again)."""
        if not (parts.get("completion") or parts.get("review")):
            return
        if self.nats is None or not self.nats.is_connected:
            raise ConnectionError("not connected")
        js = self.nats.jetstream()
        event = CompletionEvent.model_validate_json(parts["completion"])
        if "completion" not in done:
            ack = await publish_completion(js, self.topology, event)
            metrics.COMPLETIONS.labels(
                event.data.status, "true" if ack.duplicate else "false"
            ).inc()
            done.append("completion")
        if parts.get("review") and "review" not in done:
            await publish_review(
                js, self.topology, ReviewEvent.model_validate_json(parts["review"])
            )
            done.append("review")
        if parts.get("audit") and "audit" not in done:
            await publish_audit(js, self.topology, AuditRecord.model_validate_json(parts["audit"]))
            done.append("audit")
        subject = parts.get("natsSubject")
        if subject and "subject" not in done and "subject" not in gave_up:
            if why := CallbackSubjects.from_settings(self.topology.settings).problem(subject):
                log.warning("callback subject refused, not published: %s", why,
                            extra={"editjob": parts.get("editjob")})  # fmt: skip
                gave_up.append("subject")
                return
            wire = encode(event)
            await self.nats.publish(subject, wire.body, headers=wire.headers)
            await self.nats.flush(timeout=5)
            done.append("subject")

    async def send_http(
        self,
        parts: dict[str, Any],
        state: dict[str, Any],
        done: list[str],
        gave_up: list[str],
    ) -> str | None:
        """One attempt per pending webhook/alert; the backoff goes into ``state``
        (``attempts``, ``nextAttemptAt``). The one webhook retry policy of the operator:
        :func:`deliver_callback` makes a single attempt and this backoff is the only retry."""
        pending = [
            (part, url, body)
            for part, url, body in (
                ("webhook", parts.get("webhookUrl"), parts.get("completion")),
                ("alert", self.op.alert_webhook_url, parts.get("alert")),
            )
            if body and part not in done and part not in gave_up
        ]
        if unconfigured := [p for p, url, _ in pending if not url]:
            gave_up.extend(unconfigured)  # the alert webhook was unset since: nowhere to page
            pending = [entry for entry in pending if entry[1]]
        if not pending:
            return None
        due = state.get("nextAttemptAt")
        if due and due > stamp(self.now()):
            return state.get("lastError")
        error = None
        for part, url, body in pending:
            if refused := await webhook_refusal(url, self.op):
                gave_up.append(part)  # refused for good: retrying until expiry cannot help
                metrics.OUTBOX_DELIVERIES.labels(part, "refused").inc()
                error = f"{part}: {refused}"
                continue
            if part == "webhook":
                event = CompletionEvent.model_validate_json(body)
                payload, ident = wire_body(event), event.id
                ctype = "application/cloudevents+json; charset=utf-8"
            else:
                payload, ident, ctype = (
                    body.encode(),
                    parts.get("editjobUid", ""),
                    "application/json",
                )
            ok = await deliver_callback(url, payload, ident, self.op, content_type=ctype)
            metrics.OUTBOX_DELIVERIES.labels(part, "delivered" if ok else "failed").inc()
            if ok:
                done.append(part)
            else:
                error = f"{part}: not accepted by {url}"
        attempts = int(state.get("attempts") or 0) + 1
        state["attempts"] = attempts
        remaining = [p for p, _, _ in pending if p not in done and p not in gave_up]
        expired = parts.get("expiresAt", "9999") <= stamp(self.now())
        if remaining and (attempts >= self.op.callback_max_attempts or expired):
            gave_up.extend(remaining)
            for part in remaining:
                metrics.OUTBOX_DELIVERIES.labels(part, "gave_up").inc()
            log.error("gave up delivering %s after %d attempts", remaining, attempts,
                      extra={"editjob": parts.get("editjob")})  # fmt: skip
            state.pop("nextAttemptAt", None)
        elif remaining:
            wait = self.op.callback_backoff_seconds * (2 ** (attempts - 1))
            state["nextAttemptAt"] = stamp(self.now() + timedelta(seconds=wait))
        return error


async def note_finished(
    ledger: FinishedLedger | None, approval_event_id: str, event: CompletionEvent
) -> None:
    """The approval ledger learns the approval is answered (a late redelivery then knows)."""
    if ledger is None or approval_event_id.startswith("editjob:"):
        return
    try:
        await ledger.record_finished(approval_event_id, outcome=event.data.status)
    except Exception as exc:  # the ledger is a guard, never a reason to stall
        log.warning("could not note the approval as finished: %r", exc)


#: Writes an EditJob's status: the reconciler's one writer (:class:`.statuswriter.StatusWriter`).
WriteStatus = Callable[[JSON, JSON], Awaitable[JSON | None]]


class EditJobDelivery:
    """Delivers final EditJobs' outcomes from the EditJobs, beside the reconciles.

    :meth:`submit` starts a delivery unless one of that EditJob runs already; the
    reconciler submits every final EditJob whose outcome is not recorded as delivered
    (and looks again every ``delivery_recheck_seconds`` while it is not).
    """

    def __init__(
        self,
        op: OperatorSettings,
        sender: OutcomeSender,
        *,
        write: WriteStatus,
        ledger: FinishedLedger | None = None,
        concurrency: int = 16,
    ) -> None:
        self.op = op
        self.sender = sender
        self.write = write
        self.ledger = ledger
        self.now = sender.now
        self._slots = asyncio.Semaphore(concurrency)
        self._busy: dict[tuple[str, str], asyncio.Task[None]] = {}

    def submit(self, editjob: JSON, *, review: bool) -> None:
        meta = editjob["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self._busy:
            return
        task = asyncio.create_task(self._guarded(editjob, review))
        self._busy[key] = task
        task.add_done_callback(lambda _t: self._busy.pop(key, None))

    async def _guarded(self, editjob: JSON, review: bool) -> None:
        async with self._slots:
            try:
                await self.deliver(editjob, review=review)
            except Exception as exc:
                meta = editjob["metadata"]
                log.warning(
                    "delivering the outcome failed, trying again: %r",
                    exc,
                    extra={"editjob": f"{meta['namespace']}/{meta['name']}"},
                )

    async def close(self) -> None:
        for task in list(self._busy.values()):
            task.cancel()

    async def deliver(self, editjob: JSON, *, review: bool) -> JSON | None:
        """Send what is not sent yet, then record it in one status write."""
        meta, status = editjob["metadata"], editjob.get("status") or {}
        where = f"{meta['namespace']}/{meta['name']}"
        state = dict(status.get("delivery") or {})
        done = list(state.pop("delivered", None) or [])
        gave_up = list(state.pop("gaveUp", None) or [])
        parts = outcome_parts(editjob, review=review)
        parts["editjob"] = where
        parts["editjobUid"] = meta.get("uid", "")
        finished_at = parse_stamp(status.get("finishedAt")) or self.now()
        parts["expiresAt"] = stamp(finished_at + timedelta(seconds=self.op.outbox_expiry_seconds))
        if review:
            log.warning(
                "needs review: %s",
                status.get("message"),
                extra={"editjob": where, "prompt": editjob["spec"].get("prompt")},
            )
        await self.sender.send_nats(parts, done, gave_up)
        error = await self.sender.send_http(parts, state, done, gave_up)
        event = CompletionEvent.model_validate_json(parts["completion"])
        if all_sent(parts, done, gave_up):
            patch: JSON = {
                "completionEventId": event.id,
                "completionPublishedAt": stamp(self.now()),
                "callbackDelivery": callback_state(parts, gave_up),
                "delivery": None,
            }
        else:
            patch = {
                "completionEventId": event.id,
                "completionPublishedAt": status.get("completionPublishedAt")
                or (stamp(self.now()) if "completion" in done else None),
                "callbackDelivery": "pending",
                "delivery": {
                    **state,
                    "delivered": done,
                    "gaveUp": gave_up,
                    "lastError": (error or "")[:500] or None,
                },
            }
        written = await self.write(editjob, patch)
        if patch["callbackDelivery"] != "pending":
            await note_finished(self.ledger, parts["approvalEventId"], event)
            log.info(
                "outcome delivered: %s",
                event.data.status,
                extra={"editjob": where, "delivered": done, "gave_up": gave_up},
            )
        return written
