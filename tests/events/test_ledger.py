"""The approval ledger on a real JetStream KV bucket: states, compare-and-set, configuration."""

from __future__ import annotations

import asyncio
import uuid

from editflow.events.ledger import ApprovalLedger, LedgerEntry, ledger_key
from editflow.events.topology import Topology, provision_ledger


def _id() -> str:
    return f"appr-{uuid.uuid4()}"


async def test_an_unknown_approval_has_no_entry(js, topology):
    ledger = await ApprovalLedger.open(js, topology)
    assert await ledger.get(_id()) is None


async def test_created_is_recorded_with_where_the_editjob_is_and_where_the_event_came_from(
    js, topology
):
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    entry = await ledger.record_created(event_id, namespace="ns", editjob="ej-1", stream_seq=7)
    stored = await ledger.get(event_id)
    assert stored == entry
    assert (stored.state, stored.namespace, stored.editjob, stored.stream_seq, stored.reruns) == (
        "created", "ns", "ej-1", 7, 0,
    )  # fmt: skip
    assert stored.at.endswith("+00:00")


async def test_a_second_created_changes_nothing(js, topology):
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    first = await ledger.record_created(event_id, namespace="ns", editjob="ej-1", stream_seq=7)
    again = await ledger.record_created(event_id, namespace="ns", editjob="ej-1", stream_seq=9)
    assert again == first == await ledger.get(event_id)


async def test_a_withdrawal_before_the_approval_is_remembered_and_wins_over_a_late_create(
    js, topology
):
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    withdrawn = await ledger.record_withdrawn(event_id, reason="revoked by the applicant")
    assert withdrawn.state == "withdrawn" and withdrawn.editjob is None
    late = await ledger.record_created(event_id, namespace="ns", editjob="ej-1", stream_seq=3)
    assert late.state == "withdrawn"  # the caller learns it lost the race
    assert (await ledger.get(event_id)).reason == "revoked by the applicant"


async def test_a_withdrawal_of_a_created_approval_keeps_its_editjob(js, topology):
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    await ledger.record_created(event_id, namespace="ns", editjob="ej-1", stream_seq=3)
    entry = await ledger.record_withdrawn(event_id, reason="revoked")
    assert (entry.state, entry.editjob, entry.stream_seq) == ("withdrawn", "ej-1", 3)


async def test_finished_is_final_for_withdrawals_and_creates_but_takes_a_new_outcome(js, topology):
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    await ledger.record_created(event_id, namespace="ns", editjob="ej-1", stream_seq=3)
    done = await ledger.record_finished(event_id, outcome="needs_review")
    assert (done.state, done.outcome, done.editjob) == ("finished", "needs_review", "ej-1")
    assert (await ledger.record_withdrawn(event_id, reason="late")).state == "finished"
    created = await ledger.record_created(event_id, namespace="ns", editjob="x", stream_seq=1)
    assert created.state == "finished"
    resolved = await ledger.record_finished(event_id, outcome="success")
    assert (await ledger.get(event_id)) == resolved and resolved.outcome == "success"


async def test_any_event_id_is_a_valid_key(js, topology):
    ledger = await ApprovalLedger.open(js, topology)
    for event_id in ("OA/表单 42.审批 #7", "a.b.c", " spaced ", "x" * 500):
        await ledger.record_withdrawn(event_id, reason="r")
        entry = await ledger.get(event_id)
        assert entry is not None and entry.event_id == event_id
    assert ledger_key("a.b") != ledger_key("a_b")


async def test_concurrent_writers_on_one_id_all_land_in_a_consistent_order(js, topology):
    """Compare-and-set: a created, a withdrawn and a finished racing on one key all apply
    (none overwrites another from a stale read): the end state is finished."""
    ledgers = [await ApprovalLedger.open(js, topology) for _ in range(3)]
    for _ in range(10):
        event_id = _id()
        await asyncio.gather(
            ledgers[0].record_created(event_id, namespace="ns", editjob="ej", stream_seq=1),
            ledgers[1].record_withdrawn(event_id, reason="r"),
            ledgers[2].record_finished(event_id, outcome="cancelled"),
        )
        entry = await ledgers[0].get(event_id)
        assert entry.state == "finished" and entry.outcome == "cancelled"


async def test_concurrent_reruns_each_get_their_own_number(js, topology):
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    await ledger.record_created(event_id, namespace="ns", editjob="ej", stream_seq=1)
    entries = await asyncio.gather(
        *(
            ledger.reserve_rerun(event_id, namespace="ns", editjob=lambda n: f"ej-r{n}")
            for _ in range(5)
        )
    )
    assert sorted(e.reruns for e in entries) == [1, 2, 3, 4, 5]
    assert sorted(e.editjob for e in entries) == [f"ej-r{n}" for n in range(1, 6)]
    final = await ledger.get(event_id)
    assert (final.reruns, final.state, final.stream_seq) == (5, "created", 1)


async def test_the_bucket_keeps_one_revision_as_long_as_the_approvals_stream(js, topology):
    await ApprovalLedger.open(js, topology)
    info = await js.stream_info(topology.ledger_stream)
    approvals = await js.stream_info(topology.approvals_stream)
    assert info.config.max_msgs_per_subject == 1
    assert info.config.max_age >= approvals.config.max_age
    assert info.config.max_age == topology.settings.max_age_seconds


async def test_opening_twice_changes_nothing_and_a_new_max_age_is_applied(nc, settings):
    js = nc.jetstream()
    topology = Topology(settings.events)
    assert (await provision_ledger(js, topology)).action == "created"
    ledger = await ApprovalLedger.open(js, topology)
    event_id = _id()
    await ledger.record_withdrawn(event_id, reason="kept across reprovisioning")
    assert (await provision_ledger(js, topology)).action == "unchanged"
    longer = Topology(settings.events.model_copy(update={"max_age_seconds": 7200}))
    change = await provision_ledger(js, longer)
    assert change.action == "updated" and any("max_age" in d for d in change.differences)
    assert (await js.stream_info(topology.ledger_stream)).config.max_age == 7200
    assert (await (await ApprovalLedger.open(js, longer)).get(event_id)).state == "withdrawn"


def test_an_entry_round_trips_through_json():
    entry = LedgerEntry(
        event_id="e", state="created", namespace="ns", editjob="ej", outcome=None,
        reason=None, stream_seq=4, at="2026-12-01T00:00:00.000+00:00", reruns=2,
    )  # fmt: skip
    assert LedgerEntry.from_json(entry.to_json()) == entry
