"""Job mode against warm mode (issue 13): what a warm pool saves, measured on the real platform.

1. **Batch**: ``--edits`` (20) EditJobs of the tiny model created at once, first with
   ``worker.mode: job`` (one Job, one process, one model load per attempt), then with
   ``warm`` (a pool of ``--workers`` warm workers). Both with the same cap
   (``maxRunningPerNamespace`` = ``--workers``). Reported: makespan, EditJob created →
   finished p50/p99, and model loads (results whose ``cost.load_detail`` says they loaded).
2. **Ready worker**: one edit at a time to a warm worker that already has the model loaded
   (in this process, on a real NATS): work message published → first transformer forward
   (the LongCat pipeline has no step callback, so the transformer's ``forward`` is hooked),
   p50 over ``--probes``, and the worker's overhead over a bare pipeline call.

    .venv/bin/python benchmarks/bench_dispatch.py [--edits 20] [--workers 2] [--probes 10]

Prints a table and writes ``benchmarks/results/bench_dispatch-<utc>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from editflow.core.s3 import s3_client
from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.stack import LocalStack
from editflow.operator.crd import editjob_path
from editflow.operator.decide import parse_time
from editflow.operator.names import LABEL_POOL

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "longcat-image-edit"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class ImageServer:
    """One PNG on loopback (the workers fetch their source from it)."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), (200, 30, 30)).save(buf, format="PNG")
        png = buf.getvalue()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/red.png"


def run_batch(stack: LocalStack, mode: str, edits: int, workers: int, url: str) -> dict[str, Any]:
    """``edits`` EditJobs at once in a fresh namespace whose operator runs ``mode``."""
    api = KubeClient(stack.kubeconfig)
    namespace = f"bench-{mode}-{uuid.uuid4().hex[:5]}"
    localmode.install_crd(api)
    localmode.install_namespace(api, stack, namespace)
    models = localmode.models_dir(stack, namespace)
    localmode.build_tiny_model(models)
    env = localmode.operator_env(
        stack,
        namespace,
        worker_mode=mode,
        max_running_per_namespace=str(workers),
        max_warm_workers=str(workers),
        resync_seconds="1",
        gpus_per_job="0",
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    operator = localmode.OperatorProcess(env, workdir).start()
    try:
        names = [f"e-{i:03d}" for i in range(edits)]
        began = time.time()
        for name in names:
            api.post(
                editjob_path(namespace),
                {
                    "apiVersion": "editflow.io/v1alpha1",
                    "kind": "EditJob",
                    "metadata": {"name": name},
                    "spec": {
                        "source": {"url": url},
                        "prompt": "make the red square blue",
                        "parameters": {"steps": 2, "seed": 1},
                    },
                },
            )
        final = ("Succeeded", "Failed", "NeedsReview", "Cancelled")
        deadline = time.time() + 60 * 30
        while time.time() < deadline:
            items = api.get(editjob_path(namespace))["items"]
            if sum((ej.get("status") or {}).get("phase") in final for ej in items) == edits:
                break
            time.sleep(1)
        items = api.get(editjob_path(namespace))["items"]
        latencies, loads, phases = [], 0, {}
        s3 = stack.s3_settings()
        client = s3_client(s3)
        for ej in items:
            status = ej.get("status") or {}
            phases[status.get("phase")] = phases.get(status.get("phase"), 0) + 1
            created = parse_time(ej["metadata"]["creationTimestamp"])
            finished = parse_time(status.get("finishedAt"))
            if created and finished:
                latencies.append((finished - created).total_seconds())
            attempt = status.get("attempts")
            key = f"results/{namespace}/{ej['metadata']['name']}/attempt-{attempt}/result.json"
            try:
                response = client.get_object(s3.bucket, key)
                result = json.loads(response.read())
                response.close()
                loads += 1 if (result.get("cost") or {}).get("load_detail") else 0
            except Exception as exc:  # a failed edit has no result to count
                print(f"no result for {ej['metadata']['name']}: {exc}")
        finished_at = max(
            (parse_time((ej.get("status") or {}).get("finishedAt")) for ej in items),
            default=None,
            key=lambda t: t.timestamp() if t else 0,
        )
        pods = api.get(
            f"/apis/batch/v1/namespaces/{namespace}/jobs",
            labelSelector=LABEL_POOL if mode == "warm" else "editflow.io/editjob",
        )["items"]
        return {
            "mode": mode,
            "edits": edits,
            "phases": phases,
            "makespan_s": round(finished_at.timestamp() - began, 1) if finished_at else None,
            "latency_p50_s": round(percentile(latencies, 0.5), 1),
            "latency_p99_s": round(percentile(latencies, 0.99), 1),
            # A warm worker loads the model before it takes work (no attempt pays for it):
            # one load per worker started. A Job-mode attempt loads it itself.
            "model_loads": loads if mode == "job" else len(pods),
            "jobs_started": len(pods),
        }
    finally:
        operator.stop()
        api.delete(f"/api/v1/namespaces/{namespace}")
        api.close()
        shutil.rmtree(workdir, ignore_errors=True)


def run_ready_worker(stack: LocalStack, probes: int, url: str) -> dict[str, Any]:
    """Publish → first transformer forward, with the model already loaded (in this process)."""
    from editflow.core.settings import Settings
    from editflow.events.worker_contract import (
        WorkerRequest,
        result_subject,
        work_msg_id,
        work_subject,
    )
    from editflow.inference.registry import get_spec
    from editflow.inference.serve import WarmWorker

    root = Path(tempfile.mkdtemp(prefix="bench-ready-"))
    localmode.build_tiny_model(root)
    s3 = stack.s3_settings()
    os.environ.update(
        EDITFLOW_WORKER__MODELS_ROOT=str(root),
        EDITFLOW_WORKER__DEVICE="cpu",
        EDITFLOW_WORKER__ALLOW_CIDRS='["127.0.0.0/8"]',
        EDITFLOW_NATS__URL=stack.nats_url,
        EDITFLOW_S3__ENDPOINT=s3.endpoint,
        EDITFLOW_S3__BUCKET=s3.bucket,
        EDITFLOW_S3__ACCESS_KEY=s3.access_key.get_secret_value(),
        EDITFLOW_S3__SECRET_KEY=s3.secret_key.get_secret_value(),
        EDITFLOW_WORKER__IDLE_SECONDS="0",
    )
    settings = Settings()
    namespace = "bench-ready"

    async def measure() -> dict[str, Any]:
        import nats

        worker = WarmWorker(settings, model=MODEL, http_port=0, namespace=namespace)
        task = asyncio.create_task(worker.run())
        while not worker.ready():
            await asyncio.sleep(0.1)
        loaded = worker.models.get(get_spec(MODEL))
        pipe = loaded.pipe
        first_forward: list[float] = []
        original = pipe.transformer.forward

        def hooked(*args: Any, **kwargs: Any) -> Any:
            first_forward.append(time.perf_counter())
            return original(*args, **kwargs)

        pipe.transformer.forward = hooked
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        to_forward, to_result = [], []
        try:
            for i in range(probes + 1):
                request = WorkerRequest(
                    edit_id=f"probe-{i}",
                    source={"url": url},
                    prompt="make the red square blue",
                    model=MODEL,
                    parameters={"steps": 2, "seed": 1},
                    output={"key_prefix": f"results/{namespace}"},
                )
                sub = await nc.subscribe(result_subject(namespace, request.edit_id))
                first_forward.clear()
                sent = time.perf_counter()
                await js.publish(
                    work_subject(namespace, MODEL),
                    request.model_dump_json(exclude_unset=True).encode(),
                    headers={"Nats-Msg-Id": work_msg_id(namespace, request)},
                )
                reply = await sub.next_msg(timeout=120)
                done = time.perf_counter()
                outcome = json.loads(reply.data)
                if outcome.get("status") != "success":
                    raise RuntimeError(f"the probe edit failed: {outcome.get('error')}")
                await sub.unsubscribe()
                if i == 0:
                    continue  # the first edit warms caches (allocator, JIT paths)
                to_forward.append(first_forward[0] - sent)
                to_result.append(done - sent)
            # The bare pipeline call on the same input (the worker's own run_edit: the same
            # kwargs, no fetch, preprocess, gate or upload), for the overhead.
            from editflow.inference.pipeline import run_edit
            from editflow.inference.preprocess import preprocess

            pipe.transformer.forward = original
            spec = get_spec(MODEL)
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
                prepared = preprocess(response.read(), max_pixels=10**7, multiple=spec.multiple)
            steps, guidance, negative = spec.resolve_params(
                steps=2, guidance_scale=None, negative_prompt=None, overrides=loaded.defaults
            )
            bare = []
            for _ in range(probes):
                began = time.perf_counter()
                run_edit(
                    loaded, image=prepared.image, prompt="make the red square blue",
                    steps=steps, guidance_scale=guidance, negative_prompt=negative, seed=1,
                )  # fmt: skip
                bare.append(time.perf_counter() - began)
        finally:
            await nc.close()
            worker.stop()
            await asyncio.wait_for(task, 60)
        return {
            "probes": probes,
            "publish_to_first_forward_p50_s": round(percentile(to_forward, 0.5), 3),
            "publish_to_result_p50_s": round(percentile(to_result, 0.5), 3),
            "bare_pipeline_call_p50_s": round(percentile(bare, 0.5), 3),
            "overhead_p50_s": round(percentile(to_result, 0.5) - percentile(bare, 0.5), 3),
            "goal_first_forward_s": 0.5,
        }

    try:
        return asyncio.run(measure())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def show_batches(batches: list[dict[str, Any]]) -> None:
    print(
        f"{'mode':<6} {'edits':>5} {'makespan s':>10} {'p50 s':>6} {'p99 s':>6} "
        f"{'loads':>5} {'jobs':>4}  phases"
    )
    for b in batches:
        print(
            f"{b['mode']:<6} {b['edits']:>5} {b['makespan_s']!s:>10} {b['latency_p50_s']:>6} "
            f"{b['latency_p99_s']:>6} {b['model_loads']:>5} {b['jobs_started']:>4}  {b['phases']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args()
    images = ImageServer()
    # editflow's images run as the installed `editflow` (as the tests run them).
    with LocalStack(host_images=True) as stack:
        batches = (
            []
            if args.skip_batch
            else [
                run_batch(stack, mode, args.edits, args.workers, images.url)
                for mode in ("job", "warm")
            ]
        )
        show_batches(batches)
        ready = run_ready_worker(stack, args.probes, images.url)
    print(
        f"ready warm worker: publish → first transformer forward p50 "
        f"{ready['publish_to_first_forward_p50_s']} s (goal ≤ 0.5 s), publish → result p50 "
        f"{ready['publish_to_result_p50_s']} s, bare pipeline call p50 "
        f"{ready['bare_pipeline_call_p50_s']} s, overhead {ready['overhead_p50_s']} s"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench_dispatch-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "batch": batches,
                "ready_worker": ready,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
