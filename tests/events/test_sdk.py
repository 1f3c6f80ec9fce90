"""The OA-side SDK against a real JetStream and a stand-in operator built on ``run_consumer``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from editflow.core.errors import ErrorInfo, RetriableError
from editflow.events.connection import connect
from editflow.events.consumer import run_consumer
from editflow.events.dlq import list_dead_letters
from editflow.events.models import (
    ApprovalData,
    ApprovalEvent,
    CompletionEvent,
    EditJobRef,
    EditStatus,
    Person,
    WithdrawEvent,
    subject_token,
)
from editflow.events.outcomes import completion_event, publish_completion
from editflow.events.sdk import CompletionTimeout, OAClient
from editflow.events.topology import Topology, provision

APPLICANT = Person(id="u42", name="李雷")


class FakeOperator:
    """Answers approvals with a completion, like the real operator will (outcome per form id)."""

    def __init__(self, js, topology, outcomes: dict[str, EditStatus | None] | None = None) -> None:
        self.js, self.topology = js, topology
        self.outcomes = outcomes or {}
        self.events: list[Any] = []

    async def __call__(self, event, delivery) -> None:
        self.events.append(event)
        if isinstance(event, WithdrawEvent):
            return
        assert isinstance(event, ApprovalEvent)
        status = self.outcomes.get(event.data.form_id, "success")
        if status is None:
            return  # the edit is still running
        await publish_completion(self.js, self.topology, self.completion(event, status))

    @staticmethod
    def completion(event: ApprovalEvent, status: EditStatus) -> CompletionEvent:
        error = (
            None
            if status in ("success", "cancelled")
            else ErrorInfo(code="model_failed", message="CUDA OOM", retriable=True)
        )
        return completion_event(
            editjob=EditJobRef(
                namespace="default", name=f"edit-{subject_token(event.id)[:12]}", uid="u"
            ),
            approval_event_id=event.id, form_id=event.data.form_id,
            approval_id=event.data.approval_id, status=status,
            result_url="https://minio.example.com/r.png?sig" if status == "success" else None,
            result_key="results/r.png" if status == "success" else None,
            cost_seconds=12.5, attempts=1, error=error,
        )  # fmt: skip


@pytest.fixture
async def client(settings, js) -> AsyncIterator[OAClient]:
    oa = await OAClient.connect(settings, source="https://oa.example.com", poll_interval=0.5)
    yield oa
    await oa.close()


@pytest.fixture
async def operator(js, topology) -> AsyncIterator[FakeOperator]:
    fake = FakeOperator(js, topology)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(js, fake, topology=topology, stop=stop, fetch_timeout=0.3)
    )
    yield fake
    stop.set()
    await asyncio.wait_for(task, 10)


def _approval(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "form_id": "F-1",
        "approval_id": "AP-1",
        "applicant": APPLICANT,
        "approvers": [Person(id="m1")],
        "image_url": "https://oa.example.com/files/a.png",
        "instruction": "把背景换成纯白色",
    }
    fields.update(overrides)
    return fields


async def test_submit_and_wait_returns_the_completion(client, operator):
    event_id = await client.submit_approval(**_approval())
    done = await client.wait_for_completion(event_id, timeout=30)
    assert done.data.status == "success"
    assert done.data.approval_event_id == event_id
    assert done.data.result_url and done.data.result_key == "results/r.png"
    (received,) = operator.events
    assert received.id == event_id and received.data.applicant == APPLICANT


async def test_submitting_twice_runs_the_edit_once(client, operator, js, topology, eventually):
    first = await client.submit_approval(**_approval(form_id="F-twice"))
    second = await client.submit_approval(**_approval(form_id="F-twice"))
    assert first == second
    await client.wait_for_completion(first, timeout=30)
    assert (await js.stream_info(topology.approvals_stream)).state.messages == 1
    assert [e.id for e in operator.events] == [first]


async def test_a_completion_published_before_waiting_is_not_missed(client, js, topology):
    event_id = await client.submit_approval(**_approval(form_id="F-early"))
    approval = ApprovalEvent(
        id=event_id, source="https://oa.example.com", data=_approval_data(form_id="F-early")
    )
    await publish_completion(js, topology, FakeOperator.completion(approval, "success"))
    done = await client.wait_for_completion(event_id, timeout=30)
    assert done.data.status == "success"


def _approval_data(**overrides: Any) -> ApprovalData:
    return ApprovalData(**_approval(**overrides))


async def test_a_completion_republished_after_a_crash_is_a_duplicate(client, js, topology):
    event_id = await client.submit_approval(**_approval(form_id="F-dup"))
    approval = ApprovalEvent(
        id=event_id, source="https://oa.example.com", data=_approval_data(form_id="F-dup")
    )
    completion = FakeOperator.completion(approval, "failed")
    first = await publish_completion(js, topology, completion)
    again = await publish_completion(js, topology, FakeOperator.completion(approval, "failed"))
    assert not first.duplicate and again.duplicate
    done = await client.wait_for_completion(event_id, timeout=30)
    assert done.id == completion.id
    assert done.data.error is not None and done.data.error.code == "model_failed"


async def test_waiting_too_long_raises_a_retriable_timeout_and_the_edit_continues(client, operator):
    operator.outcomes["F-slow"] = None
    event_id = await client.submit_approval(**_approval(form_id="F-slow"))
    with pytest.raises(CompletionTimeout) as caught:
        await client.wait_for_completion(event_id, timeout=0.3)
    assert isinstance(caught.value, RetriableError)
    assert event_id in caught.value.message and "continues" in caught.value.message


async def test_withdraw_reaches_the_operator_with_the_approval_ids(client, operator, eventually):
    operator.outcomes["F-w"] = None
    event_id = await client.submit_approval(**_approval(form_id="F-w"))
    await client.withdraw(
        form_id="F-w", approval_id="AP-1", approval_event_id=event_id, reason="申请人撤回"
    )
    await eventually(lambda: len(operator.events) == 2, what="the withdraw event")
    withdraw = operator.events[1]
    assert isinstance(withdraw, WithdrawEvent)
    assert withdraw.data.approval_event_id == event_id
    assert withdraw.data.reason == "申请人撤回"


async def test_signed_client_and_signing_operator_agree(make_settings, eventually):
    settings = make_settings(signing_key="shared-secret")
    nc = await connect(settings.nats)
    js = nc.jetstream()
    topology = Topology(settings.events)
    await provision(js, topology)
    fake = FakeOperator(js, topology)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(js, fake, topology=topology, stop=stop, fetch_timeout=0.3)
    )
    try:
        signed = await OAClient.connect(settings, source="https://oa.example.com", mode="binary")
        unsigned_settings = settings.model_copy(
            update={"events": settings.events.model_copy(update={"signing_key": None})}
        )
        unsigned = await OAClient.connect(unsigned_settings, source="https://intruder.example.com")
        good = await signed.submit_approval(**_approval(form_id="F-signed"))
        await signed.wait_for_completion(good, timeout=30)
        await unsigned.submit_approval(**_approval(form_id="F-unsigned"))
        (letter,) = await eventually(lambda: list_dead_letters(js, topology), what="dead letter")
        assert letter.reason == "invalid_event.unsigned"
        assert [e.data.form_id for e in fake.events] == ["F-signed"]
        await signed.close()
        await unsigned.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.close()


async def test_invalid_input_is_refused_before_anything_is_sent(client, js, topology):
    with pytest.raises(ValidationError, match="image_url"):
        await client.submit_approval(**_approval(image_url="file:///etc/passwd"))
    assert (await js.stream_info(topology.approvals_stream)).state.messages == 0


async def test_a_completion_published_around_a_nats_restart_is_not_missed(
    nats_server, settings, js, topology
):
    client = await OAClient.connect(settings, source="https://oa.example.com", poll_interval=0.3)
    try:
        event_id = await client.submit_approval(**_approval(form_id="F-restart"))
        waiting = asyncio.create_task(client.wait_for_completion(event_id, timeout=60))
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(nats_server.start_process)
        approval = ApprovalEvent(
            id=event_id, source="https://oa.example.com", data=_approval_data(form_id="F-restart")
        )
        # The test's own connection reconnects faster than the client's and publishes at once.
        await publish_completion(js, topology, FakeOperator.completion(approval, "success"))
        done = await waiting
        assert done.data.status == "success"
    finally:
        await client.close()
