"""The desk's read model (docs/desk.md): which lane an EditJob is in, and its ticket."""

from __future__ import annotations

import asyncio
import json

import pytest

from editflow.events.desk import Ticket, bucket_name
from editflow.operator.desk import DeskPublisher, lane_of, log_tail, ticket_for
from editflow.operator.names import ANNOTATION_RESOLVE


def editjob(phase: str, *, annotations: dict | None = None, **status: object) -> dict:
    return {
        "metadata": {
            "name": "ej-1",
            "namespace": "design",
            "uid": "u-1",
            "annotations": annotations or {},
        },
        "spec": {
            "prompt": "make the sky blue",
            "source": {"s3Key": "uploads/design/in.png"},
            "model": "longcat-image-edit",
            "usage": "wechat-article",
            "template": {"id": "background-swap"},
            "oa": {
                "eventId": "e-1",
                "applicant": "u-7",
                "approvers": ["m-1"],
                "department": "marketing",
            },
        },
        "status": {"phase": phase, "finishedAt": "2026-12-07T06:00:00Z", **status},
    }


FLAGGED = {"verdict": "no_visible_change", "changedFraction": 0.01, "ssim": 0.99, "spread": 0.5}


@pytest.mark.parametrize(
    ("obj", "lane"),
    [
        (editjob("NeedsReview", attempts=3, errorCode="worker_exit"), "needs_review"),
        (editjob("Succeeded", quality=FLAGGED, sampledForReview=True), "flagged"),
        (editjob("Succeeded", sampledForReview=True, quality={"verdict": "ok"}), "sample"),
    ],
)
def test_each_lane(obj, lane):
    assert lane_of(obj) == lane
    ticket = ticket_for(obj)
    assert isinstance(ticket, Ticket) and ticket.lane == lane
    assert ticket.input_key == "uploads/design/in.png"
    assert ticket.applicant.id == "u-7" and ticket.department == "marketing"


@pytest.mark.parametrize(
    "obj",
    [
        editjob("Succeeded"),  # neither sampled nor flagged
        editjob("Succeeded", sampledForReview=True, reviewVerdict={"verdict": "good"}),
        editjob("Succeeded", quality=FLAGGED, sampledForReview=True, reviewedBy="r-1"),
        editjob("Succeeded", sampledForReview=True, annotations={ANNOTATION_RESOLVE: "k"}),
        editjob("Failed", errorCode="sent_back"),
        editjob("Running", attempts=4),
        editjob("Queued", reviewAttempts=1),
    ],
    ids=["plain", "verdict", "resolved", "resolved-by-cli", "sent-back", "rerun", "queued"],
)
def test_leaving_the_lanes(obj):
    assert lane_of(obj) is None
    assert ticket_for(obj) is None


def test_the_ticket_carries_attempts_logs_results_gate_and_the_corrected_instruction():
    obj = editjob(
        "NeedsReview",
        attempts=2,
        workerPod="pod-2",
        errorCode="quality_no_visible_change",
        message="the quality gate flagged it",
        quality=FLAGGED,
        resultKey="results/design/ej-1/attempt-2/out.png",
        reviewInstruction="make the sky deep blue",
        reviewAttempts=1,
    )
    ticket = ticket_for(obj, {2: ["x" * 300] * 30})
    assert ticket.instruction == "make the sky deep blue"
    assert ticket.original_instruction == "make the sky blue"
    assert [a.attempt for a in ticket.attempts] == [1, 2]
    assert ticket.attempts[1].worker == "pod-2" and ticket.attempts[0].error_code is None
    assert len(ticket.attempts[1].log) == 20
    assert ticket.results[0].result_key.endswith("out.png")
    assert ticket.gate.figures == {"changedFraction": 0.01, "ssim": 0.99, "spread": 0.5}
    assert ticket.review_attempts == 1


def test_a_warm_attempts_lines_come_from_its_status_and_a_pods_win():
    warm = {"attempt": 2, "lines": ['{"msg": "edit failed"}', "y" * 300]}
    obj = editjob("NeedsReview", attempts=2, errorCode="fetch_failed", workerLog=warm)
    ticket = ticket_for(obj)
    assert ticket.attempts[0].log == []
    assert ticket.attempts[1].log == ['{"msg": "edit failed"}', "y" * 200]
    assert ticket_for(obj, {2: ["from the pod"]}).attempts[1].log == ["from the pod"]
    assert ticket_for(obj, {1: ["first"]}).attempts[1].log[0] == '{"msg": "edit failed"}'


def test_log_lines_come_from_a_crashed_pods_termination_message_not_from_a_result():
    def pod(attempt: int, message: str) -> dict:
        return {
            "metadata": {"labels": {"editflow.io/attempt": str(attempt)}},
            "status": {"containerStatuses": [
                {"name": "worker", "state": {"terminated": {"message": message}}}]},
        }  # fmt: skip

    crashed = pod(1, "\n".join(f"line {i} " + "y" * 250 for i in range(25)))
    result = pod(2, json.dumps({"not": "a result"}))
    lines = log_tail([crashed, result])
    assert len(lines[1]) == 20 and lines[1][-1].startswith("line 24")
    assert all(len(line) <= 200 for line in lines[1])
    assert 2 in lines  # JSON that is no WorkerResult is a log line too


class FakeKV:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.writes = 0

    async def put(self, key: str, value: bytes) -> None:
        self.writes += 1
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self.writes += 1
        self.values.pop(key, None)


class FakeJS:
    def __init__(self) -> None:
        self.buckets: dict[str, FakeKV] = {}

    async def create_key_value(self, config) -> FakeKV:
        assert config.history == 1
        return self.buckets.setdefault(config.bucket, FakeKV())


def test_the_publisher_writes_only_changes_and_deletes_on_leaving():
    async def scenario() -> FakeKV:
        js = FakeJS()
        desk = DeskPublisher(js)
        needs = editjob("NeedsReview", attempts=3, errorCode="worker_exit")
        desk.update(needs)
        desk.update(needs)  # unchanged: no second write
        await desk.drain()
        kv = js.buckets[bucket_name("design")]
        assert kv.writes == 1 and json.loads(kv.values["ej-1"])["lane"] == "needs_review"
        desk.update(editjob("Running", attempts=4))  # rerun: leaves the lane
        await desk.drain()
        assert "ej-1" not in kv.values and kv.writes == 2
        desk.update(editjob("Succeeded"))  # in no lane, never written: nothing to do
        desk.gone(("design", "ej-1"))
        await desk.drain()
        assert kv.writes == 2
        return kv

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("obj", "lane"),
    [
        (editjob("NeedsReview", attempts=3), "needs_review"),
        (editjob("Succeeded", quality=FLAGGED, sampledForReview=True), "flagged"),
        (editjob("Succeeded", sampledForReview=True, quality={"verdict": "ok"}), "sample"),
        (editjob("Succeeded", sampledForReview=True, reviewVerdict={"verdict": "good"}), None),
        (editjob("Succeeded", quality=FLAGGED, reviewedBy="r-1"), None),
    ],
)
def test_a_settled_editjob_kept_slim_in_the_cache_is_still_in_its_lane(obj, lane):
    from editflow.operator.caches import is_slim, project_editjob

    obj["status"].update(
        completionEventId="c-1",
        completionPublishedAt="2026-12-01T11:00:01Z",
        callbackDelivery="none",
    )
    slim = project_editjob(obj)
    assert is_slim(slim)
    assert lane_of(slim) == lane


def test_at_start_the_tickets_the_read_model_lacks_are_written_from_whole_editjobs():
    """A lost bucket (or an upgrade from before the desk): finished edits never change
    again, so their tickets are written at start, each slim one read whole once."""
    from types import SimpleNamespace

    from editflow.operator.caches import project_editjob
    from editflow.operator.reconciler import Reconciler

    sent = {"completionPublishedAt": "2026-12-01T11:00:01Z", "callbackDelivery": "none"}
    needs = editjob("NeedsReview", attempts=3, completionEventId="c-1", **sent)
    plain = {**editjob("Succeeded", completionEventId="c-2", **sent)}
    plain["metadata"] = {**plain["metadata"], "name": "ej-2"}
    reads: list[str] = []

    class Kube:
        async def get(self, path: str) -> dict:
            reads.append(path)
            return needs

    async def scenario() -> FakeKV:
        js = FakeJS()
        desk = DeskPublisher(js)
        items = {
            ("design", "ej-1"): project_editjob(needs),
            ("design", "ej-2"): project_editjob(plain),
        }
        fake = SimpleNamespace(
            desk=desk, kube=Kube(), cache=SimpleNamespace(editjobs=SimpleNamespace(items=items))
        )
        await Reconciler._backfill_desk(fake)  # type: ignore[arg-type]
        await desk.drain()
        await Reconciler._backfill_desk(fake)  # known now: nothing read again
        return js.buckets[bucket_name("design")]

    kv = asyncio.run(scenario())
    assert json.loads(kv.values["ej-1"])["lane"] == "needs_review"
    assert list(kv.values) == ["ej-1"]
    assert reads == ["/apis/editflow.io/v1alpha1/namespaces/design/editjobs/ej-1"]


def test_the_ticket_tells_each_failed_attempts_own_worker_and_reason():
    history = [
        {"attempt": 1, "worker": "pod-a", "errorCode": "fetch_timeout", "message": "slow source"},
        {"attempt": 2, "worker": "pod-b", "errorCode": "oom", "message": "out of memory"},
    ]
    ticket = ticket_for(editjob("NeedsReview", attempts=2, failedAttempts=history))
    assert ticket is not None
    assert [(a.worker, a.error_code) for a in ticket.attempts] == [
        ("pod-a", "fetch_timeout"),
        ("pod-b", "oom"),
    ]
