"""Reading an approval back from the approvals stream (what `editflow edits rerun` runs on)."""

from __future__ import annotations

import pytest

from editflow.events.archive import ApprovalNotInStream, find_approval
from editflow.events.binding import MSG_ID, encode
from editflow.events.models import WithdrawData, WithdrawEvent
from editflow.events.publish import publish_event, publish_wire


async def test_found_by_its_stream_sequence(js, topology, make_approval):
    event = make_approval()
    ack = await publish_event(js, event, topology.approval_subject)
    found, seq = await find_approval(js, topology, event.id, stream_seq=ack.seq)
    assert (found, seq) == (event, ack.seq)


async def test_found_by_scanning_when_the_sequence_is_unknown_or_wrong(js, topology, make_approval):
    others = [make_approval() for _ in range(5)]
    wanted = make_approval()
    for event in others[:3]:
        await publish_event(js, event, topology.approval_subject)
    # Published by hand with a Nats-Msg-Id that is not the CloudEvent id: only the body says.
    message = encode(wanted)
    message.headers[MSG_ID] = "something-else"
    ack = await publish_wire(js, topology.approval_subject, message)
    for event in others[3:]:
        await publish_event(js, event, topology.approval_subject)
    withdraw = WithdrawEvent(
        source="https://oa.example.com",
        data=WithdrawData(form_id="F", approval_id="A", approval_event_id=wanted.id),
    )
    await publish_event(js, withdraw, topology.withdraw_subject)

    assert await find_approval(js, topology, wanted.id) == (wanted, ack.seq)
    assert await find_approval(js, topology, wanted.id, stream_seq=1) == (wanted, ack.seq)
    consumers = [c.name async for c in _consumers(js, topology)]
    assert consumers == [topology.consumer]  # the scan's ephemeral consumer is gone


async def _consumers(js, topology):
    for info in await js.consumers_info(topology.approvals_stream):
        yield info


async def test_an_approval_the_stream_no_longer_has_is_a_clear_error(js, topology, make_approval):
    event = make_approval()
    ack = await publish_event(js, event, topology.approval_subject)
    await js.purge_stream(topology.approvals_stream)
    with pytest.raises(ApprovalNotInStream) as caught:
        await find_approval(js, topology, event.id, stream_seq=ack.seq)
    assert event.id in caught.value.message and topology.approvals_stream in caught.value.message
    assert caught.value.field == "event_id"
