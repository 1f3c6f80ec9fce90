"""Namespace prefixes in S3: an EditJob reads only its own namespace's uploads (pure functions).

The bridge refuses such an approval naming the field (dead letter, no EditJob);
a kubectl-applied EditJob ends Failed with ``s3_key_outside_namespace`` before
any Job. The session policy of an attempt is checked against a real MinIO in
``tests/security/test_attempt_keys.py``; here only its shape.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from editflow.core.errors import InvalidInputError
from editflow.core.settings import OperatorSettings
from editflow.events.models import ApprovalEvent
from editflow.operator.decide import Observed, decide
from editflow.operator.jobspec import job_manifest
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import ANNOTATION_RESOLVE
from editflow.operator.tenancy import (
    OUTPUT_PREFIX_OUTSIDE_NAMESPACE,
    S3_KEY_OUTSIDE_NAMESPACE,
    S3KeyOutsideNamespaceError,
    attempt_policy,
    check_source_key,
)

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings()


def approval(**data: object) -> ApprovalEvent:
    body = {
        "form_id": "F-1",
        "approval_id": "AP-1",
        "applicant": {"id": "u-1"},
        "approvers": [{"id": "m-1"}],
        "instruction": "remove the watermark",
        **data,
    }
    return ApprovalEvent(id="e-1", source="/oa/forms", time=NOW, data=body)


def mapped(**data: object) -> dict:
    return editjob_from_approval(
        approval(**data), namespace="team-a", bucket="editflow", default_model="longcat-image-edit"
    )


@pytest.mark.parametrize(
    "key",
    [
        "uploads/team-b/ab/x.png",  # another namespace's upload
        "results/team-a/edit/attempt-1/result.png",  # a result, even of the same namespace
        "uploads/team-a",  # the prefix itself, no object
        "uploads/team-a/../team-b/x.png",  # climbs out
        "uploads/team-a//x.png",
        "uploads/team-ab/x.png",  # a namespace whose name starts the same
        "x.png",
    ],
)
def test_keys_outside_the_namespace_upload_prefix_are_refused(key: str) -> None:
    with pytest.raises(S3KeyOutsideNamespaceError, match="uploads/team-a/") as refused:
        check_source_key(
            key, namespace="team-a", upload_prefix="uploads", field="spec.source.s3Key"
        )
    assert refused.value.field == "spec.source.s3Key"
    assert refused.value.code == S3_KEY_OUTSIDE_NAMESPACE and not refused.value.retriable


def test_the_namespace_own_uploads_are_accepted() -> None:
    check_source_key(
        "uploads/team-a/ab/abcdef.png", namespace="team-a", upload_prefix="/uploads/", field="f"
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"image_key": "uploads/team-b/ab/x.png"}, "data.image_key"),
        ({"image_url": "s3://editflow/uploads/team-b/ab/x.png"}, "data.image_url"),
        ({"image_url": "s3://editflow/results/team-a/e/attempt-1/r.png"}, "data.image_url"),
    ],
)
def test_the_bridge_refuses_an_approval_naming_another_namespace_key(data, field) -> None:
    with pytest.raises(InvalidInputError) as refused:
        mapped(**data)
    assert refused.value.field == field


def test_the_bridge_maps_an_own_upload_to_s3key() -> None:
    ej = mapped(image_key="uploads/team-a/ab/x.png")
    assert ej["spec"]["source"] == {"s3Key": "uploads/team-a/ab/x.png"}
    ej = mapped(image_url="s3://editflow/uploads/team-a/ab/y.png")
    assert ej["spec"]["source"] == {"s3Key": "uploads/team-a/ab/y.png"}


def new_editjob(key: str) -> dict:
    return {
        "apiVersion": "editflow.io/v1alpha1",
        "kind": "EditJob",
        "metadata": {"name": "applied", "namespace": "team-a", "uid": "uid-1", "generation": 1},
        "spec": {"source": {"s3Key": key}, "prompt": "remove the watermark"},
    }


def test_a_kubectl_applied_editjob_naming_another_namespace_key_ends_failed() -> None:
    out = decide(Observed(editjob=new_editjob("uploads/team-b/ab/x.png"), now=NOW), SETTINGS)
    assert out.status["phase"] == "Failed"
    assert out.status["errorCode"] == S3_KEY_OUTSIDE_NAMESPACE
    assert "spec.source.s3Key" in out.status["message"]
    assert "uploads/team-a/" in out.status["message"]
    assert out.create_job is None and out.publish_completion


def test_a_kubectl_applied_editjob_with_its_own_upload_is_accepted() -> None:
    out = decide(Observed(editjob=new_editjob("uploads/team-a/ab/x.png"), now=NOW), SETTINGS)
    # Accepted and, with a slot free, started in the same write (no Pending round trip).
    assert out.status["phase"] == "Running" and out.create_job == 1
    assert out.status.get("errorCode") is None


def test_the_attempt_policy_names_one_object_and_one_prefix_and_never_lists() -> None:
    policy = attempt_policy(
        bucket="editflow",
        input_key="uploads/team-a/ab/x.png",
        output_prefix="results/team-a/e/a-1/",
    )
    resources = {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["Statement"]}
    assert resources["ReadInput"] == (
        ["s3:GetObject"],
        ["arn:aws:s3:::editflow/uploads/team-a/ab/x.png"],
    )
    assert resources["WriteOutput"][1] == ["arn:aws:s3:::editflow/results/team-a/e/a-1/*"]
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert "s3:ListBucket" not in actions and "s3:DeleteObject" not in actions


def test_the_job_reads_its_keys_from_the_attempt_secret_when_given() -> None:
    ej = new_editjob("uploads/team-a/ab/x.png")
    env = job_manifest(ej, 1, SETTINGS, credentials_secret="applied-a1-s3")["spec"]["template"][
        "spec"
    ]["containers"][0]["env"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["EDITFLOW_S3__SESSION_TOKEN"] == {"name": "applied-a1-s3", "key": "session-token"}
    assert {r["name"] for r in refs.values()} == {"applied-a1-s3"}
    plain = job_manifest(ej, 1, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "EDITFLOW_S3__SESSION_TOKEN" not in {e["name"] for e in plain}


def test_workers_get_the_weights_secret_when_one_is_set() -> None:
    ej = new_editjob("uploads/team-a/ab/x.png")
    settings = OperatorSettings(weights_secret="editflow-weights")
    env = job_manifest(ej, 1, settings)["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["EDITFLOW_WORKER__WEIGHTS_ACCESS_KEY"] == {
        "name": "editflow-weights",
        "key": "access-key",
    }
    assert refs["EDITFLOW_WORKER__WEIGHTS_SECRET_KEY"]["name"] == "editflow-weights"
    plain = job_manifest(ej, 1, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"].startswith("EDITFLOW_WORKER__WEIGHTS") for e in plain)


def with_output(prefix: str) -> dict:
    ej = new_editjob("uploads/team-a/ab/x.png")
    ej["spec"]["output"] = {"prefix": prefix}
    return ej


@pytest.mark.parametrize(
    "prefix",
    [
        "results/team-b/stolen",  # another namespace's results
        "results/team-a/../team-b",  # climbs out
        "results/team-ab/x",  # a namespace whose name starts the same
        "uploads/team-a/x",  # not results at all
        "results",
    ],
)
def test_an_output_prefix_outside_the_namespace_results_ends_failed_naming_the_field(
    prefix: str,
) -> None:
    out = decide(Observed(editjob=with_output(prefix), now=NOW), SETTINGS)
    assert out.status["phase"] == "Failed", out.status
    assert out.status["errorCode"] == OUTPUT_PREFIX_OUTSIDE_NAMESPACE
    assert "spec.output.prefix" in out.status["message"]
    assert "results/team-a/" in out.status["message"]
    assert out.create_job is None


@pytest.mark.parametrize(
    "prefix", ["results/team-a", "results/team-a/posters/", "/results/team-a/x"]
)
def test_an_output_prefix_inside_the_namespace_results_is_accepted(prefix: str) -> None:
    out = decide(Observed(editjob=with_output(prefix), now=NOW), SETTINGS)
    assert out.status["phase"] == "Running" and out.create_job == 1


def needs_review(resolve_key: str) -> dict:
    ej = new_editjob("uploads/team-a/ab/x.png")
    ej["metadata"]["annotations"] = {ANNOTATION_RESOLVE: resolve_key}
    ej["status"] = {
        "phase": "NeedsReview",
        "message": "failed after all retries",
        "finishedAt": "2026-12-01T11:00:00Z",
        "completionEventId": "c-1",
        "completionPublishedAt": "2026-12-01T11:00:01Z",
        "callbackDelivery": "none",
    }
    return ej


@pytest.mark.parametrize(
    "key",
    [
        "uploads/team-b/ab/secret.png",  # another tenant's upload: the gateway would presign it
        "results/team-b/their-edit/attempt-1/result.png",
        "results/team-a/another-edit/attempt-1/result.png",  # another edit, same namespace
        "results/team-a/applied/../other/x.png",
        "results/team-a/applied/",
    ],
)
def test_a_resolve_key_outside_the_edit_result_prefix_is_refused_and_it_stays_in_review(
    key: str,
) -> None:
    out = decide(Observed(editjob=needs_review(key), now=NOW), SETTINGS)
    assert out.status.get("phase") in (None, "NeedsReview"), out.status
    assert "resultKey" not in out.status and not out.publish_completion
    assert ANNOTATION_RESOLVE in out.status["message"]
    assert "results/team-a/applied/" in out.status["message"]
    assert [e[1] for e in out.events] == ["ResolveRefused"]


def test_a_resolve_key_under_the_edit_result_prefix_succeeds() -> None:
    key = "results/team-a/applied/designer/fixed.png"
    out = decide(Observed(editjob=needs_review(key), now=NOW), SETTINGS)
    assert out.status["phase"] == "Succeeded" and out.status["resultKey"] == key


def test_a_kubectl_editjob_claiming_an_approval_id_fails_as_itself_and_never_answers_it() -> None:
    """Issue 20 §3: a tenant's EditJob with a guessed ``spec.oa.eventId`` and a source that
    fails at once. Its failure must not go out as that approval's completion (and so into the
    approval ledger as finished); it fails naming the field, under an id of its own."""
    from editflow.operator.names import editjob_name
    from editflow.operator.outcomes import completion_for

    ej = new_editjob("uploads/team-a/ab/x.png")
    ej["spec"]["oa"] = {"formId": "F-9", "approvalId": "A-9", "eventId": "3f2a-guessed"}
    out = decide(Observed(editjob=ej, now=NOW), SETTINGS)
    assert out.status["phase"] == "Failed" and out.status["errorCode"] == "event_id_claimed"
    assert "spec.oa.eventId" in out.status["message"] and out.create_job is None
    ej["status"] = out.status
    assert completion_for(ej).data.approval_event_id == "editjob:team-a/applied"

    # The bridge's own EditJob (its name derived from the id, or a re-run of it) is trusted.
    for name in (editjob_name("3f2a-guessed"), f"{editjob_name('3f2a-guessed')}-r2"):
        mine = new_editjob("uploads/team-a/ab/x.png")
        mine["metadata"]["name"] = name
        mine["spec"]["oa"] = {"formId": "F-9", "approvalId": "A-9", "eventId": "3f2a-guessed"}
        assert decide(Observed(editjob=mine, now=NOW), SETTINGS).status["phase"] == "Running"
