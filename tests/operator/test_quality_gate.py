"""What the operator does with the quality gate's verdict: synthetic results, pure decisions.

The gate itself runs in the worker (tests/inference/test_quality.py); here a WorkerResult
carries a verdict, and ``decide()``, the completion event and the Job's request are checked
in both gate modes. The tiny random model always paints noise, so ``enforce`` is tested
with these synthetic results, never with the demo's model.
"""

from __future__ import annotations

import json

import pytest

from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import (
    CostBreakdown,
    QualityReport,
    WorkerRequest,
    WorkerResult,
)
from editflow.operator.crd import editjob_crd
from editflow.operator.decide import decide
from editflow.operator.jobspec import job_manifest
from editflow.operator.outcomes import completion_for
from tests.operator.test_decisions import NOW, SETTINGS, editjob, job, observed

REPAINTED = QualityReport(
    verdict="global_change",
    kind="local",
    changed_fraction=0.93,
    ssim=0.12,
    spread=0.97,
    reason="a local instruction changed 93% of the image, evenly",
)
FINE = REPAINTED.model_copy(
    update={"verdict": "ok", "changed_fraction": 0.05, "spread": 0.2, "reason": "5% changed"}
)


def judged(quality: QualityReport | None) -> WorkerResult:
    return WorkerResult(
        status="success",
        edit_id="e",
        attempt=1,
        model="longcat-image-edit",
        result_key="results/edits/e/attempt-1/result.png",
        result_url="http://s3/x",
        cost=CostBreakdown(total=12.5),
        quality=quality,
    )


def decided(quality: QualityReport | None, mode: str = "advisory", sample_rate: float = 0.0):
    settings = SETTINGS.model_copy(update={"gate_mode": mode, "sample_rate": sample_rate})
    running = editjob("Running", attempts=1, jobName="j")
    result = judged(quality)
    return running, decide(
        observed(running, NOW, job=job(("Complete", "")), result=result), settings
    )


def test_advisory_records_the_verdict_and_samples_the_flagged_edit_for_review() -> None:
    _, d = decided(REPAINTED, "advisory", sample_rate=0.0)
    assert d.status["phase"] == "Succeeded"
    assert d.status["quality"] == {
        "verdict": "global_change",
        "kind": "local",
        "changedFraction": 0.93,
        "ssim": 0.12,
        "spread": 0.97,
        "reason": REPAINTED.reason,
    }
    assert d.status["sampledForReview"] is True  # with a 0 % sample rate: flagged
    assert "quality gate (advisory): global_change" in d.status["message"]
    assert d.publish_completion and not d.publish_review


def test_an_ok_verdict_is_recorded_and_left_to_the_sample_rate() -> None:
    _, d = decided(FINE, "enforce", sample_rate=0.0)
    assert d.status["phase"] == "Succeeded" and d.status["quality"]["verdict"] == "ok"
    assert d.status["sampledForReview"] is False


@pytest.mark.parametrize("verdict", ["no_visible_change", "global_change"])
def test_enforce_routes_a_flagged_edit_to_needs_review_with_the_reason(verdict: str) -> None:
    flagged = REPAINTED.model_copy(update={"verdict": verdict})
    _, d = decided(flagged, "enforce")
    assert d.status["phase"] == "NeedsReview"
    assert d.status["errorCode"] == f"quality_{verdict}"
    assert REPAINTED.reason in d.status["message"]
    assert d.status["resultKey"].endswith("result.png")  # the designer starts from it
    assert d.publish_completion and d.publish_review


def test_a_result_without_a_verdict_is_a_plain_success_in_either_mode() -> None:
    for mode in ("advisory", "enforce"):
        _, d = decided(None, mode)
        assert d.status["phase"] == "Succeeded" and d.status.get("quality") is None


def test_the_completion_event_carries_the_verdict_and_its_figures() -> None:
    running, d = decided(REPAINTED, "advisory")
    finished = {**running, "status": {**running["status"], **d.status}}
    event = completion_for(finished)
    assert event.data.status == "success"
    assert event.data.quality is not None
    assert event.data.quality.verdict == "global_change"
    assert event.data.quality.changed_fraction == 0.93
    wire = json.loads(event.model_dump_json())
    assert wire["data"]["quality"]["spread"] == 0.97


def test_the_gate_mode_is_checked_when_the_settings_load() -> None:
    with pytest.raises(ValueError, match="gate_mode"):
        OperatorSettings(gate_mode="strict")


def test_kubectl_get_editjobs_has_a_gate_column() -> None:
    columns = editjob_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    gate = next(c for c in columns if c["name"] == "Gate")
    assert gate["jsonPath"] == ".status.quality.verdict"


def test_the_template_reaches_the_worker_only_when_the_editjob_has_one() -> None:
    def request_of(ej: dict) -> dict:
        manifest = job_manifest(ej, 1, SETTINGS)
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        raw = container["args"][container["args"].index("--request") + 1]
        return json.loads(raw)

    plain = editjob()
    assert "template" not in request_of(plain)
    templated = editjob()
    templated["spec"]["template"] = {"id": "remove-watermark", "parameters": {}}
    assert WorkerRequest.model_validate(request_of(templated)).template == "remove-watermark"
