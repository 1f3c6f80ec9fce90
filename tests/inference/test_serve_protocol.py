"""The warm worker's side of warm dispatch, against real NATS JetStream and MinIO.

Heartbeats, the control subject, the idle and age exits, bounded deliveries and a model
that does not load, each through a real ``editflow worker serve`` process. Every test
serves its own namespace, so each gets its own durable consumer with its own bounds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from editflow.core.s3 import s3_client
from editflow.core.settings import NatsSettings, Settings
from editflow.events.worker_contract import (
    POISON_EDIT_CODE,
    RESULT_SUBJECT_PREFIX,
    WORK_STREAM,
    WorkerHeartbeat,
    WorkerRequest,
    WorkerResult,
    result_json_key,
    result_subject,
    work_consumer,
    work_subject,
    worker_control_subject,
    worker_status_subject,
)
from editflow.events.workqueue import ensure_work_consumer, ensure_work_stream
from editflow.inference import serve

from .conftest import ImageServer, Route, png_bytes, worker_env

pytestmark = pytest.mark.slow
EDITFLOW = str(Path(sys.executable).with_name("editflow"))
MODEL = "longcat-image-edit"


@dataclass
class Beats:
    """Every heartbeat one worker published, in order."""

    seen: list[WorkerHeartbeat] = field(default_factory=list)

    async def on_message(self, msg: Any) -> None:
        self.seen.append(WorkerHeartbeat.model_validate_json(msg.data))

    def states(self) -> list[str]:
        """The states in order, each repetition (the periodic beats) dropped."""
        states: list[str] = []
        for beat in self.seen:
            if not states or states[-1] != beat.state:
                states.append(beat.state)
        return states

    def first(self, state: str) -> WorkerHeartbeat:
        return next(beat for beat in self.seen if beat.state == state)

    async def wait_for(self, state: str, timeout: float = 120.0) -> WorkerHeartbeat:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for beat in self.seen:
                if beat.state == state:
                    return beat
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {state!r} heartbeat; states so far: {self.states()}")


@dataclass
class Worker:
    proc: subprocess.Popen
    pod: str
    log: Path

    async def exit_code(self, timeout: float = 120.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    await ensure_work_stream(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def start_worker(worker_settings: Settings, nats_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start ``editflow worker serve`` for a namespace with extra environment and arguments."""
    started: list[Worker] = []

    def start(namespace: str, *args: str, **env: str) -> Worker:
        pod = f"warm-{namespace}"
        log = tmp_path / f"{pod}.log"
        environment = worker_env(worker_settings, EDITFLOW_NATS__URL=nats_url, POD_NAME=pod, **env)
        with log.open("w") as out:
            proc = subprocess.Popen(
                [EDITFLOW, "worker", "serve", "--model", MODEL, "--http-port", "0",
                 "--namespace", namespace, *args],
                stdout=out, stderr=subprocess.STDOUT, env=environment,
            )  # fmt: skip
        started.append(Worker(proc, pod, log))
        return started[-1]

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


async def listen(nc: Any, namespace: str) -> Beats:
    beats = Beats()
    await nc.subscribe(worker_status_subject(namespace, MODEL), cb=beats.on_message)
    await nc.flush()
    return beats


async def as_operator(nc: Any, namespace: str) -> None:
    """Make the pool's work consumer, as the operator does before a pool's first worker (a
    worker's NATS identity may not: issue 20 §2)."""
    await ensure_work_consumer(nc.jetstream(), namespace, MODEL, ack_wait=60, max_deliveries=3)


def results_of(namespace: str) -> str:
    """Every result of ``namespace``'s workers (they publish nowhere else: issue 20 §2)."""
    return f"{RESULT_SUBJECT_PREFIX}.{namespace}.*"


async def publish(nc: Any, namespace: str, edit_id: str, url: str, **extra: Any) -> WorkerRequest:
    body = {"edit_id": edit_id, "source": {"url": url}, "prompt": "turn the sky pink",
            "parameters": {"seed": 3}, **extra}  # fmt: skip
    request = WorkerRequest.model_validate(body)
    await nc.jetstream().publish(work_subject(namespace, MODEL), request.model_dump_json().encode())
    return request


async def left_in_stream(nc: Any, namespace: str) -> bool:
    try:
        await nc.jetstream().get_last_msg(WORK_STREAM, work_subject(namespace, MODEL))
    except NotFoundError:
        return False
    return True


async def test_heartbeats_follow_the_edit_and_an_idle_worker_exits(
    nc: Any, start_worker: Any, image_server: ImageServer
) -> None:
    namespace = "proto-idle"
    image_server.routes["/idle.png"] = Route(png_bytes((256, 256)))
    beats = await listen(nc, namespace)
    inbox = results_of(namespace)
    replies = await nc.subscribe(inbox)
    # Waiting before the worker starts: it is ready (idle) before it takes it.
    await publish(nc, namespace, "idle-1", image_server.url("/idle.png"))
    began = time.time()
    worker = start_worker(namespace, "--idle-seconds", "2", EDITFLOW_WORKER__CONFIG_HASH="c0ffee")
    # Started before the operator made its consumer: it waits for it, then takes the edit.
    for _ in range(600):
        if "waiting for the operator to create the work consumer" in worker.log.read_text():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the worker did not wait for its consumer:\n{worker.log.read_text()}")
    await as_operator(nc, namespace)

    assert await worker.exit_code() == 0
    assert beats.states() == ["loading", "idle", "busy", "idle", "stopped"]
    for beat in beats.seen:
        assert (beat.pod, beat.namespace, beat.model) == (worker.pod, namespace, MODEL)
        assert beat.config_hash == "c0ffee" and began - 1 < beat.started_at < beat.since + 1
    busy = beats.first("busy")
    assert (busy.edit_id, busy.attempt, busy.deliveries) == ("idle-1", 1, 1)
    assert all(beat.edit_id is None for beat in beats.seen if beat.state != "busy")
    result = WorkerResult.model_validate_json((await replies.next_msg(timeout=5)).data)
    assert result.status == "success" and result.worker == worker.pod
    # Idle counted from the end of the edit, not from ready.
    idle_again = [beat for beat in beats.seen if beat.state == "idle"][-1]
    stopped = beats.seen[-1]
    assert stopped.state == "stopped" and stopped.handled == 1
    assert stopped.since - idle_again.since >= 1.9
    assert not await left_in_stream(nc, namespace)


async def test_retire_finishes_the_edit_in_flight_then_exits(
    nc: Any, start_worker: Any, image_server: ImageServer
) -> None:
    namespace = "proto-retire"
    # The source takes a while, so the retire request arrives while the edit runs.
    image_server.routes["/retire.png"] = Route(png_bytes((256, 256)), delay=3.0)
    beats = await listen(nc, namespace)
    inbox = results_of(namespace)
    replies = await nc.subscribe(inbox)
    await as_operator(nc, namespace)
    worker = start_worker(namespace, "--idle-seconds", "0")
    await beats.wait_for("idle")
    control = worker_control_subject(namespace, worker.pod)
    for unreadable in (b"{not json", json.dumps({"action": "explode"}).encode()):
        await nc.publish(control, unreadable)
    await nc.flush()
    await publish(nc, namespace, "retire-1", image_server.url("/retire.png"))
    await beats.wait_for("busy")
    await nc.publish(control, json.dumps({"action": "retire", "reason": "outdated"}).encode())

    assert await worker.exit_code() == 0
    assert beats.states() == ["loading", "idle", "busy", "draining", "stopped"]
    draining = beats.first("draining")
    assert (draining.edit_id, draining.attempt, draining.deliveries) == ("retire-1", 1, 1)
    result = WorkerResult.model_validate_json((await replies.next_msg(timeout=5)).data)
    assert (result.edit_id, result.status) == ("retire-1", "success")
    assert not await left_in_stream(nc, namespace)  # finished and acked
    messages = [line["msg"] for line in worker.lines()]
    assert messages.count("unreadable control message ignored") == 2


async def test_an_edit_past_its_deliveries_is_reported_as_poison_and_not_run(
    nc: Any, start_worker: Any, image_server: ImageServer, worker_settings: Settings
) -> None:
    namespace = "proto-poison"
    image_server.routes["/poison.png"] = Route(png_bytes((256, 256)))
    js = nc.jetstream()
    await ensure_work_consumer(js, namespace, MODEL, ack_wait=60, max_deliveries=1)
    info = await js.consumer_info(WORK_STREAM, work_consumer(namespace, MODEL))
    assert info.config.max_deliver == 2  # one more than the deliveries an edit may use
    inbox = results_of(namespace)
    replies = await nc.subscribe(inbox)
    broadcast = await nc.subscribe(result_subject(namespace, "poison-1"))
    await publish(nc, namespace, "poison-1", image_server.url("/poison.png"), attempt=2)
    # The first delivery goes to a "worker" that gives it back: the next one is past the bound.
    taker = await js.pull_subscribe_bind(
        durable=work_consumer(namespace, MODEL), stream=WORK_STREAM
    )
    (first,) = await taker.fetch(1, timeout=5)
    assert first.metadata.num_delivered == 1
    await first.nak()
    await taker.unsubscribe()
    beats = await listen(nc, namespace)
    worker = start_worker(namespace, "--idle-seconds", "2", EDITFLOW_WORKER__MAX_DELIVERIES="1")

    result = WorkerResult.model_validate_json((await replies.next_msg(timeout=120)).data)
    assert (result.status, result.edit_id, result.attempt, result.model) == (
        "failed", "poison-1", 2, MODEL,
    )  # fmt: skip
    assert result.error is not None and result.error.code == POISON_EDIT_CODE
    assert not result.error.retriable
    assert result.error.message == (
        "this edit was delivered 1 times and every worker that took it died before finishing; "
        "not run again"
    )
    assert result.worker == worker.pod
    assert WorkerResult.model_validate_json((await broadcast.next_msg(timeout=5)).data) == result
    s3 = worker_settings.s3
    stored = s3_client(s3).get_object(s3.bucket, result_json_key("results", "poison-1", 2)).read()
    assert WorkerResult.model_validate_json(stored) == result

    assert await worker.exit_code() == 0
    assert not await left_in_stream(nc, namespace)  # acked: it left the work queue
    assert "busy" not in beats.states()  # not run: no edit began, the image never fetched
    assert "/poison.png" not in [path for path, _ in image_server.seen]


async def test_a_model_that_does_not_load_says_failed_and_exits_71(
    nc: Any, start_worker: Any, tmp_path: Path
) -> None:
    namespace = "proto-fail"
    beats = await listen(nc, namespace)
    worker = start_worker(namespace, EDITFLOW_WORKER__MODELS_ROOT=str(tmp_path / "empty"))

    assert await worker.exit_code() == 71
    assert beats.states() == ["loading", "failed"]
    failed = beats.seen[-1]
    assert failed.error is not None and "no weights for model longcat-image-edit" in failed.error


async def test_a_worker_past_its_max_age_takes_no_new_edit(
    nc: Any, start_worker: Any, image_server: ImageServer
) -> None:
    namespace = "proto-age"
    image_server.routes["/age.png"] = Route(png_bytes((256, 256)))
    beats = await listen(nc, namespace)
    await publish(nc, namespace, "age-1", image_server.url("/age.png"))
    await as_operator(nc, namespace)
    # Loading alone takes longer than a second: the worker is too old before its first edit.
    worker = start_worker(namespace, "--idle-seconds", "0", EDITFLOW_WORKER__MAX_AGE_SECONDS="1")

    assert await worker.exit_code() == 0
    assert beats.states() == ["loading", "stopped"]
    assert await left_in_stream(nc, namespace)  # left for a younger worker
    await nc.jetstream().purge_stream(WORK_STREAM, subject=work_subject(namespace, MODEL))


async def test_nats_unreachable_at_start_exits_70(
    worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(serve, "NATS_START_SECONDS", 0.5)
    settings = worker_settings.model_copy(
        update={"nats": NatsSettings(url=f"nats://127.0.0.1:{port}")}
    )
    worker = serve.WarmWorker(settings, model=MODEL, http_port=0, namespace="proto-down")
    assert await worker.run() == 70
    assert not worker.loaded  # NATS first: no model is loaded for a worker nobody can hear


def test_a_job_mode_result_names_its_worker(worker_settings: Settings, tmp_path: Path) -> None:
    """``editflow worker run`` names its Pod too: stdout, termination message and S3 alike."""
    raw = json.dumps({"edit_id": "job-named", "attempt": 1, "prompt": "p"})  # no source
    proc = subprocess.run(
        [EDITFLOW, "worker", "run", "--request", raw,
         "--termination-log", str(tmp_path / "termination-log")],
        capture_output=True, text=True, timeout=120,
        env=worker_env(worker_settings, POD_NAME="job-pod-1"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    printed = WorkerResult.model_validate_json(proc.stdout.strip().splitlines()[-1])
    assert printed.worker == "job-pod-1" and printed.error and printed.error.code == "invalid_input"
    terminated = WorkerResult.model_validate_json((tmp_path / "termination-log").read_text())
    s3 = worker_settings.s3
    stored = s3_client(s3).get_object(s3.bucket, result_json_key("results", "job-named", 1)).read()
    assert terminated == printed == WorkerResult.model_validate_json(stored)
