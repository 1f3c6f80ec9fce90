"""The desk's review actions (docs/desk.md): every refusal names its field; each effect is the
write the existing paths act on; a redelivery is recognised by the action id."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from editflow.core.errors import InvalidInputError
from editflow.core.settings import EventsSettings, OperatorSettings
from editflow.events.desk import ReviewActionEvent
from editflow.events.topology import Topology
from editflow.operator.decide import SENT_BACK, decide
from editflow.operator.decision import Observed
from editflow.operator.names import (
    ANNOTATION_RESOLVE,
    ANNOTATION_REVIEW_ACTION,
    ANNOTATION_REVIEWED_BY,
    ANNOTATION_SEND_BACK,
)
from editflow.operator.review_actions import effect, handle_review_action, refusal

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
PREFIX = "results"
KEY = "results/design/ej-1/review-a-1/fixed.png"


def editjob(phase: str, *, annotations: dict | None = None, **status: object) -> dict:
    return {
        "metadata": {
            "name": "ej-1",
            "namespace": "design",
            "uid": "u-1",
            "resourceVersion": "7",
            "annotations": annotations or {},
        },
        "spec": {"prompt": "sky blue", "source": {"s3Key": "uploads/design/a.png"}},
        "status": {"phase": phase, "attempts": 3, **status},
    }


def action(kind: str, **data: object) -> ReviewActionEvent:
    extra = {
        "upload": {"result_key": KEY},
        "rerun": {"instruction": "sky deep blue"},
        "send_back": {"message": "crop the logo first"},
        "verdict": {"verdict": "poor", "better_instruction": "only the sky"},
    }[kind]
    return ReviewActionEvent(
        id="a-1",
        source="/gateway/desk",
        data={"action": kind, "namespace": "design", "editjob": "ej-1",
              "reviewer": {"id": "r-1", "name": "Li"}, **{**extra, **data}},
    )  # fmt: skip


def refused(obj: dict, event: ReviewActionEvent) -> InvalidInputError | None:
    return refusal(obj, event.data, result_prefix=PREFIX)


SAMPLED = {"sampledForReview": True, "quality": {"verdict": "ok"}}


@pytest.mark.parametrize(
    ("obj", "kind", "field", "words"),
    [
        (editjob("Succeeded"), "upload", "data.action", "this edit has finished"),
        (editjob("Failed"), "send_back", "data.action", "this edit has finished"),
        (editjob("Cancelled"), "rerun", "data.action", "this edit has finished"),
        (editjob("Running"), "upload", "data.action", "upload is for NeedsReview only"),
        (
            editjob("NeedsReview", annotations={ANNOTATION_RESOLVE: KEY}),
            "rerun",
            "data.action",
            "already decided",
        ),
        (editjob("NeedsReview"), "verdict", "data.action", "upload, rerun or send_back"),
        (editjob("Succeeded"), "verdict", "data.action", "sampled and gate-flagged"),
        (
            editjob("Succeeded", reviewVerdict={"verdict": "good", "by": {"id": "r-2"}}, **SAMPLED),
            "verdict",
            "data.action",
            "already recorded (good by r-2)",
        ),
    ],
)
def test_each_refusal_names_its_field(obj, kind, field, words):
    problem = refused(obj, action(kind))
    assert problem is not None and problem.field == field
    assert words in problem.message


@pytest.mark.parametrize(
    "key",
    [
        "results/design/ej-2/review-a-1/x.png",  # another edit's
        "results/other/ej-1/review-a-1/x.png",  # another namespace's
        "results/design/ej-1/../ej-2/x.png",  # climbing out
        "uploads/design/x.png",
    ],
)
def test_an_upload_outside_the_edits_own_results_is_refused(key):
    problem = refused(editjob("NeedsReview"), action("upload", result_key=key))
    assert problem is not None and problem.field == "data.result_key"
    assert "results/design/ej-1/" in problem.message


def test_the_allowed_actions_pass():
    assert refused(editjob("NeedsReview"), action("upload")) is None
    assert refused(editjob("NeedsReview"), action("rerun")) is None
    assert refused(editjob("NeedsReview"), action("send_back")) is None
    assert refused(editjob("Succeeded", **SAMPLED), action("verdict")) is None


def settings() -> OperatorSettings:
    return OperatorSettings(result_prefix=PREFIX)


def decided(obj: dict):
    obs = Observed(editjob=obj, now=NOW, completion_id="c-old")
    return decide(obs, settings())


def test_upload_is_the_resolve_annotation_and_ends_succeeded_with_the_reviewer():
    obj = editjob("NeedsReview", completionEventId="c-old")
    where, patch = effect(obj, action("upload"), NOW)
    annotations = patch["metadata"]["annotations"]
    assert where == "metadata" and patch["metadata"]["resourceVersion"] == "7"
    assert annotations[ANNOTATION_RESOLVE] == KEY
    assert annotations[ANNOTATION_REVIEW_ACTION] == "a-1"
    obj["metadata"]["annotations"] = annotations
    decision = decided(obj)
    assert decision.status["phase"] == "Succeeded" and decision.publish_completion
    assert decision.status["resultKey"] == KEY
    assert decision.status["reviewedBy"] == {"id": "r-1", "name": "Li"}


def test_send_back_ends_failed_with_sent_back_and_the_message():
    obj = editjob("NeedsReview", completionEventId="c-old")
    _, patch = effect(obj, action("send_back"), NOW)
    assert patch["metadata"]["annotations"][ANNOTATION_SEND_BACK] == "crop the logo first"
    obj["metadata"]["annotations"] = patch["metadata"]["annotations"]
    decision = decided(obj)
    assert decision.status["phase"] == "Failed" and decision.status["errorCode"] == SENT_BACK
    assert "crop the logo first" in decision.status["message"] and decision.publish_completion


def test_rerun_reopens_the_edit_for_one_more_attempt_with_the_corrected_instruction():
    finished = [{"type": "Completed", "status": "True"}, {"type": "Accepted", "status": "True"}]
    obj = editjob("NeedsReview", completionEventId="c", jobName=None, conditions=finished)
    where, patch = effect(obj, action("rerun"), NOW)
    status = patch["status"]
    assert where == "status" and status["phase"] == "Queued"
    assert status["reviewInstruction"] == "sky deep blue" and status["reviewAttempts"] == 1
    assert [c["type"] for c in status["conditions"]] == ["Accepted"]
    reopened = {**obj, "status": {**obj["status"], **status}}
    decision = decide(Observed(editjob=reopened, now=NOW), settings())
    assert decision.create_job == 4  # beyond maxAttempts (3)
    from editflow.operator.jobspec import worker_request

    assert worker_request(reopened, 4, settings()).prompt == "sky deep blue"


def test_verdict_is_recorded_in_status_only():
    _, patch = effect(editjob("Succeeded", **SAMPLED), action("verdict"), NOW)
    verdict = patch["status"]["reviewVerdict"]
    assert verdict["verdict"] == "poor" and verdict["by"]["id"] == "r-1"
    assert patch["status"]["reviewActionId"] == "a-1" and "phase" not in patch["status"]


class FakeKube:
    def __init__(self, obj: dict | None) -> None:
        self.obj = obj
        self.patches: list[tuple[str, dict]] = []

    async def get(self, path: str) -> dict | None:
        return self.obj

    async def patch(self, path: str, body: dict) -> dict:
        self.patches.append((path, body))
        assert self.obj is not None
        meta = {**self.obj["metadata"]}
        meta["annotations"] = {**meta["annotations"],
                               **body.get("metadata", {}).get("annotations", {})}  # fmt: skip
        self.obj = {**self.obj, "metadata": meta,
                    "status": {**self.obj["status"], **body.get("status", {})}}  # fmt: skip
        return self.obj


class FakeJS:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, subject: str, payload: bytes, **kwargs) -> None:
        self.published.append((subject, payload, kwargs))


def run(kube: FakeKube, event: ReviewActionEvent, namespaces=("design",)) -> tuple[str, FakeJS]:
    js = FakeJS()
    result = asyncio.run(
        handle_review_action(
            event,
            kube=kube,
            js=js,
            topology=Topology(EventsSettings()),
            namespaces=list(namespaces),
            result_prefix=PREFIX,
            now=NOW,
        )
    )
    return result, js


def test_every_action_is_audited_with_the_reviewer_and_a_redelivery_changes_nothing():
    kube = FakeKube(editjob("NeedsReview"))
    result, js = run(kube, action("upload"))
    assert result == "applied" and len(kube.patches) == 1
    subject, payload, kwargs = js.published[0]
    record = json.loads(payload)
    assert (
        subject == "editflow.audit.design"
        and kwargs["headers"]["Nats-Msg-Id"] == "audit:review:a-1"
    )
    assert record["kind"] == "review" and record["reviewer"] == "r-1"
    assert record["review_action"] == "upload" and record["review_result_key"] == KEY
    assert json.loads(kube.obj["metadata"]["annotations"][ANNOTATION_REVIEWED_BY])["name"] == "Li"
    again, _ = run(kube, action("upload"))
    assert again == "duplicate" and len(kube.patches) == 1


def test_a_deleted_edit_and_an_unwatched_namespace_are_refused_with_their_field():
    with pytest.raises(InvalidInputError, match="no longer exists") as gone:
        run(FakeKube(None), action("upload"))
    assert gone.value.field == "data.editjob"
    with pytest.raises(InvalidInputError, match="not one this operator watches") as elsewhere:
        run(FakeKube(editjob("NeedsReview")), action("upload"), namespaces=("other",))
    assert elsewhere.value.field == "data.namespace"
