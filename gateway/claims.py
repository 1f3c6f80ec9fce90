"""Claims on desk tickets, in NATS KV so that every gateway replica sees the same holder.

One bucket per namespace (``EDITFLOW_DESK_CLAIMS_<ns>``, docs/desk.md "Claims"), key the
EditJob's name, value ``{"reviewer": {"id", "name"}, "until": RFC 3339}``. Races between
replicas are settled by JetStream, not by this process: a new claim is a KV ``create``
(refused when the key exists) and taking over an expired claim or renewing one's own is an
``update`` with the revision that was read (refused when anyone wrote in between). Whoever
loses the race is told at once who holds the ticket (:class:`HeldByOther`, answered 409).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from editflow.core.errors import UpstreamError
from editflow.events.desk import Claim, claims_bucket_name
from editflow.events.models import Reviewer as ReviewerRef
from editflow.gateway.reviewers import Reviewer


class HeldByOther(Exception):
    """Someone else holds a live claim on the ticket (answered 409 naming them)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        who = claim.reviewer.name or claim.reviewer.id
        super().__init__(
            f"{who} is working on this edit (claimed until {claim.until.isoformat()}); "
            "pick another ticket"
        )


class NotClaimed(Exception):
    """An action without a live claim by the acting reviewer (answered 409)."""


#: How long a claims bucket keeps anything: the "action done" markers (:meth:`Claims.done`)
#: answer a stale page acting twice for a day; a claim lives at most a day (the setting's bound).
DONE_TTL_SECONDS = 86_400.0


def _now() -> datetime:
    return datetime.now(UTC)


class Claims:
    """Claim, release and check tickets of a namespace (``js`` is read on each call)."""

    def __init__(
        self,
        jetstream: Callable[[], JetStreamContext | None],
        *,
        seconds: int,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.jetstream = jetstream
        self.seconds = seconds
        self.clock = clock
        self._buckets: dict[str, KeyValue] = {}

    async def _bucket(self, namespace: str) -> KeyValue:
        if kv := self._buckets.get(namespace):
            return kv
        js = self.jetstream()
        if js is None:
            raise UpstreamError("the event bus is unavailable; retry shortly")
        name = claims_bucket_name(namespace)
        try:
            kv = await js.key_value(name)
        except BucketNotFoundError:
            # History 1: only the current holder matters; the audit stream keeps the actions.
            # The TTL drops the "action done" markers (a claim never lives this long).
            kv = await js.create_key_value(bucket=name, history=1, ttl=DONE_TTL_SECONDS)
        self._buckets[namespace] = kv
        return kv

    async def _read(self, kv: KeyValue, name: str) -> tuple[Claim | None, int | None]:
        try:
            entry = await kv.get(name)
        except KeyNotFoundError as exc:  # never claimed, or released (a delete marker)
            entry_rev = getattr(getattr(exc, "entry", None), "revision", None)
            return None, entry_rev
        if not entry.value:
            return None, entry.revision
        return Claim.model_validate_json(entry.value), entry.revision

    async def holder(self, namespace: str, name: str) -> Claim | None:
        """The live claim on a ticket, if any (an expired one is no claim)."""
        claim, _ = await self._read(await self._bucket(namespace), name)
        if claim is None or claim.until <= self.clock():
            return None
        return claim

    async def claim(self, namespace: str, name: str, reviewer: Reviewer) -> tuple[Claim, bool]:
        """Take (or renew) the claim for ``reviewer``; :class:`HeldByOther` if someone has it.

        The flag says whether this is the ticket's first claim ever (the key never existed),
        which is what the time-to-first-claim metric measures.
        """
        kv = await self._bucket(namespace)
        now = self.clock()
        mine = Claim(
            reviewer=ReviewerRef(id=reviewer.id, name=reviewer.name),
            until=now + timedelta(seconds=self.seconds),
        )
        body = mine.model_dump_json().encode()
        current, revision = await self._read(kv, name)
        try:
            if current is None:
                await kv.create(name, body)
            elif current.until <= now or current.reviewer.id == reviewer.id:
                await kv.update(name, body, last=revision)
            else:
                raise HeldByOther(current)
        except KeyWrongLastSequenceError:
            # Another replica wrote first: whoever it was holds it now.
            winner, _ = await self._read(kv, name)
            if winner is not None and winner.reviewer.id != reviewer.id:
                raise HeldByOther(winner) from None
            return (winner or mine), False
        return mine, current is None and revision is None

    async def require(self, namespace: str, name: str, reviewer: Reviewer) -> Claim:
        """The acting reviewer's live claim, or :class:`HeldByOther` / :class:`NotClaimed`."""
        claim = await self.holder(namespace, name)
        if claim is None:
            raise NotClaimed("claim this edit first (no live claim on it; a claim expires)")
        if claim.reviewer.id != reviewer.id:
            raise HeldByOther(claim)
        return claim

    async def done(self, namespace: str, action_id: str) -> dict[str, object] | None:
        """What an earlier request with this action id did, if it completed."""
        kv = await self._bucket(namespace)
        try:
            entry = await kv.get(f"done.{action_id}")
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    async def mark_done(self, namespace: str, action_id: str, record: dict[str, object]) -> None:
        """Remember a published action, so that the same id is answered as already done."""
        kv = await self._bucket(namespace)
        with contextlib.suppress(KeyWrongLastSequenceError):  # a twin request marked it first
            await kv.create(f"done.{action_id}", json.dumps(record).encode())

    async def release(self, namespace: str, name: str, reviewer: Reviewer) -> None:
        """Give a claim back (only one's own; releasing nothing is fine)."""
        kv = await self._bucket(namespace)
        claim, revision = await self._read(kv, name)
        if claim is None:
            return
        if claim.reviewer.id != reviewer.id and claim.until > self.clock():
            raise HeldByOther(claim)
        try:
            await kv.delete(name, last=revision)
        except KeyWrongLastSequenceError:
            winner, _ = await self._read(kv, name)
            if winner is not None and winner.reviewer.id != reviewer.id:
                raise HeldByOther(winner) from None
