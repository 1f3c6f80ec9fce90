"""The streams and consumers editflow needs, and :func:`provision` to make them so.

Everything is named by :class:`~editflow.core.settings.EventsSettings`::

    stream EDITFLOW_APPROVALS   subjects oa.approvals.image-edit, oa.approvals.image-edit.withdraw
        limits retention, file storage, max age 7 d, duplicate window 24 h
        (Nats-Msg-Id = CloudEvent id, so a republished approval is stored once)
        consumer editflow-operator   durable pull, explicit ack,
            ack wait, max deliver, backoff (ack wait of each further delivery)
    stream EDITFLOW_COMPLETIONS subjects editflow.completions.<token>, editflow.reviews.<token>
        (<token> = subject_token(approval event id): OA clients read one approval's
        outcome by subject, race-free)
    stream EDITFLOW_DLQ         subjects editflow.dlq.<source stream>   max age 90 d
        original payload + headers + Editflow-Dlq-* headers with the reason
    stream EDITFLOW_ADVISORIES
        subjects $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EDITFLOW_APPROVALS.*
        consumer editflow-operator-dlq   durable pull: advisories are stored, so one
        emitted while the mover restarts is still dead-lettered (JetStream emits it
        when the consumer next pulls, i.e. once an operator runs again)
    KV bucket EDITFLOW_APPROVALS_LEDGER  (stream KV_EDITFLOW_APPROVALS_LEDGER)
        the approval ledger (:mod:`editflow.events.ledger`): one key per approval
        event id, history 1, TTL = the approvals stream's max age, so an approval
        the stream can still redeliver is always remembered

Limits retention (not work-queue) on the approvals stream is deliberate: a
message that exhausted its deliveries must still be readable by sequence to
be copied to the dead letter, and the stream doubles as a short audit trail.

:func:`provision` is idempotent: a missing stream or consumer is created, one
whose configuration differs is updated, an equal one is left alone; it
returns what it did for each.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from editflow.core.settings import EventsSettings
from editflow.events.models import subject_token

log = logging.getLogger("editflow.events.topology")

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Topology:
    """Stream, subject and consumer names derived from the settings (one place for every name)."""

    settings: EventsSettings

    @property
    def approvals_stream(self) -> str:
        return self.settings.approvals_stream

    @property
    def approval_subject(self) -> str:
        return self.settings.approval_subject

    @property
    def withdraw_subject(self) -> str:
        return self.settings.withdraw_subject

    @property
    def select_subject(self) -> str:
        """Derived from the approval subject unless set: a test or an installation that
        renames its approval subject gets select events of its own, not a shared subject."""
        return self.settings.select_subject or f"{self.settings.approval_subject}.select"

    @property
    def review_action_subject(self) -> str:
        """Where the desk's review actions arrive (docs/desk.md); derived like select's."""
        return self.settings.review_action_subject or f"{self.settings.approval_subject}.review"

    @property
    def oa_subjects(self) -> list[str]:
        """Every subject the OA side and the desk publish on (the approvals stream, the
        operator's filter): review actions are consumed beside selections."""
        return [
            self.approval_subject,
            self.withdraw_subject,
            self.select_subject,
            self.review_action_subject,
        ]

    def progress_subject(self, approval_event_id: str) -> str:
        """Where an edit's progress (queued, running) goes (in the completions stream)."""
        prefix = self.settings.completion_subject_prefix
        return f"{prefix}.progress.{subject_token(approval_event_id)}"

    def selection_subject(self, approval_event_id: str) -> str:
        """Where the recorded choice of a variant goes (in the completions stream)."""
        prefix = self.settings.completion_subject_prefix
        return f"{prefix}.selected.{subject_token(approval_event_id)}"

    @property
    def completions_stream(self) -> str:
        return self.settings.completions_stream

    @property
    def dlq_stream(self) -> str:
        return self.settings.dlq_stream

    @property
    def advisories_stream(self) -> str:
        return self.settings.advisories_stream

    @property
    def consumer(self) -> str:
        return self.settings.consumer

    @property
    def dlq_consumer(self) -> str:
        return f"{self.settings.consumer}-dlq"

    def completion_subject(self, approval_event_id: str) -> str:
        """Where the completion of one approval is published (and read back by OA clients)."""
        return f"{self.settings.completion_subject_prefix}.{subject_token(approval_event_id)}"

    def review_subject(self, approval_event_id: str) -> str:
        """Where the manual-review event of one approval is published."""
        return f"{self.settings.review_subject_prefix}.{subject_token(approval_event_id)}"

    @property
    def completions_wildcard(self) -> str:
        return f"{self.settings.completion_subject_prefix}.>"

    @property
    def reviews_wildcard(self) -> str:
        return f"{self.settings.review_subject_prefix}.>"

    def audit_subject(self, namespace: str) -> str:
        """Where the audit record of an edit of ``namespace`` goes (one stream, every namespace;
        a Kubernetes namespace is a DNS label, so it is a subject token as it is)."""
        return f"{self.audit_subject_prefix}.{namespace}"

    @property
    def audit_stream(self) -> str:
        """``audit_stream``, else the completions stream's name with ``_AUDIT`` for its suffix."""
        if self.settings.audit_stream:
            return self.settings.audit_stream
        base = self.settings.completions_stream.removesuffix("_COMPLETIONS")
        return f"{base}_AUDIT"

    @property
    def audit_subject_prefix(self) -> str:
        """``audit_subject_prefix``, else the completion prefix, its last token ``audit``."""
        if self.settings.audit_subject_prefix:
            return self.settings.audit_subject_prefix
        head, _, _ = self.settings.completion_subject_prefix.rpartition(".")
        return f"{head}.audit" if head else "audit"

    def dlq_subject(self, source_stream: str) -> str:
        return f"{self.settings.dlq_subject_prefix}.{source_stream}"

    @property
    def ledger_bucket(self) -> str:
        """The approval ledger's KV bucket, named after the stream whose events it records."""
        return f"{self.settings.approvals_stream}_LEDGER"

    @property
    def ledger_stream(self) -> str:
        return f"KV_{self.ledger_bucket}"

    def ledger_config(self) -> KeyValueConfig:
        """History 1 (only the latest state matters); the TTL is the approvals stream's max
        age, so the ledger forgets an approval only once the stream cannot deliver it again."""
        return KeyValueConfig(
            bucket=self.ledger_bucket,
            description="editflow: approval ledger (created, withdrawn, finished per event id)",
            history=1,
            ttl=self.settings.max_age_seconds,
            storage=StorageType(self.settings.storage),
            replicas=self.settings.replicas,
        )

    @property
    def max_deliveries_advisory(self) -> str:
        return f"{MAX_DELIVERIES_ADVISORY}.{self.approvals_stream}.*"

    @property
    def backoff(self) -> list[float]:
        """JetStream's ack wait of delivery 1, 2, …: ``ack_wait``, then ``ack_wait + backoff[i]``.

        Every delivery keeps the full ack wait to be handled, and a consumer
        that keeps dying sees the event again later each time. (A handler that
        *fails* naks with ``backoff_seconds[i]`` itself, see :meth:`retry_delay`.)
        JetStream requires fewer entries than ``max_deliver``, so the list is cut there.
        """
        wait = self.settings.ack_wait_seconds
        waits = [wait, *(wait + extra for extra in self.settings.backoff_seconds)]
        return waits[: self.settings.max_deliver - 1]

    def retry_delay(self, delivered: int) -> float:
        """How long to wait before delivery ``delivered + 1`` after a retriable failure."""
        delays = self.settings.backoff_seconds or [self.settings.ack_wait_seconds]
        return delays[min(max(delivered, 1), len(delays)) - 1]

    # -- desired configuration ---------------------------------------------------------
    def _stream(self, name: str, subjects: list[str], max_age: float, **extra: Any) -> StreamConfig:
        return StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType(self.settings.storage),
            num_replicas=self.settings.replicas,
            max_age=max_age,
            duplicate_window=min(self.settings.duplicate_window_seconds, max_age),
            **extra,
        )

    def streams(self) -> list[StreamConfig]:
        s = self.settings
        return [
            self._stream(
                s.approvals_stream,
                self.oa_subjects,
                s.max_age_seconds,
                description="editflow: approval, withdraw and select events from the OA system, "
                "review actions from the desk",
            ),
            self._stream(
                s.completions_stream,
                [self.completions_wildcard, self.reviews_wildcard],
                s.max_age_seconds,
                description="editflow: completion and manual-review events",
            ),
            self._stream(
                self.audit_stream,
                [f"{self.audit_subject_prefix}.>"],
                s.audit_max_age_seconds,
                description="editflow: one audit record per finished edit (prompt, source, "
                "result, cost, status, approvers, department); long retention",
            ),
            self._stream(
                s.dlq_stream,
                [f"{s.dlq_subject_prefix}.>"],
                s.dlq_max_age_seconds,
                description="editflow: dead-lettered events, original payload and reason",
            ),
            self._stream(
                s.advisories_stream,
                [self.max_deliveries_advisory],
                s.dlq_max_age_seconds,
                description="editflow: max-delivery advisories, turned into dead letters",
            ),
        ]

    def consumers(self) -> list[tuple[str, ConsumerConfig]]:
        s = self.settings
        return [
            (
                s.approvals_stream,
                ConsumerConfig(
                    durable_name=s.consumer,
                    description="editflow operator: approval and withdraw events",
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=s.ack_wait_seconds,
                    max_deliver=s.max_deliver,
                    backoff=self.backoff,
                    filter_subjects=self.oa_subjects,
                    max_ack_pending=1000,
                ),
            ),
            (
                s.advisories_stream,
                ConsumerConfig(
                    durable_name=self.dlq_consumer,
                    description="editflow: copies max-delivery messages to the dead letter",
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=30,
                    max_deliver=-1,
                ),
            ),
        ]


@dataclass(frozen=True)
class Change:
    """What :func:`provision` did to one stream or consumer."""

    kind: Literal["stream", "consumer", "bucket"]
    name: str
    action: Action
    differences: tuple[str, ...] = ()


_STREAM_FIELDS = (
    "subjects",
    "retention",
    "discard",
    "storage",
    "num_replicas",
    "max_age",
    "duplicate_window",
    "description",
)
_CONSUMER_FIELDS = (
    "description",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "backoff",
    "filter_subjects",
    "max_ack_pending",
    "deliver_policy",
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        if all(isinstance(x, str) for x in a + b):
            return sorted(a) == sorted(b)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _differences(desired: Any, current: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for name in fields:
        want, have = getattr(desired, name), getattr(current, name)
        if want is None:
            continue
        if name == "ack_wait" and getattr(desired, "backoff", None):
            want = desired.backoff[0]  # the server makes the first backoff the ack wait
        if not _same(want, have):
            out.append(f"{name}: {have!r} -> {want!r}")
    return tuple(out)


async def provision(js: JetStreamContext, topology: Topology) -> list[Change]:
    """Create or update every stream and consumer; with equal settings it changes nothing."""
    changes: list[Change] = []
    for desired in topology.streams():
        assert desired.name is not None
        try:
            info = await js.stream_info(desired.name)
        except NotFoundError:
            await js.add_stream(desired)
            changes.append(Change("stream", desired.name, "created"))
            continue
        diff = _differences(desired, info.config, _STREAM_FIELDS)
        if diff:
            await js.update_stream(desired)
            changes.append(Change("stream", desired.name, "updated", diff))
        else:
            changes.append(Change("stream", desired.name, "unchanged"))
    for stream, desired in topology.consumers():
        assert desired.durable_name is not None
        try:
            info = await js.consumer_info(stream, desired.durable_name)
        except NotFoundError:
            await js.add_consumer(stream, desired)
            changes.append(Change("consumer", desired.durable_name, "created"))
            continue
        diff = _differences(desired, info.config, _CONSUMER_FIELDS)
        if diff:
            await js.add_consumer(stream, desired)  # the server updates a durable in place
            changes.append(Change("consumer", desired.durable_name, "updated", diff))
        else:
            changes.append(Change("consumer", desired.durable_name, "unchanged"))
    changes.append(await provision_ledger(js, topology))
    for change in changes:
        if change.action != "unchanged":
            log.info(
                "%s %s %s",
                change.kind,
                change.name,
                change.action,
                extra={"differences": list(change.differences)},
            )
    return changes


_LEDGER_FIELDS = ("max_age", "max_msgs_per_subject", "storage", "num_replicas", "description")


async def provision_ledger(js: JetStreamContext, topology: Topology) -> Change:
    """Create the ledger bucket, or update its stream when the TTL or history differ."""
    config = topology.ledger_config()
    try:
        info = await js.stream_info(topology.ledger_stream)
    except NotFoundError:
        await js.create_key_value(config)
        return Change("bucket", config.bucket, "created")
    current = info.config
    desired = current.evolve(
        max_age=config.ttl,
        max_msgs_per_subject=config.history,
        storage=config.storage,
        num_replicas=config.replicas,
        description=config.description,
    )
    diff = _differences(desired, current, _LEDGER_FIELDS)
    if not diff:
        return Change("bucket", config.bucket, "unchanged")
    await js.update_stream(desired)
    return Change("bucket", config.bucket, "updated", diff)
