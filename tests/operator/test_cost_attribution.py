"""Cost attribution on the operator side, as pure code: the audit record and bounded labels."""

from __future__ import annotations

from editflow.core.settings import OperatorSettings
from editflow.operator.outcomes import audit_for, completion_for
from editflow.operator.reconciler import cost_labels
from tests.operator.test_decisions import approval, editjob


def finished(**oa: str) -> dict:
    ej = editjob(
        "Succeeded",
        attempts=2,
        resultKey="results/edits/e/attempt-2/result.jpg",
        costSeconds=93.5,
        finishedAt="2026-11-25T12:03:00Z",
        quality={"verdict": "ok", "kind": "global"},
    )
    ej["spec"]["oa"].update(oa)
    return ej


def test_the_audit_record_says_who_asked_who_pays_and_what_it_cost() -> None:
    ej = finished(department="市场部", costCenter="CC-1001")
    record = audit_for(ej, completion_for(ej))
    assert record.status == "success" and record.attempts == 2
    assert (record.department, record.cost_center) == ("市场部", "CC-1001")
    assert record.gpu_seconds == 93.5 and record.quality == "ok"  # no gpuSeconds: costSeconds
    retried = finished(department="市场部")
    retried["status"]["gpuSeconds"] = 140.25  # the failed attempt before it, too
    assert audit_for(retried, completion_for(retried)).gpu_seconds == 140.25
    assert record.applicant == "u-1" and record.approvers == ["m-1", "m-2"]
    assert record.prompt == approval().data.instruction
    assert record.source == "https://cdn.example.com/poster.jpg"
    assert record.finished_at is not None and record.finished_at.minute == 3
    assert record.completion_event_id == completion_for(ej).id  # the dedupe key


def test_label_values_stay_in_bounded_sets() -> None:
    settings = OperatorSettings(metrics_departments=["marketing"])
    assert cost_labels(finished(department="marketing")["spec"], settings)[0] == "marketing"
    assert cost_labels(finished(department="a-new-team")["spec"], settings)[0] == "other"
    plain = finished()["spec"]
    assert cost_labels(plain, settings) == ("none", "wechat-article", "longcat-image-edit")
    plain["usage"] = "made-up-usage"
    plain["model"] = "made-up-model"
    assert cost_labels(plain, settings)[1:] == ("other", "other")
