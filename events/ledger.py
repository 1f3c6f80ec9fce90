"""The approval ledger: what editflow already did with each approval event id.

The EditJob's name is derived from the approval's event id, so a redelivery
while the EditJob exists is a harmless ``AlreadyExists``. The name alone
cannot tell a late redelivery from a new approval once the EditJob was
deleted, finished and cleaned up, or withdrawn: the ledger can. One NATS KV
entry per approval event id (see :meth:`Topology.ledger_config
<editflow.events.topology.Topology.ledger_config>`: history 1, kept as long
as the approvals stream keeps events), in one of three states::

    (absent) --record_created--> created --record_finished--> finished
        |                           |                           ^
        +------record_withdrawn-----+--> withdrawn -------------+

* ``created``: the bridge created the EditJob (``editjob``, ``stream_seq`` say
  which and from where); a redelivery or a replay creates nothing.
* ``withdrawn``: the OA side revoked the approval, possibly before it arrived;
  the approval, if it comes, must not run.
* ``finished``: the reconciler published the outcome; kept so that even a
  replay after the EditJob's retention creates nothing.

Every write is a compare-and-set on the key's revision, retried on a
conflict, so two writers (the bridge and the reconciler, or two operator
replicas during a handover) never lose each other's transition. A
transition that does not apply (``created`` over ``withdrawn``, anything but
a new outcome over ``finished``) leaves the entry alone; every ``record_*``
returns the entry as it stands afterwards, so the caller sees a race it lost.

Keys are :func:`~editflow.events.models.subject_token` of the event id (ids may
hold any character; KV keys may not); the entry carries the id itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from editflow.core.errors import UpstreamError
from editflow.events.models import subject_token
from editflow.events.topology import Topology, provision_ledger

State = Literal["created", "withdrawn", "finished"]
STATES: tuple[State, ...] = ("created", "withdrawn", "finished")

#: Compare-and-set rounds before giving up; more than two writers on one id is unheard of.
_CAS_ROUNDS = 8


@dataclass(frozen=True)
class LedgerEntry:
    """The latest state of one approval, as stored (JSON) under its key."""

    event_id: str
    state: State
    namespace: str | None
    editjob: str | None
    outcome: str | None
    reason: str | None
    stream_seq: int | None
    at: str
    reruns: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LedgerEntry:
        data: dict[str, Any] = json.loads(raw)
        if data.get("state") not in STATES:
            raise ValueError(f"ledger entry with unknown state {data.get('state')!r}")
        fields = {name: data.get(name) for name in cls.__dataclass_fields__}
        fields["reruns"] = int(data.get("reruns") or 0)
        return cls(**fields)


def ledger_key(event_id: str) -> str:
    """The KV key of an approval event id."""
    return subject_token(event_id)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- transitions: pure functions (current entry -> wanted entry, or None for "leave it") --------


def created(
    current: LedgerEntry | None,
    event_id: str,
    *,
    namespace: str,
    editjob: str,
    stream_seq: int | None,
) -> LedgerEntry | None:
    if current is not None:
        return None  # created stays created; withdrawn and finished win over a late create
    return LedgerEntry(
        event_id=event_id, state="created", namespace=namespace, editjob=editjob,
        outcome=None, reason=None, stream_seq=stream_seq, at=_now(),
    )  # fmt: skip


def withdrawn(current: LedgerEntry | None, event_id: str, *, reason: str) -> LedgerEntry | None:
    if current is None:
        return LedgerEntry(
            event_id=event_id, state="withdrawn", namespace=None, editjob=None,
            outcome=None, reason=reason, stream_seq=None, at=_now(),
        )  # fmt: skip
    if current.state != "created":
        return None  # withdrawn already, or finished: the outcome is out, nothing to revoke
    return replace(current, state="withdrawn", reason=reason, at=_now())


def finished(current: LedgerEntry | None, event_id: str, *, outcome: str) -> LedgerEntry | None:
    if current is None:
        return LedgerEntry(
            event_id=event_id, state="finished", namespace=None, editjob=None,
            outcome=outcome, reason=None, stream_seq=None, at=_now(),
        )  # fmt: skip
    if current.state == "finished" and current.outcome == outcome:
        return None
    # A later outcome replaces an earlier one (a designer resolves needs_review to success).
    return replace(current, state="finished", outcome=outcome, at=_now())


def rerun(
    current: LedgerEntry | None, event_id: str, *, namespace: str, editjob: Callable[[int], str]
) -> LedgerEntry | None:
    if current is None:
        raise LookupError(event_id)
    number = current.reruns + 1
    return replace(
        current, state="created", namespace=namespace, editjob=editjob(number),
        outcome=None, reason=None, reruns=number, at=_now(),
    )  # fmt: skip


class ApprovalLedger:
    """The ledger bucket; :meth:`open` provisions it (idempotent) and binds to it."""

    def __init__(self, kv: KeyValue, *, bucket: str) -> None:
        self._kv = kv
        self.bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext, topology: Topology) -> ApprovalLedger:
        await provision_ledger(js, topology)
        kv = await js.key_value(topology.ledger_bucket)
        return cls(kv, bucket=topology.ledger_bucket)

    async def get(self, event_id: str) -> LedgerEntry | None:
        entry, _ = await self._read(event_id)
        return entry

    async def record_created(
        self, event_id: str, *, namespace: str, editjob: str, stream_seq: int | None
    ) -> LedgerEntry | None:
        """The bridge created (or found) the EditJob; returns the entry as it now stands
        (``withdrawn`` when a withdrawal won the race: the caller then cancels the EditJob)."""
        # The bridge looked the id up a moment ago and found nothing: try the write that
        # case needs straight away (one round trip, not two); any other case is the loop.
        fresh = created(None, event_id, namespace=namespace, editjob=editjob, stream_seq=stream_seq)
        assert fresh is not None
        try:
            await self._kv.create(ledger_key(event_id), fresh.to_json())
            return fresh
        except KeyWrongLastSequenceError:
            pass
        except (nats.errors.Error, OSError) as exc:
            raise UpstreamError(f"approval ledger {self.bucket}: write failed: {exc!r}") from exc
        return await self._change(
            event_id,
            lambda cur: created(
                cur, event_id, namespace=namespace, editjob=editjob, stream_seq=stream_seq
            ),
        )

    async def record_withdrawn(self, event_id: str, *, reason: str) -> LedgerEntry | None:
        """The OA side revoked the approval (also before the approval itself arrived)."""
        return await self._change(event_id, lambda cur: withdrawn(cur, event_id, reason=reason))

    async def record_finished(self, event_id: str, *, outcome: str) -> LedgerEntry | None:
        """The outcome was published (the reconciler calls this after the completion)."""
        return await self._change(event_id, lambda cur: finished(cur, event_id, outcome=outcome))

    async def reserve_rerun(
        self, event_id: str, *, namespace: str, editjob: Callable[[int], str]
    ) -> LedgerEntry:
        """Count one more deliberate re-run and name its EditJob (``editjob(number)``).

        Reserved *before* the EditJob is created: two concurrent re-runs get two
        numbers, and a re-run that failed half way burns its number instead of
        being mistaken for the next one. Raises ``LookupError`` for an unknown id.
        """
        entry = await self._change(
            event_id, lambda cur: rerun(cur, event_id, namespace=namespace, editjob=editjob)
        )
        assert entry is not None
        return entry

    # -- the compare-and-set loop --------------------------------------------------------------
    async def _read(self, event_id: str) -> tuple[LedgerEntry | None, int]:
        """The entry and its revision (0 when absent: ``create`` expects no previous value)."""
        try:
            item = await self._kv.get(ledger_key(event_id))
        except KeyNotFoundError:
            return None, 0
        except (nats.errors.Error, OSError) as exc:
            raise UpstreamError(f"approval ledger {self.bucket}: read failed: {exc!r}") from exc
        if item.value is None:
            return None, item.revision or 0
        return LedgerEntry.from_json(item.value), item.revision or 0

    async def _change(
        self, event_id: str, change: Callable[[LedgerEntry | None], LedgerEntry | None]
    ) -> LedgerEntry | None:
        key = ledger_key(event_id)
        for _ in range(_CAS_ROUNDS):
            current, revision = await self._read(event_id)
            wanted = change(current)
            if wanted is None:
                return current
            try:
                if revision:
                    await self._kv.update(key, wanted.to_json(), last=revision)
                else:
                    await self._kv.create(key, wanted.to_json())
            except KeyWrongLastSequenceError:
                continue  # another writer got there first: re-read and decide again
            except (nats.errors.Error, OSError) as exc:
                raise UpstreamError(
                    f"approval ledger {self.bucket}: write failed: {exc!r}"
                ) from exc
            return wanted
        raise UpstreamError(
            f"approval ledger {self.bucket}: {_CAS_ROUNDS} concurrent writers on {event_id!r}"
        )
