"""The operator's pure functions: event -> EditJob, EditJob -> Job, state -> decision.

Manifests are compared with golden files (``UPDATE_GOLDEN=1`` rewrites them);
decisions are checked scenario by scenario, like the brief's state machine.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from editflow.core.errors import PERMANENT_EXIT_CODES, ErrorInfo, InvalidInputError
from editflow.core.settings import OperatorSettings
from editflow.events.models import ApprovalEvent
from editflow.events.worker_contract import CostBreakdown, WorkerResult
from editflow.operator.attempts import job_attempt_state
from editflow.operator.decide import Observed, decide, is_sampled, merge_conditions
from editflow.operator.jobspec import job_manifest
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import ANNOTATION_CANCEL, ANNOTATION_RESOLVE, editjob_name, job_name

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(max_running_per_namespace=2, backoff_seconds=30, max_attempts=3)


def golden(name: str, data: object) -> None:
    path = GOLDEN / name
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert json.loads(path.read_text()) == json.loads(text), f"{name} differs from its golden file"


def approval(**data: object) -> ApprovalEvent:
    body = {
        "form_id": "F-1001",
        "approval_id": "AP-77",
        "applicant": {"id": "u-1", "name": "李雷"},
        "approvers": [{"id": "m-1"}, {"id": "m-2"}],
        "image_url": "https://cdn.example.com/poster.jpg",
        "instruction": "把背景换成海边日落，保留人物",
        "usage": "wechat-article",
        "priority": "high",
        "generation": {"steps": 30, "seed": 7},
        **data,
    }
    return ApprovalEvent(
        id="0b5e8f5e-7c1a-4d0b-9a55-1a2b3c4d5e6f", source="/oa/forms", time=NOW, data=body
    )


def editjob(phase: str = "", **status: object) -> dict:
    ej = editjob_from_approval(
        approval(), namespace="edits", bucket="editflow", default_model="longcat-image-edit"
    )
    ej["metadata"].update(uid="uid-1", generation=1, creationTimestamp="2026-11-25T11:59:00Z")
    ej["status"] = {"phase": phase, **status} if phase else {}
    return ej


def job(*conditions: tuple[str, str]) -> dict:
    return {
        "metadata": {"name": "j"},
        "status": {
            "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions]
        },
    }


def pod(phase: str, exit_code: int | None = None, unschedulable: str | None = None, age: int = 5):
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "worker", "state": {"terminated": {"exitCode": exit_code}}}
        ]
    if unschedulable:
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        ]
    return {"metadata": {"creationTimestamp": created}, "spec": {}, "status": status}


_UNSEEN = object()


def observed(
    ej: dict,
    now: datetime,
    job: object = _UNSEEN,
    pods: tuple = (),
    result: WorkerResult | None = None,
    **kw: object,
) -> Observed:
    """What the reconciler gives decide() in Job mode: the attempt's Job and Pods (and the
    result found for it) read by the Job dispatcher as an AttemptState (issue 21 item 1).
    Without ``job`` nothing was observed (an EditJob with no attempt in flight)."""
    if job is _UNSEEN and result is None and not pods:
        return Observed(ej, now, **kw)  # type: ignore[arg-type]
    status = ej.get("status") or {}
    state = job_attempt_state(
        status.get("jobName") or "j",
        int(status.get("attempts") or 0),
        None if job is _UNSEEN else job,  # type: ignore[arg-type]
        pods,
        result,
        deadline_seconds=int(ej["spec"].get("deadlineSeconds") or SETTINGS.deadline_seconds),
    )
    return Observed(ej, now, attempt=state, **kw)  # type: ignore[arg-type]


def result(ok: bool = True, attempt: int = 1, retriable: bool = True) -> WorkerResult:
    if ok:
        return WorkerResult(
            status="success",
            edit_id="e",
            attempt=attempt,
            model="longcat-image-edit",
            result_key="results/edits/e/attempt-1/result.png",
            result_url="http://s3/x",
            cost=CostBreakdown(total=12.5),
        )
    return WorkerResult(
        status="failed",
        edit_id="e",
        attempt=attempt,
        model="longcat-image-edit",
        error=ErrorInfo("model_failed" if retriable else "image_rejected", "boom", retriable),
    )


# -- names and manifests ------------------------------------------------------------
def test_one_event_id_always_names_the_same_editjob_and_job_names_stay_labels() -> None:
    assert editjob_name("0b5e8f5e-7c1a") == "ej-0b5e8f5e-7c1a"
    weird = editjob_name("OA/Form 1001:approval.77")
    assert weird == editjob_name("OA/Form 1001:approval.77") and weird.startswith("ej-")
    assert len(job_name("ej-" + "x" * 60, 10)) <= 63


def test_approval_event_maps_to_the_golden_editjob() -> None:
    golden("editjob_from_approval.json", editjob())


def test_an_s3_image_outside_the_platform_bucket_is_refused_with_the_field() -> None:
    event = approval(image_url="s3://other/a.png")
    with pytest.raises(InvalidInputError) as err:
        editjob_from_approval(
            event, namespace="e", bucket="editflow", default_model="longcat-image-edit"
        )
    assert err.value.field == "data.image_url"


def test_job_manifest_matches_golden_and_encodes_the_attempt_policy() -> None:
    manifest = job_manifest(editjob(), 2, SETTINGS)
    golden("job_attempt2.json", manifest)
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == SETTINGS.deadline_seconds
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == list(
        PERMANENT_EXIT_CODES
    )
    pod_spec = spec["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert manifest["metadata"]["ownerReferences"][0]["kind"] == "EditJob"
    request = json.loads(pod_spec["containers"][0]["args"][1])
    assert request["attempt"] == 2 and request["edit_id"] == editjob()["metadata"]["name"]


# -- decisions ----------------------------------------------------------------------
def test_a_new_editjob_with_no_slot_free_is_accepted_and_queued_in_one_write() -> None:
    """Issue 21 item 5: accepted and queued with its place in the same status write (it was
    Pending, then Queued in a second write)."""
    d = decide(Observed(editjob(), NOW, in_flight=2), SETTINGS)
    assert d.status["phase"] == "Queued" and d.create_job is None
    assert d.status["queuePosition"] == 1 and d.status["queuedAt"]
    kinds = {c["type"]: c["status"] for c in d.status["conditions"]}
    assert kinds == {"Accepted": "True", "Scheduled": "False"}


def test_a_new_editjob_with_a_free_slot_is_accepted_and_started_in_one_write() -> None:
    d = decide(Observed(editjob(), NOW), SETTINGS)
    assert d.create_job == 1 and d.status["phase"] == "Running" and d.status["attempts"] == 1
    kinds = {c["type"]: c["status"] for c in d.status["conditions"]}
    assert kinds == {"Accepted": "True", "Scheduled": "True"}
    assert d.status["queuedAt"] and d.status["observedGeneration"] == 1


def test_a_free_slot_starts_attempt_one() -> None:
    d = decide(Observed(editjob("Pending", attempts=0), NOW, in_flight=1), SETTINGS)
    assert d.create_job == 1 and d.status["phase"] == "Running"
    assert d.status["jobName"] == job_name(editjob()["metadata"]["name"], 1)


def test_the_cap_and_the_queue_ahead_keep_an_edit_queued() -> None:
    full = decide(Observed(editjob("Pending"), NOW, in_flight=2), SETTINGS)
    assert full.create_job is None and full.status["phase"] == "Queued"
    assert "2/2" in full.status["message"]
    behind = decide(Observed(editjob("Queued"), NOW, in_flight=1, queued_ahead=1), SETTINGS)
    assert behind.create_job is None


def test_success_records_result_and_publishes() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    d = decide(observed(ej, NOW, job=job(("Complete", "")), result=result()), SETTINGS)
    assert d.status["phase"] == "Succeeded" and d.status["costSeconds"] == 12.5
    assert d.status["resultKey"].endswith("result.png") and d.publish_completion


def test_gpu_seconds_count_every_attempt_not_only_the_one_that_decided() -> None:
    """Cost attribution: a retried edit cost its failed attempts' GPU time too."""
    started = (NOW - timedelta(seconds=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = result(False)
    failed.cost = CostBreakdown(total=7.0)
    first = editjob("Running", attempts=1, jobName="j", startedAt=started)
    retry = decide(observed(first, NOW, job=job(("Failed", "x")), result=failed), SETTINGS)
    assert retry.status["phase"] == "Queued" and retry.status["gpuSeconds"] == 7.0
    # A worker killed without a result held its GPU from the attempt's start until now.
    killed = editjob("Running", attempts=2, jobName="j", startedAt=started, gpuSeconds=7.0)
    crash = decide(
        observed(killed, NOW, job=job(("Failed", "x")), pods=(pod("Failed", 137),)), SETTINGS
    )
    assert crash.status["gpuSeconds"] == 47.0
    last = editjob("Running", attempts=3, jobName="j", startedAt=started, gpuSeconds=47.0)
    finished = observed(last, NOW, job=job(("Complete", "")), result=result(attempt=3))
    done = decide(finished, SETTINGS)
    assert done.status["costSeconds"] == 12.5 and done.status["gpuSeconds"] == 59.5
    # An attempt that never got a GPU cost nothing; a cancelled one held its GPU until now.
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    pending = editjob("Running", attempts=1, jobName="j", startedAt=started)
    expired = decide(
        observed(pending, NOW, job=job(), pods=(pod("Pending", unschedulable=msg, age=601),)),
        SETTINGS,
    )
    assert expired.status["gpuSeconds"] == 0.0
    cancelled = editjob("Running", attempts=1, jobName="j", startedAt=started, gpuSeconds=3.0)
    cancelled["metadata"]["annotations"][ANNOTATION_CANCEL] = "withdrawn"
    assert decide(observed(cancelled, NOW, job=job()), SETTINGS).status["gpuSeconds"] == 43.0


def test_a_permanent_worker_error_fails_without_retry() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    seen = observed(
        ej, NOW, job=job(("Failed", "PodFailurePolicy")), result=result(False, retriable=False)
    )
    d = decide(seen, SETTINGS)
    assert (
        d.status["phase"] == "Failed"
        and d.create_job is None
        and d.status["errorCode"] == "image_rejected"
    )


def test_a_retriable_failure_backs_off_then_needs_review_when_attempts_run_out() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    d = decide(
        observed(ej, NOW, job=job(("Failed", "BackoffLimitExceeded")), result=result(False)),
        SETTINGS,
    )
    assert d.status["phase"] == "Queued" and d.status["jobName"] is None
    assert d.status["retryAfter"] == "2026-11-25T12:00:30Z"
    waiting = editjob("Queued", attempts=1, retryAfter="2026-11-25T12:00:30Z")
    assert decide(Observed(waiting, NOW), SETTINGS).create_job is None
    later = decide(Observed(waiting, NOW + timedelta(seconds=31)), SETTINGS)
    assert later.create_job == 2
    last = editjob("Running", attempts=3, jobName="j")
    final = decide(observed(last, NOW, job=job(("Failed", "x")), result=result(False, 3)), SETTINGS)
    assert final.status["phase"] == "NeedsReview" and final.publish_review


def test_a_warm_attempts_log_lines_are_kept_in_the_status_for_the_desk() -> None:
    last = editjob("Running", attempts=3, jobName="j")
    failed = result(False, 3).model_copy(update={"log": ['{"msg": "edit failed"}']})
    final = decide(observed(last, NOW, job=job(("Failed", "x")), result=failed), SETTINGS)
    assert final.status["phase"] == "NeedsReview"
    assert final.status["workerLog"] == {"attempt": 3, "lines": ['{"msg": "edit failed"}']}
    plain = decide(observed(last, NOW, job=job(("Failed", "x")), result=result(False, 3)), SETTINGS)
    assert "workerLog" not in plain.status  # a Job attempt's lines are its Pod's


def test_every_failed_attempt_keeps_its_own_worker_code_and_message_for_the_desk() -> None:
    first = editjob("Running", attempts=1, jobName="j", workerPod="pod-a")
    d = decide(observed(first, NOW, job=job(("Failed", "x")), result=result(False)), SETTINGS)
    (one,) = d.status["failedAttempts"]
    assert one["attempt"] == 1 and one["worker"] == "pod-a" and one["errorCode"]
    third = editjob(
        "Running", attempts=3, jobName="j", workerPod="pod-c",
        failedAttempts=[one, {**one, "attempt": 2, "worker": "pod-b"}],
    )  # fmt: skip
    final = decide(
        observed(third, NOW, job=job(("Failed", "x")), result=result(False, 3)), SETTINGS
    )
    assert final.status["phase"] == "NeedsReview"
    assert [a["worker"] for a in final.status["failedAttempts"]] == ["pod-a", "pod-b", "pod-c"]


def test_timeouts_and_unknown_exit_codes_are_retriable_permanent_codes_are_not() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    timeout = decide(observed(ej, NOW, job=job(("Failed", "DeadlineExceeded"))), SETTINGS)
    assert timeout.status["phase"] == "Queued" and timeout.status["errorCode"] == "timeout"
    oom = decide(
        observed(ej, NOW, job=job(("Failed", "BackoffLimitExceeded")), pods=(pod("Failed", 137),)),
        SETTINGS,
    )
    assert oom.status["phase"] == "Queued"
    bad = decide(
        observed(ej, NOW, job=job(("Failed", "PodFailurePolicy")), pods=(pod("Failed", 4),)),
        SETTINGS,
    )
    assert bad.status["phase"] == "Failed"


def test_a_job_deleted_by_hand_is_recovered_from_s3_or_retried() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    recovered = decide(observed(ej, NOW, job=None, result=result()), SETTINGS)
    assert recovered.status["phase"] == "Succeeded"
    lost = decide(observed(ej, NOW, job=None), SETTINGS)
    assert lost.status["phase"] == "Queued" and lost.status["errorCode"] == "job_missing"


def test_a_pod_waiting_for_a_gpu_is_queued_then_times_out() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    waiting = decide(
        observed(ej, NOW, job=job(), pods=(pod("Pending", unschedulable=msg, age=5),)), SETTINGS
    )
    assert waiting.status["phase"] == "Queued" and msg in waiting.status["message"]
    expired = decide(
        observed(ej, NOW, job=job(), pods=(pod("Pending", unschedulable=msg, age=601),)), SETTINGS
    )
    assert expired.delete_job == "j" and expired.status["errorCode"] == "no_gpu"
    assert "no GPU node available" in expired.status["message"]


def test_cancel_and_resolve_annotations() -> None:
    ej = editjob("Running", attempts=1, jobName="j")
    ej["metadata"]["annotations"][ANNOTATION_CANCEL] = "withdrawn"
    d = decide(observed(ej, NOW, job=job()), SETTINGS)
    assert d.status["phase"] == "Cancelled" and d.delete_job == "j" and d.publish_completion
    review = editjob("NeedsReview", finishedAt="2026-11-25T11:00:00Z")
    # A designer's image lies under the edit's own result prefix (issue 20 §3).
    fixed = f"results/edits/{review['metadata']['name']}/designer/fixed.png"
    review["metadata"]["annotations"][ANNOTATION_RESOLVE] = fixed
    d = decide(Observed(review, NOW), SETTINGS)
    assert d.status["phase"] == "Succeeded" and d.status["resultKey"] == fixed


def test_final_phases_redeliver_until_recorded_then_expire() -> None:
    done = editjob("Succeeded", finishedAt="2026-11-25T11:00:00Z")
    assert decide(Observed(done, NOW, completion_id="c1"), SETTINGS).publish_completion
    # The outcome written with the phase, not yet recorded as delivered: delivered again.
    done["status"].update(completionEventId="c1", callbackDelivery="pending")
    again = decide(Observed(done, NOW, completion_id="c1"), SETTINGS)
    assert again.publish_completion and again.requeue_after == SETTINGS.delivery_recheck_seconds
    # A webhook waiting for its next try is not tried before its time.
    later = (NOW + timedelta(seconds=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done["status"].update(completionPublishedAt="t", delivery={"nextAttemptAt": later})
    waiting = decide(Observed(done, NOW, completion_id="c1"), SETTINGS)
    assert not waiting.publish_completion and waiting.requeue_after == 40
    done["status"].update(callbackDelivery="delivered", delivery=None)
    kept = decide(Observed(done, NOW, completion_id="c1"), SETTINGS)
    assert not kept.publish_completion and not kept.delete_editjob
    expired = decide(Observed(done, NOW + timedelta(days=8), completion_id="c1"), SETTINGS)
    assert expired.delete_editjob


def test_sampling_is_deterministic_and_near_the_rate() -> None:
    picks = sum(is_sampled(f"uid-{i}", 0.05) for i in range(4000))
    assert 120 < picks < 280
    assert is_sampled("uid-1", 0.05) == is_sampled("uid-1", 0.05)


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]
    new = [{"type": "Ready", "status": "False", "lastTransitionTime": "T1"}]
    assert merge_conditions(old, new)[0]["lastTransitionTime"] == "T0"


def test_in_a_pod_the_operator_sends_the_service_account_token(tmp_path, monkeypatch) -> None:
    from editflow.devstack.pki import LocalCA
    from editflow.operator import kube

    ca = LocalCA(tmp_path / "pki")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t0ken")
    (sa / "ca.crt").write_bytes(ca.cert_pem)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv(kube.SERVICEACCOUNT_DIR_ENV, str(sa))
    cfg = kube.load_configuration()
    assert cfg.host == "https://127.0.0.1:6443"
    scheme, token = kube.auth_headers(cfg)["authorization"].split()
    assert scheme.lower() == "bearer" and token == "t0ken"


def test_the_usage_profile_decides_the_format_when_the_editjob_does_not() -> None:
    from editflow.events.worker_contract import WorkerRequest
    from editflow.inference.profiles import output_profile

    manifest = job_manifest(editjob(), 1, SETTINGS)
    args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    request = WorkerRequest.model_validate_json(args[1])
    assert request.usage == "wechat-article" and "format" not in request.output.model_fields_set
    assert output_profile(request).format == "jpeg"
    explicit = editjob()
    explicit["spec"]["output"] = {"format": "png"}
    args = job_manifest(explicit, 1, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert output_profile(WorkerRequest.model_validate_json(args[1])).format == "png"


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CrashLoopBackOff"]
)
def test_a_pod_that_cannot_start_ends_the_attempt_within_a_minute_with_the_reason(reason) -> None:
    def stuck_pod(age: int) -> dict:
        p = pod("Pending", age=age)
        p["spec"]["nodeName"] = "node-1"
        waiting = {"reason": reason, "message": 'image "editflow/worker:9" not found'}
        p["status"]["containerStatuses"] = [{"name": "worker", "state": {"waiting": waiting}}]
        return p

    ej = editjob("Running", attempts=1, jobName="j")
    early = decide(observed(ej, NOW, job=job(), pods=(stuck_pod(10),)), SETTINGS)
    assert early.delete_job is None and reason in early.status["message"]
    assert early.requeue_after is not None and early.requeue_after <= 60
    late = decide(observed(ej, NOW, job=job(), pods=(stuck_pod(60),)), SETTINGS)
    assert late.delete_job == "j" and late.status["errorCode"] == "pod_stuck"
    assert reason in late.status["message"] and "not found" in late.status["message"]
    assert late.status["phase"] == "Queued"  # retried with backoff, like any retriable failure
