"""Variants (issue 15 §2): several results of one edit, and the applicant's pick.

Pure parts: the approval → EditJob → worker request mapping, decide() recording every
variant, the completion listing them. On the real apiserver and NATS: a select event
handled by the bridge records the choice in status, publishes the selection event and an
audit record; a variant the edit does not have is dead-lettered naming ``data.variant``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from editflow.core.settings import OperatorSettings
from editflow.devstack.stack import LocalStack
from editflow.events.audit import AuditRecord
from editflow.events.dlq import list_dead_letters
from editflow.events.models import (
    Person,
    SelectData,
    SelectEvent,
    SelectionEvent,
    selection_event_id,
)
from editflow.events.publish import publish_event
from editflow.events.worker_contract import CostBreakdown, VariantResult, WorkerResult
from editflow.operator.crd import editjob_path
from editflow.operator.decide import decide
from editflow.operator.jobspec import worker_request
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.outcomes import completion_for
from tests.harness import scratch_namespace
from tests.operator.test_bridge import Bus, _settings, approval, eventually
from tests.operator.test_decisions import NOW, job, observed

SETTINGS = OperatorSettings()


def three_variant_result() -> WorkerResult:
    variants = [
        VariantResult(index=i, seed=6 + i, result_key=f"results/ns/e/attempt-1/result-{i}.png")
        for i in (1, 2, 3)
    ]
    return WorkerResult(
        status="success",
        edit_id="e",
        attempt=1,
        model="longcat-image-edit",
        seed=7,
        result_key=variants[0].result_key,
        result_url="http://s3/1",
        cost=CostBreakdown(total=3.0),
        variants=variants,
    )


def test_variants_go_from_the_approval_to_the_worker_request() -> None:
    editjob = editjob_from_approval(
        approval(variants=3), namespace="ns", bucket="editflow", default_model="longcat-image-edit"
    )
    assert editjob["spec"]["variants"] == 3
    editjob["metadata"]["uid"] = "u"
    assert worker_request(editjob, 1, SETTINGS).variants == 3
    single = editjob_from_approval(
        approval(), namespace="ns", bucket="editflow", default_model="longcat-image-edit"
    )
    assert "variants" not in single["spec"]
    request = worker_request(
        {**single, "metadata": {**single["metadata"], "uid": "u"}}, 1, SETTINGS
    )
    assert "variants" not in request.model_dump(exclude_unset=True), (
        "old requests stay as they were"
    )


def test_every_variant_is_recorded_in_status_and_listed_in_the_completion() -> None:
    editjob = editjob_from_approval(
        approval(variants=3), namespace="ns", bucket="editflow", default_model="longcat-image-edit"
    )
    editjob["metadata"].update(uid="uid-1", creationTimestamp="2026-11-25T11:59:00Z")
    editjob["status"] = {"phase": "Running", "attempts": 1, "jobName": "x-a1"}
    decision = decide(
        observed(editjob, NOW, job=job(("Complete", "")), result=three_variant_result()),
        SETTINGS,
    )
    assert decision.status["phase"] == "Succeeded"
    assert [(v["index"], v["seed"]) for v in decision.status["variants"]] == [
        (1, 7),
        (2, 8),
        (3, 9),
    ]
    editjob["status"] = {**editjob["status"], **decision.status}
    completion = completion_for(editjob)
    assert [v.index for v in completion.data.variants] == [1, 2, 3]
    assert completion.data.variants[1].result_key.endswith("result-2.png")


# -- the select path on the real platform ----------------------------------------------------
@pytest.fixture(scope="module")
def namespace(stack: LocalStack) -> Iterator[str]:
    yield from scratch_namespace(stack, "variants")


@pytest.fixture
async def bus(stack: LocalStack, namespace: str) -> AsyncIterator[Bus]:
    opened = Bus(stack, _settings(stack, namespace))
    await opened.open()
    yield opened
    await opened.close()


async def _succeeded_editjob(bus: Bus, variants: int) -> tuple[Any, str]:
    event = approval(variants=variants)
    manifest = editjob_from_approval(
        event, namespace=bus.namespace, bucket="editflow", default_model="longcat-image-edit"
    )
    manifest["metadata"].pop("finalizers", None)  # no operator here to remove it
    created = await bus.kube.create(editjob_path(bus.namespace), manifest)
    name = created["metadata"]["name"]
    status: dict[str, Any] = {
        "phase": "Succeeded",
        "attempts": 1,
        "resultKey": f"results/{bus.namespace}/{name}/attempt-1/result.png",
        "finishedAt": "2026-12-01T10:00:00Z",
    }
    if variants > 1:
        status["variants"] = [
            {"index": i, "seed": 40 + i, "resultKey": f"results/x/{name}/result-{i}.png"}
            for i in range(1, variants + 1)
        ]
    await bus.kube.patch(editjob_path(bus.namespace, name) + "/status", {"status": status})
    return event, name


def _select(event: Any, variant: int) -> SelectEvent:
    return SelectEvent(
        source="https://oa.example.com",
        data=SelectData(
            form_id=event.data.form_id,
            approval_id=event.data.approval_id,
            approval_event_id=event.id,
            variant=variant,
            selected_by=Person(id="u42"),
        ),
    )


@pytest.mark.platform
@pytest.mark.slow
async def test_a_pick_is_recorded_in_status_the_audit_log_and_published(bus: Bus) -> None:
    event, name = await _succeeded_editjob(bus, variants=3)
    bus.start()
    await publish_event(bus.js, _select(event, 2), bus.topology.select_subject)

    async def recorded() -> dict | None:
        status = ((await bus.editjob(name)) or {}).get("status") or {}
        return status if status.get("selectedVariant") == 2 else None

    status = await eventually(recorded, what="the selection in status")
    assert status["selectedBy"] == "u42" and status["selectedAt"]
    raw = await bus.js.get_last_msg(
        bus.topology.completions_stream, bus.topology.selection_subject(event.id)
    )
    selection = SelectionEvent.model_validate_json(raw.data)
    assert selection.id == selection_event_id(event.id, 2)
    assert selection.data.variant == 2 and selection.data.seed == 42
    assert selection.data.result_key.endswith("result-2.png")
    sub = await bus.js.pull_subscribe(
        f"{bus.topology.audit_subject_prefix}.{bus.namespace}", stream=bus.topology.audit_stream
    )
    records = [AuditRecord.model_validate_json(m.data) for m in await sub.fetch(10, timeout=5)]
    picks = [r for r in records if r.kind == "selection" and r.editjob == name]
    assert [(r.selected_variant, r.selected_by) for r in picks] == [(2, "u42")]


@pytest.mark.platform
@pytest.mark.slow
async def test_a_variant_the_edit_does_not_have_is_dead_lettered_with_the_field(bus: Bus) -> None:
    event, name = await _succeeded_editjob(bus, variants=2)
    bus.start()
    await publish_event(bus.js, _select(event, 4), bus.topology.select_subject)

    async def dead() -> list:
        letters = await list_dead_letters(bus.js, bus.topology)
        return [d for d in letters if event.id.encode() in d.body]

    (letter,) = await eventually(dead, what="the dead letter")
    assert "data.variant" in letter.message and "variants 1 to 2, not 4" in letter.message, (
        letter.reason,
        letter.message,
    )
    status = ((await bus.editjob(name)) or {}).get("status") or {}
    assert "selectedVariant" not in status
