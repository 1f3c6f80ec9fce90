"""Where an outcome goes when its EditJob cannot carry it: a durable outbox in the apiserver.

An outcome is delivered from its EditJob (:mod:`.delivery`, issue 21 item 2). Two things
cannot be: the outcome of an EditJob deleted before its delivery was recorded (the
finalizer is released once the outcome is here), and an alert (a page to a person about an
edit, brief §5). Each becomes one small ``EditOutcome`` object (not one per namespace,
which would be a hot spot), written with the apiserver alone, so a deletion completes and
an alert is kept while NATS is down. Only the operator's ServiceAccount may create them.

A :class:`Deliverer` (one loop on the leader, fed by a watch of the EditOutcomes) sends each
part with the same :class:`~editflow.operator.delivery.OutcomeSender` as the EditJob path:
the completion to JetStream with its stable id as ``Nats-Msg-Id``, the review request, the
NATS callback subject, then the signed HTTPS webhook and alert with exponential backoff, the
attempt count and next attempt kept in the object's status so retries survive operator
restarts. Once every part was delivered (or a webhook gave up or expired) the object is
removed.

Delivery is at least once: a crash between sending a part and recording it sends it again
with the same id (JetStream and webhook receivers drop it by ``Nats-Msg-Id`` /
``Idempotency-Key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client as NATS

from editflow.core.kubetime import stamp
from editflow.core.settings import OperatorSettings
from editflow.events.models import CompletionEvent
from editflow.events.topology import Topology
from editflow.operator import metrics
from editflow.operator.crd import (
    GROUP,
    OUTCOME_KIND,
    VERSION,
    editoutcome_path,
)
from editflow.operator.decision import Decision
from editflow.operator.delivery import (
    NATS_PARTS,
    FinishedLedger,
    OutcomeSender,
    all_sent,
    note_finished,
    parts_present,
)
from editflow.operator.informer import Key, Store
from editflow.operator.kube import JSON, AsyncKube, KubeAPIError
from editflow.operator.names import LABEL_EDITJOB, MANAGED_BY
from editflow.operator.outcomes import alert_if_needed_body, outcome_parts

log = logging.getLogger("editflow.operator.outbox")


def outcome_name(key: str) -> str:
    """A valid object name for an outcome id (ids hold ':' and may be long)."""
    return "eo-" + hashlib.sha256(key.encode()).hexdigest()[:40]


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

    async def hold(self, editjob: JSON, *, review: bool) -> None:
        """Keep the outcome of an EditJob that is going away until the Deliverer sends it."""
        meta = editjob["metadata"]
        parts = outcome_parts(editjob, review=review)
        event_id = CompletionEvent.model_validate_json(parts["completion"]).id
        expires = self.now() + timedelta(seconds=self.op.outbox_expiry_seconds)
        await self._write(outcome_object(editjob, outcome_name(event_id), parts, expires=expires))
        log.info(
            "outcome kept in the outbox: the EditJob is deleted before it was delivered",
            extra={"editjob": f"{meta['namespace']}/{meta['name']}"},
        )

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
        self.sender = OutcomeSender(op, nats=nats, topology=topology, now=outbox.now)

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
            for part, present in parts_present(obj["spec"])
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
            await self.sender.send_nats(spec, done, gave_up)
        except Exception as exc:
            # NATS is down or slow: keep the object, try again in a few seconds.
            self._nats_retry_at = asyncio.get_running_loop().time() + 2.0
            error = f"NATS: {exc!r}"[:500]
        if error is None:
            error = await self.sender.send_http(spec, status, done, gave_up)
        finished = all_sent(spec, done, gave_up)
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

    async def _finish(self, obj: JSON, done: list[str], gave_up: list[str]) -> None:
        """Every part is out. Nothing is written on the EditJob: it is gone (the outbox holds
        only outcomes of deleted EditJobs), and its status has one writer, the reconciler's."""
        spec = obj["spec"]
        if not spec.get("completion"):
            return  # an alert: nothing more to note
        event = CompletionEvent.model_validate_json(spec["completion"])
        await note_finished(self.ledger, spec["approvalEventId"], event)
        log.info(
            "outcome delivered: %s",
            event.data.status,
            extra={"editjob": spec["editjob"], "delivered": done, "gave_up": gave_up},
        )
