"""Warm edit through the worker vs a bare diffusers loop, and the cold-start breakdown.

Both sides use the same tiny random-weight LongCat-Image-Edit pipeline (CPU),
the same input image, prompt, steps and seed. The worker side is the full
warm path of ``editflow worker serve`` minus NATS: HTTP fetch from a loopback
server (through the SSRF guard, allow-listed), preprocess, prompt validation,
the edit, resize + encode, upload to a real MinIO, presign and the result
JSON in S3. The bare side is ``pipe(image, prompt, ...)`` in a loop. Runs are
interleaved and the medians compared; the goal is worker/bare <= 1.10.

Cold start: fresh interpreter ``import torch, diffusers`` (subprocess), weight
resolution, tokenizer load, ``from_pretrained``, and the first edit.

    .venv/bin/python benchmarks/bench_worker.py [--steps 4] [--repeats 7]

Prints a table and writes ``benchmarks/results/bench_worker-<utc>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "longcat-image-edit"
PROMPT = "Change the car's colour to 'blue'"


def serve_bytes(data: bytes) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/input.png"


def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
    began = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--format", choices=("png", "jpeg"), default="png",
        help="result encoding (png: the contract's default; jpeg: e.g. usage wechat-article)",
    )  # fmt: skip
    parser.add_argument(
        "--vae-blocks", type=int, choices=(4, 6), default=6,
        help="tiny VAE depth: 6 (x32, as in the tests) or 4 (x8 like the real VAE: real tokens)",
    )  # fmt: skip
    parser.add_argument(
        "--input", choices=("phone-jpeg", "png"), default="phone-jpeg",
        help="4032x3024 JPEG (a phone photo) or a 1600x1200 PNG",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    from editflow.core.settings import Settings, WorkerSettings
    from editflow.devstack.stack import LocalStack
    from editflow.events.worker_contract import WorkerRequest
    from editflow.inference.pipeline import ModelCache, load_pipeline, load_tokenizer
    from editflow.inference.preprocess import preprocess
    from editflow.inference.registry import get_spec
    from editflow.inference.tiny import save_tiny_model
    from editflow.inference.weights import resolve_model_dir
    from editflow.inference.worker import process

    spec = get_spec(MODEL)
    cold: dict[str, float] = {}
    probe = (
        "import time; t=time.perf_counter(); import torch, diffusers; print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    cold["import torch+diffusers (fresh process)"] = float(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as tmp, LocalStack(kube=False, nats=False) as stack:
        root = Path(tmp) / "models"
        _, cold["build tiny model (save_pretrained)"] = timed(
            save_tiny_model, MODEL, root / MODEL, vae_blocks=args.vae_blocks
        )
        worker_settings = WorkerSettings(
            models_root=str(root), device="cpu", allow_cidrs=["127.0.0.1/32"],
            cache_dir=str(Path(tmp) / "cache"),
        )  # fmt: skip
        settings = Settings(s3=stack.s3_settings(), worker=worker_settings)
        model_dir, cold["resolve weights"] = timed(
            resolve_model_dir, MODEL, worker_settings, settings.s3
        )
        _, cold["load tokenizer"] = timed(load_tokenizer, spec, model_dir)
        loaded, cold["from_pretrained + to(device)"] = timed(
            load_pipeline, spec, model_dir, worker_settings
        )

        buffer = io.BytesIO()
        if args.input == "png":
            Image.effect_noise((1600, 1200), 40).convert("RGB").save(buffer, "PNG")
        else:
            Image.effect_noise((4032, 3024), 40).convert("RGB").save(buffer, "JPEG", quality=92)
        server, url = serve_bytes(buffer.getvalue())
        prepared = preprocess(buffer.getvalue(), max_pixels=10**8, multiple=spec.multiple)

        def bare() -> None:
            loaded.pipe(
                image=prepared.image, prompt=PROMPT, negative_prompt="",
                num_inference_steps=args.steps, guidance_scale=spec.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(1),
            )  # fmt: skip

        _, cold["first edit (bare)"] = timed(bare)

        models = ModelCache(worker_settings, settings.s3)
        models._loaded[spec.name] = loaded  # the warm worker's state: pipeline already loaded
        models._dirs[spec.name] = model_dir

        def through_worker(i: int) -> dict[str, float]:
            request = WorkerRequest.model_validate(
                {"edit_id": f"bench-{i}", "source": {"url": url}, "prompt": PROMPT,
                 "parameters": {"seed": 1, "steps": args.steps},
                 "output": {"format": args.format}}
            )  # fmt: skip
            result = process(request, settings, models)
            return result.cost.model_dump()

        # One cold Job: a fresh `editflow worker run` process, start to exit.
        s3 = settings.s3
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EDITFLOW_")},
            "EDITFLOW_S3__ENDPOINT": s3.endpoint,
            "EDITFLOW_S3__ACCESS_KEY": s3.access_key.get_secret_value(),
            "EDITFLOW_S3__SECRET_KEY": s3.secret_key.get_secret_value(),
            "EDITFLOW_S3__BUCKET": s3.bucket,
            "EDITFLOW_WORKER__MODELS_ROOT": str(root),
            "EDITFLOW_WORKER__DEVICE": "cpu",
            "EDITFLOW_WORKER__ALLOW_CIDRS": '["127.0.0.1/32"]',
            "EDITFLOW_WORKER__TERMINATION_LOG": str(Path(tmp) / "termination-log"),
        }
        cold_request = json.dumps(
            {
                "edit_id": "bench-cold",
                "source": {"url": url},
                "prompt": PROMPT,
                "parameters": {"seed": 1, "steps": args.steps},
            }
        )
        editflow = str(Path(sys.executable).with_name("editflow"))
        began = time.perf_counter()
        proc = subprocess.run([editflow, "worker", "run", "--request", cold_request],
                              capture_output=True, text=True, env=env, check=False)  # fmt: skip
        cold["editflow worker run (process start to exit)"] = time.perf_counter() - began
        if proc.returncode != 0:
            raise SystemExit(f"cold run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        cold_cost = json.loads(proc.stdout.strip().splitlines()[-1])["cost"]
        for step in ("fetch", "preprocess", "load", "infer", "upload", "total"):
            cold[f"  of which in the worker: {step}"] = cold_cost[step]

        through_worker(-1)  # warm the tokenizer and the S3 connection pool
        bare_times: list[float] = []
        worker_times: list[float] = []
        worker_costs: list[dict[str, float]] = []
        for i in range(args.repeats):
            _, seconds = timed(bare)
            bare_times.append(seconds)
            cost, seconds = timed(through_worker, i)
            worker_times.append(seconds)
            worker_costs.append(cost)
        server.shutdown()

    bare_median = statistics.median(bare_times)
    worker_median = statistics.median(worker_times)
    steps_median = {
        step: statistics.median(c[step] for c in worker_costs)
        for step in ("fetch", "preprocess", "load", "infer", "upload")
    }
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "model": f"{MODEL} (tiny random weights, VAE x{2 ** (args.vae_blocks - 1)})",
        "steps": args.steps,
        "guidance_scale": spec.guidance_scale,
        "repeats": args.repeats,
        "output_format": args.format,
        "input": ("1600x1200 PNG" if args.input == "png" else "4032x3024 JPEG") + " -> 1024x768",
        "bare_seconds": bare_times,
        "worker_seconds": worker_times,
        "bare_median": bare_median,
        "worker_median": worker_median,
        "ratio": worker_median / bare_median,
        # On a shared machine the minimum is the least disturbed run of each path.
        "bare_min": min(bare_times),
        "worker_min": min(worker_times),
        "ratio_of_minimums": min(worker_times) / min(bare_times),
        "overhead_seconds": worker_median - bare_median,
        "goal_ratio": 1.10,
        "worker_steps_median": steps_median,
        "cold_start": cold,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_worker-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nwarm edit, {report['model']}, {report['input']} ({args.format}), {args.steps} steps, "
          f"CFG {spec.guidance_scale}, {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    bare_min, worker_min = min(bare_times), min(worker_times)
    print(f"{'path':<34}{'median s':>10}{'min s':>10}")
    print(f"{'bare diffusers loop':<34}{bare_median:>10.3f}{bare_min:>10.3f}")
    print(f"{'through the worker':<34}{worker_median:>10.3f}{worker_min:>10.3f}")
    print(f"{'ratio (goal <= 1.10)':<34}{worker_median / bare_median:>10.3f}"
          f"{worker_min / bare_min:>10.3f}")  # fmt: skip
    print(f"{'overhead (worker - bare)':<34}{worker_median - bare_median:>10.3f}"
          f"{worker_min - bare_min:>10.3f}")  # fmt: skip
    for step, seconds in steps_median.items():
        print(f"{'  worker ' + step:<34}{seconds:>10.3f}")
    print("\ncold start")
    for what, seconds in cold.items():
        print(f"{what:<46}{seconds:>8.3f}")
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
