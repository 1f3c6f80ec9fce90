"""Warm dispatch's pure parts: the same decide() reads a warm attempt's state as a Job's
(the attempt is the unit, issue 21 item 1), the warm worker's Job, the work index's
reservations, and the dispatcher's hand-out order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from editflow.core.errors import ErrorInfo
from editflow.core.settings import OperatorSettings
from editflow.events.worker_contract import POISON_EDIT_CODE, WorkerHeartbeat, WorkerResult
from editflow.operator.attempts import AttemptState
from editflow.operator.caches import ClusterCache
from editflow.operator.decide import Observed, decide
from editflow.operator.names import ANNOTATION_CONFIG_HASH, LABEL_POOL
from editflow.operator.warmjobs import config_hash, warm_job_manifest
from editflow.operator.warmpool import WarmDispatcher
from editflow.operator.workindex import WorkIndex
from tests.operator.test_decisions import NOW, editjob, pod

WARM = OperatorSettings(worker_mode="warm", max_running_per_namespace=2, max_attempts=2)


def observe(ej: dict, **kw: object) -> Observed:
    return Observed(editjob=ej, now=NOW, words=WarmDispatcher.words, **kw)  # type: ignore[arg-type]


def test_a_new_attempt_in_warm_mode_waits_for_a_warm_worker_not_a_job() -> None:
    decision = decide(observe(editjob("Queued", attempts=0)), WARM)
    assert decision.create_job == 1
    assert decision.status["message"] == "attempt 1: waiting for a warm worker"
    (cond,) = [c for c in decision.status["conditions"] if c["type"] == "Scheduled"]
    assert cond["reason"] == "HandedToWarmPool"


def test_the_worker_pod_running_the_attempt_is_shown_in_status() -> None:
    pod = "editflow-warm-longcat-image-edit-abc123-x1"
    running = AttemptState(
        "ej-a1", worker=pod, node="gpu-1", running_message=f"running in warm worker {pod}"
    )
    ej = editjob("Running", attempts=1, jobName="ej-a1", message="attempt 1: waiting")
    decision = decide(observe(ej, attempt=running), WARM)
    assert decision.status["workerPod"] == "editflow-warm-longcat-image-edit-abc123-x1"
    assert "running in warm worker editflow-warm" in decision.status["message"]


def test_an_edit_that_killed_every_worker_it_reached_ends_needs_review() -> None:
    poison = WorkerResult(
        status="failed",
        edit_id="e",
        attempt=1,
        model="longcat-image-edit",
        worker="w-1",
        error=ErrorInfo(POISON_EDIT_CODE, "delivered 4 times, every worker died", False),
    )
    ej = editjob("Running", attempts=1, jobName="ej-a1")
    decision = decide(observe(ej, attempt=AttemptState("ej-a1", result=poison)), WARM)
    assert decision.status["phase"] == "NeedsReview"
    assert decision.status["errorCode"] == POISON_EDIT_CODE
    assert decision.status["workerPod"] == "w-1"


def _warm_attempt_that_failed(reason: str, message: str) -> tuple[WarmDispatcher, dict]:
    """A warm dispatcher owning attempt 1 of an EditJob, ended without a result."""
    dispatcher = WarmDispatcher(None, ClusterCache(None, ["edits"]), WARM, nats=None)  # type: ignore[arg-type]
    ej = editjob("Running", attempts=1, jobName="ej-a1", startedAt="2026-11-25T11:59:30Z")
    ej["metadata"]["namespace"] = "edits"
    attempt = dispatcher._new_attempt(ej, 1)
    attempt.failed = {"reason": reason, "message": message}
    dispatcher.attempts[("edits", attempt.name)] = attempt
    ej["status"]["jobName"] = attempt.name
    return dispatcher, ej


async def test_a_model_no_worker_can_load_is_retried_then_goes_to_review() -> None:
    dispatcher, ej = _warm_attempt_that_failed(
        "ModelLoadFailed", "model_load_failed: weights missing"
    )
    state = await dispatcher.observe(ej)
    assert state.ended is not None and state.ended.code == "model_load_failed"
    first = decide(observe(ej, attempt=state), WARM)
    assert first.status["phase"] == "Queued" and first.status["errorCode"] == "model_load_failed"
    assert "weights missing" in first.status["message"]
    second = {**ej, "status": {**ej["status"], "attempts": 2}}
    last = decide(observe(second, attempt=state), WARM)
    assert last.status["phase"] == "NeedsReview" and "weights missing" in last.status["message"]


async def test_a_warm_attempt_past_its_deadline_is_a_timeout() -> None:
    dispatcher, ej = _warm_attempt_that_failed("DeadlineExceeded", "not finished within 900s")
    decision = decide(observe(ej, attempt=await dispatcher.observe(ej)), WARM)
    assert decision.status["errorCode"] == "timeout" and decision.status["phase"] == "Queued"


ATTEMPTS = {
    "running": AttemptState("x-a1", worker="w-1", node="n-1", running_message="running"),
    "waiting for a GPU": AttemptState(
        "x-a1", unschedulable="0/1 nodes: no GPU", waiting_since=NOW - timedelta(seconds=30)
    ),
    "no GPU in time": AttemptState(
        "x-a1", unschedulable="0/1 nodes: no GPU", waiting_since=NOW - timedelta(hours=2)
    ),
    "stuck": AttemptState(
        "x-a1", stuck=("ImagePullBackOff", "no such image"), stuck_since=NOW - timedelta(hours=1)
    ),
    "timed out": AttemptState(
        "x-a1", ended=ErrorInfo("timeout", "the edit did not finish within 900s", True)
    ),
    "succeeded": AttemptState(
        "x-a1",
        result=WorkerResult(
            status="success",
            edit_id="e",
            attempt=1,
            model="longcat-image-edit",
            result_key="results/edits/e/attempt-1/result.png",
        ),
    ),
    "failed": AttemptState(
        "x-a1",
        result=WorkerResult(
            status="failed",
            edit_id="e",
            attempt=1,
            model="longcat-image-edit",
            error=ErrorInfo("image_rejected", "not an image", False),
        ),
    ),
    "gone": None,
}


@pytest.mark.parametrize("seen", list(ATTEMPTS), ids=list(ATTEMPTS))
def test_a_dispatch_mode_is_invisible_to_decide(seen: str) -> None:
    """Issue 21 item 1: the same attempt states give the same decisions in both modes;
    only the words of a start are the mode's, and they are data (StartWords)."""
    ej = editjob("Running", attempts=1, jobName="x-a1", startedAt="2026-11-25T11:59:00Z")
    job_mode = WARM.model_copy(update={"worker_mode": "job"})
    attempt = ATTEMPTS[seen]
    warm = decide(Observed(ej, NOW, attempt=attempt), WARM)
    job = decide(Observed(ej, NOW, attempt=attempt), job_mode)
    assert warm == job


def test_decide_names_no_dispatch_mode_job_or_pod() -> None:
    """The decision module reads attempt states only: no Job, Pod or mode is looked up."""
    from editflow.operator import decide as decide_module

    source = Path(decide_module.__file__).read_text()
    for word in ("worker_mode", "job_outcome", "podstate", '"warm"', "obs.pods", "obs.job"):
        assert word not in source, word


def test_the_warm_worker_job_is_locked_down_and_carries_its_configuration_hash() -> None:
    manifest = warm_job_manifest(WARM, "edits", "longcat-image-edit")
    template = manifest["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["editflow", "worker", "serve"]
    assert container["args"] == ["--model", "longcat-image-edit"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EDITFLOW_NAMESPACE"] == "edits"
    assert env["EDITFLOW_WORKER__IDLE_SECONDS"] == "300.0"
    digest = config_hash(WARM, "edits", "longcat-image-edit")
    assert env["EDITFLOW_WORKER__CONFIG_HASH"] == digest
    assert template["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] == digest
    assert template["metadata"]["labels"][LABEL_POOL] == "longcat-image-edit"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert template["spec"]["securityContext"]["runAsUser"] == 10001
    assert manifest["spec"]["backoffLimit"] == 0
    # Another image is another configuration: workers started before it are retired.
    newer = WARM.model_copy(update={"worker_image": "editflow/worker:0.2.0"})
    assert config_hash(newer, "edits", "longcat-image-edit") != digest


def test_a_warm_worker_holds_no_s3_key_only_its_namespaces_pool_key() -> None:
    """Issue 20 §1: with attempt credentials (the default) a warm worker's environment has no
    S3 key at all; it mounts its namespace's pool key read-only. Only the documented insecure
    opt-in (attempt_credentials off) gives it the shared key."""
    manifest = warm_job_manifest(WARM, "edits", "longcat-image-edit")
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    names = {e["name"] for e in container["env"]}
    assert not {n for n in names if n.startswith("EDITFLOW_S3__")}, names
    assert {
        "name": "pool-key",
        "secret": {"secretName": "editflow-warm-key", "defaultMode": 0o440},
    } in pod["volumes"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "pool-key")
    assert mount["readOnly"] is True
    shared = warm_job_manifest(
        WARM.model_copy(update={"attempt_credentials": False}), "edits", "longcat-image-edit"
    )
    (container,) = shared["spec"]["template"]["spec"]["containers"]
    assert "EDITFLOW_S3__ACCESS_KEY" in {e["name"] for e in container["env"]}


def test_a_reservation_ends_when_the_status_stops_naming_the_attempt() -> None:
    index = WorkIndex()
    assert index.reserve("ns", "ej-a1", 1)
    running = editjob("Running", attempts=1, jobName="ej-a1")
    running["metadata"]["namespace"] = "ns"
    index.editjob_changed(("ns", "ej"), None, running)
    assert index.in_flight("ns") == 1
    done = editjob("Succeeded", attempts=1)
    index.editjob_changed(("ns", "ej"), running, done)
    assert index.in_flight("ns") == 0, "a warm attempt has no Job event to end its reservation"


class _Ack:
    def __init__(self, seq: int) -> None:
        self.seq = seq


class _RecordingJetStream:
    """Only the publish side of JetStream, recorded: what the hand-out order is about."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, subject: str, payload: bytes, headers: dict) -> _Ack:
        self.published.append(payload)
        return _Ack(len(self.published))


def test_attempts_are_handed_out_in_priority_order_and_only_to_idle_workers() -> None:
    dispatcher = WarmDispatcher(None, ClusterCache(None, ["edits"]), WARM, nats=None)  # type: ignore[arg-type]
    js = dispatcher.js = _RecordingJetStream()
    names = {}
    for name, priority, age in (("low", 10, 30), ("high", 90, 10), ("mid", 50, 20)):
        ej = editjob("Running", attempts=1, jobName=f"{name}-a1")
        ej["metadata"].update(name=name, namespace="edits")
        ej["spec"]["priority"] = priority
        ej["status"]["queuedAt"] = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
        names[name] = asyncio.run(dispatcher.start(ej, 1))
    pool = dispatcher.pools[("edits", "longcat-image-edit")]
    pool.consumer_ready = True

    def idle(pod_name: str) -> None:
        dispatcher.registry.heard(
            WorkerHeartbeat(
                pod=pod_name, namespace="edits", model="longcat-image-edit", state="idle"
            )
        )

    asyncio.run(dispatcher._hand_out(pool))
    assert js.published == [], "no idle worker: nothing leaves the operator's queue"
    idle("w-1")
    asyncio.run(dispatcher._hand_out(pool))
    asyncio.run(dispatcher._hand_out(pool))
    assert len(js.published) == 1, "one idle worker, one attempt handed out (not one per tick)"
    assert b'"edit_id":"high"' in js.published[0]
    idle("w-2")
    asyncio.run(dispatcher._hand_out(pool))
    assert b'"edit_id":"mid"' in js.published[1] and len(js.published) == 2


def test_a_warm_workers_log_is_cut_down_to_one_attempts_lines() -> None:
    from editflow.operator.attemptlogs import attempt_lines

    log = "\n".join(
        [
            "Loading pipeline components...: 100%",
            '{"msg": "edit started", "edit_id": "a", "attempt": 1}',
            '{"msg": "edit started", "edit_id": "b", "attempt": 1}',
            '{"msg": "edit done", "edit_id": "a", "attempt": 1}',
            '{"msg": "edit started", "edit_id": "a", "attempt": 2}',
            "{not json",
        ]
    )
    assert attempt_lines(log, "a", 1).splitlines() == [
        '{"msg": "edit started", "edit_id": "a", "attempt": 1}',
        '{"msg": "edit done", "edit_id": "a", "attempt": 1}',
    ]


class _RecordingNats:
    """Core NATS publishes (the control subject), recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.sent.append((subject, payload))


def _dispatcher_with_control() -> tuple[WarmDispatcher, list[tuple[str, bytes]]]:
    dispatcher = WarmDispatcher(None, ClusterCache(None, ["edits"]), WARM, nats=None)  # type: ignore[arg-type]
    nats = _RecordingNats()
    dispatcher.nc = nats
    return dispatcher, nats.sent


def test_an_idle_worker_yields_its_gpu_to_a_pool_whose_worker_cannot_be_scheduled() -> None:
    from editflow.events.worker_contract import WorkerHeartbeat

    dispatcher, sent = _dispatcher_with_control()
    ej = editjob("Running", attempts=1, jobName="full-a1")
    ej["metadata"].update(name="full", namespace="edits")
    asyncio.run(dispatcher.start(ej, 1))  # waits in the longcat-image-edit pool
    dispatcher.state.pool(
        "edits", "longcat-image-edit-turbo"
    )  # the previews' pool, nothing waiting
    dispatcher.registry.heard(
        WorkerHeartbeat(
            pod="turbo-1", namespace="edits", model="longcat-image-edit-turbo", state="idle"
        )
    )
    stuck = pod("Pending", unschedulable="0/1 nodes are available: 1 Insufficient nvidia.com/gpu")
    stuck["metadata"].update(
        name="w-full-x", namespace="edits", labels={LABEL_POOL: "longcat-image-edit"}
    )
    dispatcher.cache.warm_pods.upsert(stuck)
    asyncio.run(dispatcher.scaler.yield_idle_gpus())
    assert [s for s, _ in sent] == ["editflow.worker.control.edits.turbo-1"]
    assert b'"retire"' in sent[0][1]


def _dispatcher_at(clock: list[float]) -> WarmDispatcher:
    """A dispatcher of namespace ``edits`` whose clock reads ``clock[0]``."""
    return WarmDispatcher(
        None,  # type: ignore[arg-type]
        ClusterCache(None, ["edits"]),  # type: ignore[arg-type]
        WARM,
        nats=None,
        clock=lambda: clock[0],
    )


def _failed_worker_job(name: str, failed_at: str) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": "edits",
            "resourceVersion": "7",
            "labels": {LABEL_POOL: "longcat-image-edit"},
        },
        "status": {
            "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": failed_at}],
        },
    }


def test_worker_jobs_that_failed_before_a_restart_do_not_fail_the_adopted_edit() -> None:
    """After an operator restart the cache's first list holds the worker Jobs an earlier
    test or crash left failed (kept for their TTL). They were counted by the process that
    saw them fail; counting them again gave up on the pool and failed an edit a live worker
    was running (the CI failure of stop 18)."""
    clock = [1_800_000_000.0]
    dispatcher = _dispatcher_at(clock)
    ej = editjob("Running", attempts=1, jobName="adopted-a1")
    ej["metadata"].update(name="adopted", namespace="edits")
    asyncio.run(dispatcher.start(ej, 1))
    earlier = "2027-01-15T07:59:00Z"  # a minute before the dispatcher started
    for name in ("w-old-1", "w-old-2"):
        dispatcher.cache.warm_jobs.upsert(_failed_worker_job(name, earlier))
    clock[0] += 30
    dispatcher.scaler.give_up_if_no_worker_can_load(
        dispatcher.state.pool("edits", "longcat-image-edit")
    )
    assert dispatcher.attempts[("edits", "adopted-a1")].failed is None

    # Two worker Jobs failing while this process runs are news: the pool gives up.
    now = "2027-01-15T08:00:30Z"
    for name in ("w-new-1", "w-new-2"):
        dispatcher.cache.warm_jobs.upsert(_failed_worker_job(name, now))
    dispatcher.scaler.give_up_if_no_worker_can_load(
        dispatcher.state.pool("edits", "longcat-image-edit")
    )
    failed = dispatcher.attempts[("edits", "adopted-a1")].failed
    assert failed is not None and failed["reason"] == "ModelLoadFailed", failed


def test_an_empty_registry_right_after_a_start_is_not_evidence_that_no_worker_loads() -> None:
    clock = [1_800_000_000.0]
    dispatcher = _dispatcher_at(clock)
    ej = editjob("Running", attempts=1, jobName="fresh-a1")
    ej["metadata"].update(name="fresh", namespace="edits")
    asyncio.run(dispatcher.start(ej, 1))
    pool = dispatcher.state.pool("edits", "longcat-image-edit")
    dispatcher.scaler.load_failed(pool, "weights missing")
    dispatcher.scaler.load_failed(pool, "weights missing")
    dispatcher.scaler.give_up_if_no_worker_can_load(pool)
    assert dispatcher.attempts[("edits", "fresh-a1")].failed is None, "no heartbeat window yet"
    clock[0] += 60
    dispatcher.scaler.give_up_if_no_worker_can_load(pool)
    assert dispatcher.attempts[("edits", "fresh-a1")].failed is not None


def test_stopping_a_running_attempt_tells_its_worker_to_cancel_it() -> None:
    """A warm cancel reaches the worker (issue 20 §6): the worker busy with the attempt gets
    a ``cancel`` naming it; nobody else is told."""
    from editflow.events.worker_contract import WorkerControl, WorkerHeartbeat

    dispatcher, sent = _dispatcher_with_control()
    ej = editjob("Running", attempts=1, jobName="gone-a1")
    ej["metadata"].update(name="gone", namespace="edits")
    name = asyncio.run(dispatcher.start(ej, 1))
    for pod_name, state, edit in (("w-1", "busy", "gone"), ("w-2", "busy", "other")):
        dispatcher.registry.heard(
            WorkerHeartbeat(
                pod=pod_name,
                namespace="edits",
                model="longcat-image-edit",
                state=state,
                edit_id=edit,
                attempt=1,
            )
        )
    assert asyncio.run(dispatcher.stop("edits", name))
    assert [s for s, _ in sent] == ["editflow.worker.control.edits.w-1"]
    control = WorkerControl.model_validate_json(sent[0][1])
    assert (control.action, control.edit_id, control.attempt) == ("cancel", "gone", 1)


def test_unclaimed_results_are_bounded_and_expire(monkeypatch) -> None:
    from editflow.events.worker_contract import WorkerResult
    from editflow.operator import warmpool

    dispatcher = WarmDispatcher(None, ClusterCache(None, ["edits"]), WARM, nats=None)  # type: ignore[arg-type]
    monkeypatch.setattr(warmpool, "UNCLAIMED_LIMIT", 3)
    clock = [1000.0]
    monkeypatch.setattr(warmpool.time, "monotonic", lambda: clock[0])

    def result(i: int) -> WorkerResult:
        return WorkerResult(status="failed", edit_id=f"e{i}", attempt=1, model="m")

    for i in range(5):
        dispatcher._keep_unclaimed(("edits", f"e{i}-a1"), result(i))
    assert [k[1] for k in dispatcher.unclaimed_results] == ["e2-a1", "e3-a1", "e4-a1"]
    dispatcher._keep_unclaimed(("edits", "old-a1"), result(9))
    clock[0] += warmpool.UNCLAIMED_SECONDS + 1
    dispatcher._keep_unclaimed(("edits", "new-a1"), result(10))
    assert list(dispatcher.unclaimed_results) == [("edits", "new-a1")]


class _Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data = subject, data


def test_a_result_counts_only_with_its_attempts_token_on_its_namespaces_subject() -> None:
    """Issue 20 §2: a worker of another namespace (or anyone who may publish results) cannot
    answer for an attempt: the token is an HMAC of namespace, edit and attempt under the
    operator's key, and only the pool the attempt was handed to received it (sealed)."""
    from editflow.events.worker_contract import WorkerResult

    dispatcher = WarmDispatcher(
        None,  # type: ignore[arg-type]
        ClusterCache(None, ["edits", "other"]),  # type: ignore[arg-type]
        WARM,
        nats=None,
        token_secret="operator-s3-secret",
    )
    ej = editjob("Running", attempts=1, jobName="mine-a1")
    ej["metadata"].update(name="mine", namespace="edits")
    name = asyncio.run(dispatcher.start(ej, 1))
    good = dispatcher._token("edits", "mine", 1)

    def result(token: str | None) -> bytes:
        return (
            WorkerResult(
                status="success", edit_id="mine", attempt=1, model="m", result_key="k", token=token
            )
            .model_dump_json()
            .encode()
        )

    for subject, token in (
        ("editflow.worker.results.edits.mine", None),  # no token
        ("editflow.worker.results.edits.mine", "0" * 40),  # a guessed one
        ("editflow.worker.results.other.mine", dispatcher._token("other", "mine", 1)),
        ("editflow.worker.results.other.mine", good),  # the right token, another namespace
    ):
        asyncio.run(dispatcher._on_result(_Msg(subject, result(token))))
        assert dispatcher.attempts[("edits", name)].result is None, (subject, token)
    asyncio.run(dispatcher._on_result(_Msg("editflow.worker.results.edits.mine", result(good))))
    assert dispatcher.attempts[("edits", name)].result is not None


def test_a_heartbeat_on_another_namespaces_subject_is_refused() -> None:
    from editflow.events.worker_contract import WorkerHeartbeat

    dispatcher = WarmDispatcher(None, ClusterCache(None, ["edits"]), WARM, nats=None)  # type: ignore[arg-type]
    beat = WorkerHeartbeat(
        pod="w-1", namespace="edits", model="longcat-image-edit", state="busy", edit_id="x"
    )
    forged = _Msg(
        "editflow.worker.status.other.longcat-image-edit", beat.model_dump_json().encode()
    )
    asyncio.run(dispatcher._on_heartbeat(forged))
    assert not dispatcher.registry.workers
    real = _Msg("editflow.worker.status.edits.longcat-image-edit", beat.model_dump_json().encode())
    asyncio.run(dispatcher._on_heartbeat(real))
    assert ("edits", "w-1") in dispatcher.registry.workers


def test_a_failed_credential_mint_leaves_the_attempt_waiting_and_the_tick_going() -> None:
    """S3's STS away (the fault suite stops MinIO for 20 s): the hand-out waits for the next
    tick instead of failing the whole tick (other pools, deadlines)."""
    from editflow.events.worker_contract import WorkerHeartbeat
    from editflow.operator.credentials import CredentialMintError

    class _DownMinter:
        async def mint(self, editjob: dict, attempt: int):
            raise CredentialMintError("STS at http://127.0.0.1:9/ unreachable")

    dispatcher = WarmDispatcher(
        None,  # type: ignore[arg-type]
        ClusterCache(None, ["edits"]),  # type: ignore[arg-type]
        WARM,
        nats=None,
        minter=_DownMinter(),  # type: ignore[arg-type]
        pool_keys=object(),  # type: ignore[arg-type]
    )
    js = dispatcher.js = _RecordingJetStream()
    ej = editjob("Running", attempts=1, jobName="later-a1")
    ej["metadata"].update(name="later", namespace="edits")
    name = asyncio.run(dispatcher.start(ej, 1))
    pool = dispatcher.pools[("edits", "longcat-image-edit")]
    pool.consumer_ready = True
    dispatcher.registry.heard(
        WorkerHeartbeat(pod="w-1", namespace="edits", model="longcat-image-edit", state="idle")
    )
    asyncio.run(dispatcher._hand_out(pool))
    assert js.published == [] and [n for _, n in pool.waiting] == [name]


def test_a_stuck_worker_s_job_is_deleted_once_while_its_pod_winds_down() -> None:
    """A worker busy past its deadline keeps saying "busy" until its Pod is gone: its Job is
    deleted once, not on every tick (it was a DELETE every 2 s for as long as it took)."""
    clock = [1_800_000_000.0]
    dispatcher = _dispatcher_at(clock)
    deleted: list[str] = []

    class Kube:
        async def delete(self, path: str, **_: object) -> bool:
            deleted.append(path)
            return True

    dispatcher.scaler.kube = Kube()  # type: ignore[assignment]
    worker = pod("Running")
    worker["metadata"].update(
        name="w-stuck-x",
        namespace="edits",
        labels={LABEL_POOL: "longcat-image-edit", "job-name": "w-stuck"},
    )
    dispatcher.cache.warm_pods.upsert(worker)
    busy = WorkerHeartbeat(
        pod="w-stuck-x",
        namespace="edits",
        model="longcat-image-edit",
        state="busy",
        edit_id="ej",
        attempt=1,
        since=clock[0] - 10 * WARM.deadline_seconds,
    )
    for _ in range(5):  # five ticks, each after a heartbeat that still says busy
        dispatcher.registry.heard(busy)
        asyncio.run(dispatcher.scaler._replace_stuck_workers())
        clock[0] += 2
    assert deleted == ["/apis/batch/v1/namespaces/edits/jobs/w-stuck"]
