"""The designer's desk, behind its HTTP routes: read tickets, presign images, publish actions.

The gateway has no apiserver rights (docs/desk.md): it **reads** the read model the operator
keeps in NATS KV (``EDITFLOW_DESK_<ns>``, one :class:`~editflow.events.desk.Ticket` per key),
keeps **claims** (:mod:`.claims`) and **acts** by publishing ``io.editflow.review.action.v1``
on ``events.review_action_subject`` with the action id as the event id (``Nats-Msg-Id``):
a stale page acting twice publishes a duplicate JetStream drops.

Everything a reviewer must see at once is checked here before anything is published, in an
order that leaves nothing half-done: the tenant boundary, the ticket (gone: 410), the lane,
the claim (409), then the action's own input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from editflow.core.errors import UpstreamError
from editflow.core.settings import Settings
from editflow.events.desk import (
    LANES,
    ReviewActionData,
    ReviewActionEvent,
    Ticket,
    bucket_name,
)
from editflow.events.models import Reviewer as ReviewerRef
from editflow.events.publish import publish_event
from editflow.events.topology import Topology
from editflow.gateway.backend import ObjectStore
from editflow.gateway.claims import Claims
from editflow.gateway.metrics import GatewayMetrics
from editflow.gateway.reviewers import Reviewer
from editflow.operator.tenancy import key_within

log = logging.getLogger("editflow.gateway")

Action = Literal["upload", "rerun", "send_back", "verdict"]

#: What a reviewer may do in each lane (docs/desk.md "Lanes"); claim is allowed everywhere.
ALLOWED: dict[str, frozenset[str]] = {
    "needs_review": frozenset({"upload", "rerun", "send_back"}),
    "flagged": frozenset({"verdict"}),
    "sample": frozenset({"verdict"}),
}
#: Actions after which the ticket leaves the desk (a re-run puts it back in the queue later).
RESOLVING = frozenset({"upload", "send_back", "verdict"})


class Gone(Exception):
    """The ticket is no longer on the desk: the edit finished or was deleted (410)."""


class WrongLane(Exception):
    """The action is not one this ticket's lane allows (409, naming the lane)."""


@dataclass(frozen=True)
class Published:
    action_id: str
    duplicate: bool


def _now() -> datetime:
    return datetime.now(UTC)


class Desk:
    """Reads and acts for the desk routes (``jetstream`` is read on each call: it may be down)."""

    def __init__(
        self,
        settings: Settings,
        *,
        jetstream: Callable[[], JetStreamContext | None],
        store: ObjectStore,
        metrics: GatewayMetrics,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.jetstream = jetstream
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.topology = Topology(settings.events)
        self.claims = Claims(jetstream, seconds=settings.gateway.desk_claim_seconds, clock=clock)
        key = settings.events.signing_key
        self._signing_key = key.get_secret_value() if key else None

    def _js(self) -> JetStreamContext:
        js = self.jetstream()
        if js is None:
            raise UpstreamError("the event bus is unavailable; retry shortly")
        return js

    async def _bucket(self, namespace: str) -> KeyValue | None:
        try:
            return await self._js().key_value(bucket_name(namespace))
        except BucketNotFoundError:  # the operator has not written a ticket there yet
            return None

    async def tickets(self, namespace: str) -> list[Ticket]:
        """The open tickets of one namespace, oldest first; queue depth gauges updated."""
        kv = await self._bucket(namespace)
        found: list[Ticket] = []
        if kv is not None:
            try:
                keys = await kv.keys()
            except NoKeysError:
                keys = []
            for key in keys:
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:  # resolved between the listing and the read
                    continue
                if entry.value:
                    found.append(Ticket.model_validate_json(entry.value))
        for lane in LANES:
            in_lane = [t.since for t in found if t.lane == lane]
            self.metrics.desk_queue.labels(namespace, lane).set(len(in_lane))
            dated = [s for s in in_lane if s is not None]
            if dated:
                self.metrics.desk_oldest.labels(namespace, lane).set(min(dated).timestamp())
            else:
                with contextlib.suppress(KeyError):
                    self.metrics.desk_oldest.remove(namespace, lane)
        return sorted(found, key=lambda t: (t.since or datetime.max.replace(tzinfo=UTC), t.name))

    async def ticket(self, namespace: str, name: str) -> Ticket:
        kv = await self._bucket(namespace)
        if kv is None:
            raise Gone(f"this edit has finished or was deleted ({namespace}/{name} is not open)")
        try:
            entry = await kv.get(name)
        except KeyNotFoundError:
            raise Gone(
                f"this edit has finished or was deleted ({namespace}/{name} is not open)"
            ) from None
        return Ticket.model_validate_json(entry.value)

    async def watch_queues(self, namespaces: frozenset[str], every: float = 30.0) -> None:
        """Keep the queue gauges fresh without anyone on the page: the NeedsReview-waiting
        alert reads the oldest ticket's age, which must not depend on a reviewer looking."""
        while True:
            for ns in sorted(namespaces):
                try:
                    await self.tickets(ns)
                except Exception as exc:  # NATS down or not yet connected: next round
                    log.debug("desk queue of %s not readable yet: %r", ns, exc)
            await asyncio.sleep(every)

    def presign(self, ticket: Ticket, key: str | None) -> str | None:
        """A GET URL for an image of the ticket, only for keys under the ticket's namespace."""
        if not key:
            return None
        ns = ticket.namespace
        if not (key_within(key, f"uploads/{ns}/") or key_within(key, f"results/{ns}/")):
            return None
        return self.store.presign(key)[0]

    def waiting_seconds(self, ticket: Ticket) -> float | None:
        return (self.clock() - ticket.since).total_seconds() if ticket.since else None

    async def claim(self, ticket: Ticket, reviewer: Reviewer) -> Any:
        claim, first = await self.claims.claim(ticket.namespace, ticket.name, reviewer)
        waited = self.waiting_seconds(ticket)
        if first and waited is not None:
            self.metrics.desk_first_claim.labels(ticket.lane).observe(max(waited, 0.0))
        return claim

    async def check_action(self, ticket: Ticket, reviewer: Reviewer, action: Action) -> None:
        """Every refusal that does not depend on the action's own input, before any write."""
        if action not in ALLOWED[ticket.lane]:
            allowed = ", ".join(sorted(ALLOWED[ticket.lane]))
            raise WrongLane(
                f"action: {action!r} is not allowed on a ticket in lane {ticket.lane!r} "
                f"(allowed: {allowed})"
            )
        await self.claims.require(ticket.namespace, ticket.name, reviewer)

    def upload_key(self, ticket: Ticket, action_id: str, filename: str) -> str:
        """Where a designer's image goes: under the edit's own result prefix, which the
        operator checks (``resolve_key_refusal``). That is ``results/<ns>/<name>/`` unless the
        EditJob set ``spec.output.prefix`` (still under ``results/<ns>/``, the admission
        policy's rule); the ticket does not carry it, so it is read off the results' keys."""
        ns, name = ticket.namespace, ticket.name
        base = f"results/{ns}/{name}/"
        for ref in ticket.results:
            cut = ref.result_key.find(f"/{name}/")
            if cut > 0:
                found = ref.result_key[: cut + len(name) + 2]
                if key_within(f"{found}x", f"results/{ns}/"):
                    base = found
                    break
        return f"{base}review-{action_id}/{filename}"

    async def publish(
        self, ticket: Ticket, reviewer: Reviewer, action_id: str, **fields: Any
    ) -> Published:
        """Publish the action (its id is the event id) and remember it as done."""
        data = ReviewActionData(
            namespace=ticket.namespace,
            editjob=ticket.name,
            reviewer=ReviewerRef(id=reviewer.id, name=reviewer.name),
            **fields,
        )
        event = ReviewActionEvent(
            id=action_id,
            source=self.settings.gateway.source,
            subject=f"{ticket.namespace}/{ticket.name}",
            data=data,
        )
        ack = await publish_event(
            self._js(),
            event,
            self.topology.review_action_subject,
            signing_key=self._signing_key,
        )
        await self.claims.mark_done(
            ticket.namespace,
            action_id,
            {"action": data.action, "editjob": ticket.name, "reviewer": reviewer.id},
        )
        if not ack.duplicate:  # None or False: stored now
            if data.action in RESOLVING and (waited := self.waiting_seconds(ticket)) is not None:
                self.metrics.desk_resolve.labels(ticket.lane, data.action).observe(max(waited, 0.0))
            if data.action == "verdict":
                self.metrics.desk_verdicts.labels(ticket.lane, str(data.verdict)).inc()
        return Published(action_id, bool(ack.duplicate))
