"""Where outcomes go until they are delivered: a durable outbox in the apiserver.

The reconciler decides *that* an EditJob's outcome must be delivered; the
:class:`Outbox` makes that durable before anything is sent: one small
``EditOutcome`` object per outcome (not one per namespace, which would be a
hot spot at 50 events/s) holding the completion CloudEvent, the review
request, the OA callbacks and any alert. Writing it needs only the apiserver,
so a final phase is recorded, and a deleted EditJob lets go of its finalizer,
while NATS is down; the outcome still arrives.

A :class:`Deliverer` (one loop on the leader, fed by a watch of the
EditOutcomes) sends each part: the completion to JetStream with its stable id
as ``Nats-Msg-Id`` (a repeat inside the duplicate window is dropped), the
review request, the NATS callback subject, then the signed HTTPS webhook and
alert with exponential backoff, the attempt count and next attempt kept in
the object's status so retries survive operator restarts. Once every part
was delivered (or a webhook gave up or expired) the object is removed and the
EditJob's status says so (``completionPublishedAt``, ``callbackDelivery``).

Delivery is at least once: a crash between sending a part and recording it
sends it again with the same id (JetStream and webhook receivers drop it by
``Nats-Msg-Id`` / ``Idempotency-Key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from nats.aio.client import Client as NATS

from editflow.core.kubetime import stamp
from editflow.core.settings import OperatorSettings
from editflow.core.urlguard import redacted
from editflow.events.audit import AuditRecord, publish_audit
from editflow.events.binding import encode
from editflow.events.callback_subjects import CallbackSubjects
from editflow.events.models import (
    CompletionEvent,
    ReviewEvent,
)
from editflow.events.outcomes import (
    publish_completion,
    publish_review,
)
from editflow.events.topology import Topology
from editflow.operator import metrics
from editflow.operator.callbacks import deliver_callback, webhook_refusal
from editflow.operator.crd import (
    GROUP,
    OUTCOME_KIND,
    VERSION,
    editjob_path,
    editoutcome_path,
)
from editflow.operator.decision import Decision
from editflow.operator.informer import Key, Store
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import LABEL_EDITJOB, MANAGED_BY
from editflow.operator.outcomes import (
    alert_if_needed_body,
    audit_for,
    completion_for,
    review_for,
    wire_body,
)

log = logging.getLogger("editflow.operator.outbox")

NATS_PARTS = ("completion", "review", "audit", "subject")


def outcome_name(key: str) -> str:
    """A valid object name for an outcome id (ids hold ':' and may be long)."""
    return "eo-" + hashlib.sha256(key.encode()).hexdigest()[:40]


class FinishedLedger(Protocol):
    """The part of the approval ledger the outbox writes to."""

    async def record_finished(self, event_id: str, *, outcome: str) -> Any: ...


def outcome_object(
    editjob: JSON,
    name: str,
    spec: dict[str, Any],
    *,
    expires: datetime,
) -> JSON:
    meta = editjob["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": OUTCOME_KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**MANAGED_BY, LABEL_EDITJOB: meta["name"]},
        },
        "spec": {
            "editjob": f"{meta['namespace']}/{meta['name']}",
            "editjobUid": meta.get("uid", ""),
            "expiresAt": stamp(expires),
            **{k: v for k, v in spec.items() if v is not None},
        },
    }


class Outbox:
    """Writes outcomes (and alerts) as EditOutcome objects; :class:`Deliverer` sends them."""

    def __init__(
        self,
        op: OperatorSettings,
        kube: AsyncKube,
        *,
        store: Store,
        now: Callable[[], datetime],
    ) -> None:
        self.op = op
        self.kube = kube
        self.store = store
        self.now = now
        self.written = asyncio.Event()
        self._alerts: set[asyncio.Task[None]] = set()

    async def _write(self, obj: JSON) -> None:
        meta = obj["metadata"]
        try:
            created = await self.kube.create(editoutcome_path(meta["namespace"]), obj)
            self.store.upsert(created)
            metrics.OUTBOX_WRITTEN.inc()
        except KubeAPIError as exc:
            if exc.status != 409:  # already in the outbox: a repeat of the same outcome
                raise
        self.written.set()

    async def publish_outcome(self, editjob: JSON, *, review: bool) -> JSON | None:
        """Make the outcome durable, then record its id on the EditJob (None if it is gone)."""
        meta, spec = editjob["metadata"], editjob["spec"]
        event = completion_for(editjob)
        callback = spec.get("callback") or {}
        parts: dict[str, Any] = {
            "approvalEventId": event.data.approval_event_id,
            "completion": event.model_dump_json(),
            "audit": audit_for(editjob, event).model_dump_json(),
            "natsSubject": callback.get("natsSubject"),
            "webhookUrl": callback.get("webhookUrl"),
        }
        if review:
            parts["review"] = review_for(editjob, event).model_dump_json()
            log.warning(
                "needs review: %s",
                (editjob.get("status") or {}).get("message"),
                extra={
                    "editjob": f"{meta['namespace']}/{meta['name']}",
                    "prompt": spec["prompt"],
                    "image": redacted(spec["source"]["url"])
                    if spec["source"].get("url")
                    else spec["source"].get("s3Key"),
                },
            )
        expires = self.now() + timedelta(seconds=self.op.outbox_expiry_seconds)
        await self._write(outcome_object(editjob, outcome_name(event.id), parts, expires=expires))
        try:
            return await self.kube.patch(
                editjob_path(meta["namespace"], meta["name"]) + "/status",
                {"status": {"completionEventId": event.id, "callbackDelivery": "pending"}},
            )
        except KubeAPIError as exc:
            if exc.status == 404:
                return None  # deleted meanwhile: the outbox delivers all the same
            raise

    def alert_if_needed(self, editjob: JSON, decision: Decision) -> None:
        """Timeouts, GPU starvation and hand-over to designers page a person (brief §5)."""
        url = self.op.alert_webhook_url
        alert = alert_if_needed_body(editjob, decision) if url else None
        if alert is None:
            return
        key, body = alert
        expires = self.now() + timedelta(seconds=self.op.outbox_expiry_seconds)
        obj = outcome_object(
            editjob,
            outcome_name(key),
            # The URL carries the robot's token and lives in a Secret: the outcome names no
            # URL, the deliverer reads the configured one (a rotated URL takes effect).
            {"alert": body.decode()},
            expires=expires,
        )
        task = asyncio.create_task(self._write_alert(obj))
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)

    async def _write_alert(self, obj: JSON) -> None:
        try:
            await self._write(obj)
        except Exception as exc:  # an alert must never fail the reconcile that raised it
            log.warning("could not queue an alert: %r", exc)


class Deliverer:
    """Sends what the outbox holds; one instance, on the leader."""

    def __init__(
        self,
        op: OperatorSettings,
        kube: AsyncKube,
        outbox: Outbox,
        *,
        nats: NATS | None,
        topology: Topology,
        ledger: FinishedLedger | None = None,
        concurrency: int = 16,
    ) -> None:
        self.op = op
        self.kube = kube
        self.outbox = outbox
        self.store = outbox.store
        self.now = outbox.now
        self.nats = nats
        self.topology = topology
        self.ledger = ledger
        self._slots = asyncio.Semaphore(concurrency)
        self._busy: set[Key] = set()
        self._nats_retry_at = 0.0

    async def run(self) -> None:
        """Deliver whatever is due, woken by new outcomes and at least every second."""
        while True:
            self.outbox.written.clear()
            self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbox.written.wait(), timeout=1.0)

    def tick(self) -> int:
        """Start a delivery for every due outcome not already being delivered."""
        started = 0
        now = stamp(self.now())
        metrics.OUTBOX_PENDING.set(len(self.store))
        for key, obj in list(self.store.items.items()):
            if key in self._busy or obj["metadata"].get("deletionTimestamp"):
                continue
            due = (obj.get("status") or {}).get("nextAttemptAt")
            nats_wait = self._needs_nats(obj) and asyncio.get_running_loop().time() < (
                self._nats_retry_at
            )
            if (due and due > now) or nats_wait:
                continue
            self._busy.add(key)
            task = asyncio.create_task(self._deliver_guarded(key, obj))
            task.add_done_callback(lambda _t, k=key: self._busy.discard(k))
            started += 1
        return started

    def _needs_nats(self, obj: JSON) -> bool:
        status = obj.get("status") or {}
        done = set(status.get("delivered") or []) | set(status.get("gaveUp") or [])
        return any(
            present and part in NATS_PARTS and part not in done
            for part, present in self._parts(obj["spec"])
        )

    async def _deliver_guarded(self, key: Key, obj: JSON) -> None:
        async with self._slots:
            try:
                await self.deliver(obj)
            except Exception as exc:
                log.warning("delivering %s failed: %r", "/".join(key), exc)

    async def deliver(self, obj: JSON) -> None:
        """Send each undelivered part once; record progress; remove the object when done."""
        meta, spec = obj["metadata"], obj["spec"]
        status = dict(obj.get("status") or {})
        done = list(status.get("delivered") or [])
        gave_up = list(status.get("gaveUp") or [])
        error = None
        try:
            await self._send_nats_parts(spec, done, gave_up)
        except Exception as exc:
            # NATS is down or slow: keep the object, try again in a few seconds.
            self._nats_retry_at = asyncio.get_running_loop().time() + 2.0
            error = f"NATS: {exc!r}"[:500]
        if error is None:
            error = await self._send_http_parts(spec, status, done, gave_up)
        finished = all(
            part in done or part in gave_up for part, present in self._parts(spec) if present
        )
        path = editoutcome_path(meta["namespace"], meta["name"])
        if finished:
            try:
                await self._finish(obj, done, gave_up)
            except KubeAPIError as exc:
                # Not recorded on the EditJob (the apiserver restarting, say): the object stays,
                # with what was sent, and the next round records it; nothing is sent twice.
                status.update(
                    delivered=done,
                    gaveUp=gave_up,
                    lastError=f"recording the delivery on the EditJob: {exc}"[:500],
                )
                with contextlib.suppress(KubeAPIError):
                    self.store.upsert(await self.kube.patch(path + "/status", {"status": status}))
                raise
            with contextlib.suppress(KubeAPIError):
                await self.kube.delete(path)
            self.store.remove((meta["namespace"], meta["name"]))
            return
        status.update(delivered=done, gaveUp=gave_up, lastError=error)
        if status != (obj.get("status") or {}):
            updated = await self.kube.patch(path + "/status", {"status": status})
            self.store.upsert(updated)

    @staticmethod
    def _parts(spec: dict[str, Any]) -> list[tuple[str, bool]]:
        return [
            ("completion", bool(spec.get("completion"))),
            ("review", bool(spec.get("review"))),
            ("audit", bool(spec.get("audit"))),
            ("subject", bool(spec.get("natsSubject") and spec.get("completion"))),
            ("webhook", bool(spec.get("webhookUrl") and spec.get("completion"))),
            ("alert", bool(spec.get("alert"))),
        ]

    async def _send_nats_parts(
        self, spec: dict[str, Any], done: list[str], gave_up: list[str]
    ) -> None:
        if not (spec.get("completion") or spec.get("review")):
            return
        if self.nats is None or not self.nats.is_connected:
            raise ConnectionError("not connected")
        js = self.nats.jetstream()
        event = CompletionEvent.model_validate_json(spec["completion"])
        if "completion" not in done:
            ack = await publish_completion(js, self.topology, event)
            metrics.COMPLETIONS.labels(
                event.data.status, "true" if ack.duplicate else "false"
            ).inc()
            done.append("completion")
        if spec.get("review") and "review" not in done:
            await publish_review(js, self.topology, ReviewEvent.model_validate_json(spec["review"]))
            done.append("review")
        if spec.get("audit") and "audit" not in done:
            await publish_audit(js, self.topology, AuditRecord.model_validate_json(spec["audit"]))
            done.append("audit")
        subject = spec.get("natsSubject")
        if subject and "subject" not in done and "subject" not in gave_up:
            if why := CallbackSubjects.from_settings(self.topology.settings).problem(subject):
                log.warning("callback subject refused, not published: %s", why,
                            extra={"editjob": spec.get("editjob")})  # fmt: skip
                gave_up.append("subject")
                return
            wire = encode(event)
            await self.nats.publish(subject, wire.body, headers=wire.headers)
            await self.nats.flush(timeout=5)
            done.append("subject")

    async def _send_http_parts(
        self,
        spec: dict[str, Any],
        status: dict[str, Any],
        done: list[str],
        gave_up: list[str],
    ) -> str | None:
        """One attempt per pending webhook/alert; backoff state goes into ``status``."""
        pending = [
            (part, url, body)
            for part, url, body in (
                ("webhook", spec.get("webhookUrl"), spec.get("completion")),
                ("alert", self.op.alert_webhook_url, spec.get("alert")),
            )
            if body and part not in done and part not in gave_up
        ]
        if unconfigured := [p for p, url, _ in pending if not url]:
            gave_up.extend(unconfigured)  # the alert webhook was unset since: nowhere to page
            pending = [entry for entry in pending if entry[1]]
        if not pending:
            return None
        due = status.get("nextAttemptAt")
        if due and due > stamp(self.now()):
            return status.get("lastError")
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
                    spec.get("editjobUid", ""),
                    "application/json",
                )
            ok = await deliver_callback(url, payload, ident, self.op, content_type=ctype)
            metrics.OUTBOX_DELIVERIES.labels(part, "delivered" if ok else "failed").inc()
            if ok:
                done.append(part)
            else:
                error = f"{part}: not accepted by {url}"
        attempts = int(status.get("attempts") or 0) + 1
        status["attempts"] = attempts
        remaining = [p for p, _, _ in pending if p not in done and p not in gave_up]
        expired = spec.get("expiresAt", "9999") <= stamp(self.now())
        if remaining and (attempts >= self.op.callback_max_attempts or expired):
            gave_up.extend(remaining)
            for part in remaining:
                metrics.OUTBOX_DELIVERIES.labels(part, "gave_up").inc()
            log.error("gave up delivering %s after %d attempts", remaining, attempts,
                      extra={"editjob": spec.get("editjob")})  # fmt: skip
            status.pop("nextAttemptAt", None)
        elif remaining:
            wait = self.op.callback_backoff_seconds * (2 ** (attempts - 1))
            status["nextAttemptAt"] = stamp(self.now() + timedelta(seconds=wait))
        return error

    async def _finish(self, obj: JSON, done: list[str], gave_up: list[str]) -> None:
        spec = obj["spec"]
        if not spec.get("completion"):
            return  # an alert: nothing to record on the EditJob
        namespace, name = spec["editjob"].split("/", 1)
        has_callback = spec.get("webhookUrl")
        delivery = "gave_up" if "webhook" in gave_up else ("delivered" if has_callback else "none")
        try:
            await self.kube.patch(
                editjob_path(namespace, name) + "/status",
                {
                    "status": {
                        "completionPublishedAt": stamp(self.now()),
                        "callbackDelivery": delivery,
                    }
                },
            )
        except KubeAPIError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing left to record it on
                raise
        event = CompletionEvent.model_validate_json(spec["completion"])
        if self.ledger is not None and not spec["approvalEventId"].startswith("editjob:"):
            try:
                await self.ledger.record_finished(
                    spec["approvalEventId"], outcome=event.data.status
                )
            except Exception as exc:  # the ledger is a guard, never a reason to stall
                log.warning("could not note the approval as finished: %r", exc)
        log.info(
            "outcome delivered: %s",
            event.data.status,
            extra={"editjob": spec["editjob"], "delivered": done, "gave_up": gave_up},
        )
