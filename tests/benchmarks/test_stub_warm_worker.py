"""The control-plane benchmark's stub warm worker keeps the warm protocol, against a real NATS:
it binds the pool's consumer, says ``idle``, takes a work message whose credentials are
sealed with the pool key, and publishes a success signed with the token it unsealed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from editflow.core.sealing import format_keys, new_pool_key, seal
from editflow.devstack.stack import LocalStack
from editflow.events.worker_contract import (
    RESULT_SUBJECT_PREFIX,
    SourceRef,
    WorkerRequest,
    WorkerResult,
    work_subject,
    worker_status_subject,
)
from editflow.events.workqueue import ensure_work_consumer
from editflow.inference.registry import DEFAULT_MODEL

STUB = Path(__file__).resolve().parents[2] / "benchmarks" / "controlplane" / "stub_warm_worker.py"
NAMESPACE = "bench-smoke"


async def _exchange(nats_url: str, env: dict[str, str], sealed: str) -> tuple[WorkerResult, int]:
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_work_consumer(js, NAMESPACE, DEFAULT_MODEL, ack_wait=30, max_deliveries=2)
    idle, results = asyncio.Event(), asyncio.Queue()

    async def on_beat(msg) -> None:
        if json.loads(msg.data)["state"] == "idle":
            idle.set()

    async def on_result(msg) -> None:
        await results.put(WorkerResult.model_validate_json(msg.data))

    await nc.subscribe(worker_status_subject(NAMESPACE, DEFAULT_MODEL), cb=on_beat)
    await nc.subscribe(f"{RESULT_SUBJECT_PREFIX}.{NAMESPACE}.>", cb=on_result)
    worker = subprocess.Popen(
        [sys.executable, str(STUB), "worker", "serve", "--model", DEFAULT_MODEL], env=env
    )
    try:
        await asyncio.wait_for(idle.wait(), timeout=20)
        request = WorkerRequest(
            edit_id="ej-smoke", attempt=1, model=DEFAULT_MODEL, prompt="把背景换成蓝色",
            source=SourceRef(url="https://oa.example.com/a.png"), credentials=sealed,
        )  # fmt: skip
        await js.publish(work_subject(NAMESPACE, DEFAULT_MODEL), request.model_dump_json().encode())
        result = await asyncio.wait_for(results.get(), timeout=20)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 20)
        await nc.close()
    return result, code


def test_the_stub_warm_worker_answers_a_sealed_message_with_the_unsealed_token(tmp_path):
    key = new_pool_key()
    keys = tmp_path / "pool-keys"
    keys.write_text(format_keys([key]))
    secrets = {"access_key": "AK", "secret_key": "SK", "session_token": "ST"}
    sealed = seal({**secrets, "result_token": "tok-smoke"}, key)
    with LocalStack(kube=False, minio=False) as stack:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EDITFLOW_")},
            "EDITFLOW_NATS__URL": stack.nats_url,
            "EDITFLOW_NAMESPACE": NAMESPACE,
            "EDITFLOW_WORKER__POOL_KEY_FILE": str(keys),
            # No S3 here: the result JSON's one PUT is refused at once and only logged.
            "EDITFLOW_S3__ENDPOINT": "127.0.0.1:9",
            "EDITFLOW_WORKER__UPLOAD_RETRY_SECONDS": "0",
            "POD_NAME": "stub-0",
        }
        result, code = asyncio.run(_exchange(stack.nats_url, env, sealed))
    assert result.status == "success", result
    assert (result.edit_id, result.attempt, result.worker) == ("ej-smoke", 1, "stub-0")
    assert result.token == "tok-smoke"  # unsealed with the pool key, as a real worker does
    assert result.result_key == "results/ej-smoke/attempt-1/result.png"
    assert code == 0
