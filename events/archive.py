"""Read an approval back from the approvals stream (kept 7 days): ``editflow edits rerun``.

The ledger remembers the stream sequence an approval was delivered from, so
the usual lookup is one ``get_msg``. Without it (a ledger entry written by a
withdrawal, or an older ledger) the stream is scanned on the approval
subject with a throw-away ephemeral consumer: seconds for a day's events,
acceptable for a command a person runs by hand, never on the hot path.
"""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from editflow.core.errors import InvalidInputError
from editflow.events.models import APPROVAL_V1, ApprovalEvent
from editflow.events.problems import EventRejected
from editflow.events.pulling import until_drained
from editflow.events.topology import Topology
from editflow.events.validation import Policy, parse_event


class ApprovalNotInStream(InvalidInputError):
    """The approvals stream no longer holds the event (older than its max age, or purged)."""

    code = "approval_not_in_stream"


def _read(data: bytes, headers: dict[str, str] | None, subject: str, policy: Policy) -> object:
    try:
        return parse_event(data, headers, subject=subject, policy=policy)
    except EventRejected:
        return None


async def find_approval(
    js: JetStreamContext,
    topology: Topology,
    event_id: str,
    *,
    stream_seq: int | None = None,
    policy: Policy | None = None,
    scan_batch: int = 256,
) -> tuple[ApprovalEvent, int]:
    """The approval event with CloudEvent id ``event_id`` and its stream sequence."""
    policy = policy or Policy.from_settings(topology.settings, accept=(APPROVAL_V1,))
    stream = topology.approvals_stream
    if stream_seq is not None:
        with contextlib.suppress(NotFoundError):
            raw = await js.get_msg(stream, seq=stream_seq)
            event = _read(raw.data or b"", raw.headers, raw.subject or "", policy)
            if isinstance(event, ApprovalEvent) and event.id == event_id:
                return event, stream_seq
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=30,  # gone by itself should we die before deleting it
        description=f"editflow edits rerun: looking for {event_id[:100]}",
    )
    sub = await js.pull_subscribe(topology.approval_subject, stream=stream, config=config)
    try:
        async for msg in until_drained(sub, scan_batch):
            event = _read(msg.data, msg.headers, msg.subject, policy)
            if isinstance(event, ApprovalEvent) and event.id == event_id:
                return event, msg.metadata.sequence.stream
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if config.name:  # pull_subscribe names the ephemeral consumer in the config it got
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, config.name)
    raise ApprovalNotInStream(
        f"approval {event_id!r} is no longer in stream {stream} (kept "
        f"{topology.settings.max_age_seconds / 86400:g} days); republish it from the OA system "
        "to run it again",
        field="event_id",
    )
