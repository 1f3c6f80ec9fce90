"""The example Django hook's core against a real nats-server and a stand-in operator.

Django is not needed: the hook's logic (``examples/django_hook/editflow_hook/core.py``)
talks to the OA system through two small protocols, implemented here in memory.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import pytest

from editflow.core.errors import ErrorInfo
from editflow.events.consumer import run_consumer
from editflow.events.models import ApprovalEvent, EditJobRef, EditStatus, WithdrawEvent
from editflow.events.outcomes import completion_event, publish_completion
from editflow.events.sdk import OAClient

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_hook"


@pytest.fixture
def hook_core(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    return importlib.import_module("editflow_hook.core")


class MemoryStore:
    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.forms: dict[str, Any] = {}

    def mark_submitted(self, form, event_id):
        self.forms[form.form_id] = form
        self.state.setdefault(form.form_id, {}).update(state="submitted", event_id=event_id)

    def mark_pending(self, form_id, event_id, note):
        self.state[form_id].update(state="pending", note=note)

    def attach_result(self, form_id, result_url, result_key):
        self.state[form_id].update(state="done", result_url=result_url, result_key=result_key)

    def mark_failed(self, form_id, message):
        self.state[form_id].update(state="failed", note=message)

    def mark_in_review(self, form_id, ticket_id):
        self.state[form_id].update(state="in_review", ticket=ticket_id)

    def mark_cancelled(self, form_id):
        self.state[form_id].update(state="cancelled")

    def pending(self):
        return [
            self.forms[f] for f, s in self.state.items() if s["state"] in ("submitted", "pending")
        ]


class MemoryTickets:
    def __init__(self) -> None:
        self.tickets: list[tuple[Any, str, str]] = []

    def open_ticket(self, form, event_id, reason):
        self.tickets.append((form, event_id, reason))
        return f"T-{len(self.tickets)}"


class Operator:
    """Outcome per form id; ``None`` keeps the edit running until ``finish`` is called."""

    def __init__(self, js, topology, outcomes: dict[str, EditStatus | None]) -> None:
        self.js, self.topology, self.outcomes = js, topology, outcomes
        self.approvals: dict[str, ApprovalEvent] = {}
        self.withdrawn: list[WithdrawEvent] = []

    async def __call__(self, event, delivery) -> None:
        if isinstance(event, WithdrawEvent):
            self.withdrawn.append(event)
            approval = self.approvals[event.data.approval_event_id or ""]
            await self.finish(approval.data.form_id, "cancelled")
            return
        self.approvals[event.id] = event
        status = self.outcomes.get(event.data.form_id, "success")
        if status is not None:
            await self.finish(event.data.form_id, status)

    async def finish(self, form_id: str, status: EditStatus) -> None:
        (event,) = [a for a in self.approvals.values() if a.data.form_id == form_id]
        failing = status in ("failed", "needs_review")
        done = completion_event(
            editjob=EditJobRef(namespace="default", name=f"edit-{form_id}", uid="uid-1"),
            approval_event_id=event.id, form_id=form_id, approval_id=event.data.approval_id,
            status=status, attempts=3 if status == "needs_review" else 1,
            result_url="https://minio.example.com/results/x.png?X-Amz-Signature=abc"
            if status == "success" else None,
            result_key="results/x.png" if status == "success" else None,
            error=ErrorInfo(
                code="model_failed" if status == "needs_review" else "image_rejected",
                message="GPU failed 3 times" if status == "needs_review"
                else "the URL is not an image; upload a PNG or JPEG",
                retriable=status == "needs_review",
            ) if failing else None,
        )  # fmt: skip
        await publish_completion(self.js, self.topology, done)


@pytest.fixture
async def rig(settings, js, topology, hook_core):
    outcomes: dict[str, EditStatus | None] = {}
    operator = Operator(js, topology, outcomes)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(js, operator, topology=topology, stop=stop, fetch_timeout=0.3)
    )
    client = await OAClient.connect(settings, source="/oa/django", poll_interval=0.5)
    store, tickets = MemoryStore(), MemoryTickets()
    hook = hook_core.EditHook(client, store, tickets, wait_seconds=30)
    yield hook, store, tickets, operator, outcomes
    await client.close()
    stop.set()
    await asyncio.wait_for(task, 10)


def _form(hook_core, form_id: str):
    return hook_core.ApprovedForm(
        form_id=form_id, approval_id=f"AP-{form_id}", applicant_id="u42",
        applicant_name="李雷", approver_ids=("m1", "m2"),
        image_url="https://oa.example.com/files/poster.png",
        instruction="把背景换成海边日落", usage="wechat-article",
    )  # fmt: skip


async def test_success_attaches_the_result_to_the_form(rig, hook_core):
    hook, store, tickets, *_ = rig
    outcome = await hook.on_approved(_form(hook_core, "F-ok"))
    assert outcome is hook_core.Outcome.DONE
    assert store.state["F-ok"]["state"] == "done"
    assert store.state["F-ok"]["result_key"] == "results/x.png"
    assert tickets.tickets == []


async def test_needs_review_opens_a_ticket_for_a_designer(rig, hook_core):
    hook, store, tickets, _, outcomes = rig
    outcomes["F-review"] = "needs_review"
    outcome = await hook.on_approved(_form(hook_core, "F-review"))
    assert outcome is hook_core.Outcome.IN_REVIEW
    ((form, event_id, reason),) = tickets.tickets
    assert form.instruction == "把背景换成海边日落" and "GPU failed" in reason
    assert event_id == store.state["F-review"]["event_id"]
    assert store.state["F-review"]["state"] == "in_review"
    assert store.state["F-review"]["ticket"] == "T-1"


async def test_a_permanent_failure_tells_the_applicant_what_to_fix(rig, hook_core):
    hook, store, _, _, outcomes = rig
    outcomes["F-bad"] = "failed"
    assert await hook.on_approved(_form(hook_core, "F-bad")) is hook_core.Outcome.FAILED
    assert "upload a PNG or JPEG" in store.state["F-bad"]["note"]


async def test_a_timeout_leaves_the_form_pending_and_a_later_sweep_completes_it(
    rig, hook_core, js, topology
):
    hook, store, _, operator, outcomes = rig
    outcomes["F-slow"] = None
    form = _form(hook_core, "F-slow")
    assert await hook.on_approved(form, wait_seconds=0.2) is hook_core.Outcome.PENDING
    assert store.state["F-slow"]["state"] == "pending"
    assert "continues" in store.state["F-slow"]["note"]

    await operator.finish("F-slow", "success")
    assert await hook.retry_pending() == {"F-slow": hook_core.Outcome.DONE}
    assert store.state["F-slow"]["state"] == "done"
    # The sweep resubmitted with the same id: JetStream kept one approval, one edit ran.
    assert len(operator.approvals) == 1
    assert (await js.stream_info(topology.approvals_stream)).state.messages == 1


async def test_withdrawing_cancels_the_edit(rig, hook_core):
    hook, store, _, operator, outcomes = rig
    outcomes["F-w"] = None
    form = _form(hook_core, "F-w")
    assert await hook.on_approved(form, wait_seconds=0.2) is hook_core.Outcome.PENDING
    event_id = store.state["F-w"]["event_id"]
    await hook.on_withdrawn(form, event_id, "申请人撤回")
    done = await hook.client.wait_for_completion(event_id, timeout=30)
    assert hook.apply(form, done) is hook_core.Outcome.CANCELLED
    assert store.state["F-w"]["state"] == "cancelled"
    assert operator.withdrawn[0].data.reason == "申请人撤回"
