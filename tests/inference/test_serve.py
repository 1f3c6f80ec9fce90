"""Warm mode against real NATS JetStream and MinIO, as a real ``editflow worker serve`` process."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from editflow.core.settings import Settings
from editflow.events.worker_contract import (
    RESULT_SUBJECT_PREFIX,
    WORK_STREAM,
    WorkerControl,
    WorkerRequest,
    WorkerResult,
    result_subject,
    work_msg_id,
    work_subject,
    worker_control_subject,
)
from editflow.events.workqueue import ensure_work_consumer

from .conftest import ImageServer, Route, png_bytes, worker_env

pytestmark = pytest.mark.slow
EDITFLOW = str(Path(sys.executable).with_name("editflow"))
#: The namespace the warm worker serves; OTHER has EditJobs of the same names.
NAMESPACE, OTHER = "team-a", "team-b"
MODEL = "longcat-image-edit"
POD = "warm-test-pod"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    except httpx.HTTPError:
        return None


async def make_pool_consumer(nats_url: str, namespace: str) -> None:
    """The pool's work consumer, made as the operator makes it before the pool's first worker
    (a worker's NATS identity may not: issue 20 §2)."""
    nc = await nats.connect(nats_url)
    try:
        model = "longcat-image-edit"
        await ensure_work_consumer(nc.jetstream(), namespace, model, ack_wait=60, max_deliveries=3)
    finally:
        await nc.close()


@pytest.fixture
def drain_seconds() -> str:
    return "300"


@pytest.fixture
def warm_worker(
    worker_settings: Settings, nats_url: str, tmp_path: Path, drain_seconds: str
) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    asyncio.run(make_pool_consumer(nats_url, NAMESPACE))
    log = (tmp_path / "serve.log").open("w")
    env = worker_env(
        worker_settings,
        EDITFLOW_NATS__URL=nats_url,
        EDITFLOW_WORKER__DRAIN_SECONDS=drain_seconds,
        POD_NAME=POD,
    )
    proc = subprocess.Popen(
        [EDITFLOW, "worker", "serve", "--model", "longcat-image-edit", "--http-port", str(port),
         "--namespace", NAMESPACE],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        poll(lambda: (r := get(port, "/readyz")) is not None and r.status_code == 200,
             what="the warm worker to become ready")  # fmt: skip
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def request(edit_id: str, url: str, **extra: object) -> WorkerRequest:
    body = {"edit_id": edit_id, "source": {"url": url}, "prompt": "turn the sky pink",
            "parameters": {"seed": 3}}  # fmt: skip
    return WorkerRequest.model_validate({**body, **extra})


async def test_warm_worker_edits_from_the_queue_and_drains_on_sigterm(
    warm_worker: tuple[subprocess.Popen, int],
    image_server: ImageServer,
    nats_url: str,
    tmp_path: Path,
) -> None:
    proc, port = warm_worker
    image_server.routes["/warm.png"] = Route(png_bytes((1000, 800)))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    inbox = f"{RESULT_SUBJECT_PREFIX}.{NAMESPACE}.*"  # the results of this namespace's workers
    replies = await nc.subscribe(inbox)
    broadcast = await nc.subscribe(result_subject(NAMESPACE, "warm-2"))
    try:
        # warm-2's prompt is blank: valid JSON, refused by prompt validation.
        for edit_id, prompt in (("warm-1", "turn the sky pink"), ("warm-2", "   "),
                                ("warm-3", "turn the sky pink")):  # fmt: skip
            req = request(edit_id, image_server.url("/warm.png"), prompt=prompt)
            body = json.loads(req.model_dump_json())
            await js.publish(
                work_subject(NAMESPACE, MODEL), json.dumps(body).encode(),
                headers={"Nats-Msg-Id": work_msg_id(NAMESPACE, req)},
            )  # fmt: skip
        # The same EditJob name in another namespace: its own subject and message id, so it
        # is neither dropped as a duplicate nor taken by this namespace's worker.
        twin = request("warm-1", image_server.url("/warm.png"))
        ack = await js.publish(
            work_subject(OTHER, MODEL), twin.model_dump_json().encode(),
            headers={"Nats-Msg-Id": work_msg_id(OTHER, twin)},
        )  # fmt: skip
        assert not ack.duplicate
        results = {}
        for _ in range(3):
            message = await replies.next_msg(timeout=120)
            result = WorkerResult.model_validate_json(message.data)
            results[result.edit_id] = result
        assert results["warm-1"].status == "success" and results["warm-3"].status == "success"
        assert results["warm-2"].error.code == "prompt_rejected"
        assert (results["warm-1"].width, results["warm-1"].height) == (960, 768)
        # Every outcome is also broadcast on the edit's results subject.
        broadcasted = WorkerResult.model_validate_json((await broadcast.next_msg(timeout=30)).data)
        assert broadcasted == results["warm-2"]

        metrics = get(port, "/metrics").text
        assert (
            'editflow_worker_edits_total{code="",model="longcat-image-edit",status="success"} 2.0'
            in metrics
        )
        assert "editflow_worker_model_loads 1.0" in metrics  # warm: loaded once, not per edit
        assert get(port, "/healthz").status_code == 200

        # An edit in flight when SIGTERM arrives is finished, reported and acked.
        slow = request(
            "warm-drain", image_server.url("/warm.png"), parameters={"seed": 1, "steps": 24}
        )
        await js.publish(work_subject(NAMESPACE, MODEL), slow.model_dump_json().encode())
        poll(lambda: "editflow_worker_in_flight 1.0" in getattr(get(port, "/metrics"), "text", ""),
             what="the slow edit to start")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        drained = WorkerResult.model_validate_json((await replies.next_msg(timeout=120)).data)
        assert drained.edit_id == "warm-drain" and drained.status == "success"
        assert proc.wait(timeout=60) == 0
        # Per-edit logs: every line logged while an edit ran names its edit and attempt.
        lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()
                 if line.startswith("{")]  # fmt: skip
        about_warm_1 = [line for line in lines if line.get("edit_id") == "warm-1"]
        assert all(line["attempt"] == 1 for line in about_warm_1)
        # "edit started" passes no ids itself: they come from the edit's log context.
        assert {"edit started", "edit done", "warm edit handled"} <= {
            line["msg"] for line in about_warm_1
        }, about_warm_1
        info = await js.stream_info(WORK_STREAM)
        # Every request of this namespace acknowledged; team-b's twin waits for its own workers.
        assert info.state.messages == 1
        waiting = await js.get_last_msg(WORK_STREAM, work_subject(OTHER, MODEL))
        assert WorkerRequest.model_validate_json(waiting.data).edit_id == "warm-1"
        await js.purge_stream(WORK_STREAM, subject=work_subject(OTHER, MODEL))  # the next test's
    finally:
        await nc.close()


@pytest.mark.parametrize("drain_seconds", ["0.2"])
async def test_past_the_drain_deadline_the_edit_is_handed_back(
    warm_worker: tuple[subprocess.Popen, int], image_server: ImageServer, nats_url: str
) -> None:
    proc, port = warm_worker
    image_server.routes["/handback.png"] = Route(png_bytes((1000, 800)))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        slow = request("warm-handback", image_server.url("/handback.png"),
                       parameters={"seed": 1, "steps": 100})  # fmt: skip
        await js.publish(work_subject(NAMESPACE, MODEL), slow.model_dump_json().encode())
        poll(lambda: "editflow_worker_in_flight 1.0" in getattr(get(port, "/metrics"), "text", ""),
             what="the slow edit to start")  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # Nak'ed, not acked: the request waits in the stream for the next worker.
        info = await js.stream_info(WORK_STREAM)
        assert info.state.messages == 1
    finally:
        await js.purge_stream(WORK_STREAM)
        await nc.close()


def test_warm_worker_without_weights_exits_with_model_failed(
    worker_settings: Settings, nats_url: str, tmp_path: Path
) -> None:
    env = worker_env(worker_settings, EDITFLOW_NATS__URL=nats_url,
                     EDITFLOW_WORKER__MODELS_ROOT=str(tmp_path / "empty"))  # fmt: skip
    proc = subprocess.run(
        [EDITFLOW, "worker", "serve", "--model", "longcat-image-edit", "--http-port", "0"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 71, proc.stderr[-2000:]
    assert "model did not load" in proc.stderr


async def test_a_cancel_stops_the_edit_in_flight_and_the_worker_takes_the_next(
    warm_worker: tuple[subprocess.Popen, int], image_server: ImageServer, nats_url: str
) -> None:
    """A withdrawn edit frees the GPU within seconds, not at its deadline, and the worker
    stays up (issue 20 §6). A cancel naming another edit is ignored."""
    proc, port = warm_worker
    image_server.routes["/cancel.png"] = Route(png_bytes((1000, 800)))
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    inbox = f"{RESULT_SUBJECT_PREFIX}.{NAMESPACE}.*"  # the results of this namespace's workers
    replies = await nc.subscribe(inbox)
    control = worker_control_subject(NAMESPACE, POD)
    try:
        # 100 steps (the most the model takes): far longer than the second the cancel waits.
        slow = request("warm-cancel", image_server.url("/cancel.png"),
                       parameters={"seed": 1, "steps": 100})  # fmt: skip
        await js.publish(work_subject(NAMESPACE, MODEL), slow.model_dump_json().encode())
        poll(lambda: "editflow_worker_in_flight 1.0" in getattr(get(port, "/metrics"), "text", ""),
             what="the slow edit to start")  # fmt: skip
        time.sleep(1.0)  # well into the denoising loop
        other = WorkerControl(action="cancel", edit_id="someone-else", attempt=1)
        await nc.publish(control, other.model_dump_json().encode())
        mine = WorkerControl(action="cancel", reason="withdrawn", edit_id="warm-cancel", attempt=1)
        await nc.publish(control, mine.model_dump_json().encode())
        cancelled = WorkerResult.model_validate_json((await replies.next_msg(timeout=120)).data)
        # Had the cancel not reached the running model, the edit would have succeeded.
        assert cancelled.edit_id == "warm-cancel" and cancelled.status == "failed"
        assert cancelled.error.code == "cancelled" and "withdrawn" in cancelled.error.message
        assert proc.poll() is None, "the worker stays up after a cancel"
        quick = request("warm-after-cancel", image_server.url("/cancel.png"))
        await js.publish(work_subject(NAMESPACE, MODEL), quick.model_dump_json().encode())
        after = WorkerResult.model_validate_json((await replies.next_msg(timeout=120)).data)
        assert after.edit_id == "warm-after-cancel" and after.status == "success"
    finally:
        await js.purge_stream(WORK_STREAM)
        await nc.close()
