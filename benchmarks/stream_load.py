"""Streamed load vs raw read of the same objects from the same MinIO (issue 23, item 3).

Builds a random-weight safetensors file set (``--size-mb`` in all, ``--files`` files of
16 MiB tensors), pushes it with ``editflow models push``'s code (whole-file and per-chunk
hashes) to a MinIO started by the project's own launcher (``LocalStack`` with MinIO only,
on a free loopback port in a temp dir, stopped afterwards), then measures with
:func:`editflow.inference.streambench.measure_stream`:

* raw read: plain parallel ranged GETs of every byte, read and dropped;
* streamed load: the worker's loader into an empty cache, until the tensors are ready and
  verified (range reads into the tensors' buffers, chunk hashes, tensors built); then until
  the cache fill behind it is done too (written, hashed again, marked complete).

The goal is streamed load ≥ 0.8× raw read throughput, for a multi-GB pipeline: hence the
2 GB default. At a few hundred MB the load's fixed cost (the manifest's GET, the staging
directory, each file's set-up: about 40 ms here) shows in the ratio.

    .venv/bin/python benchmarks/stream_load.py [--size-mb 2048] [--files 4] [--concurrency 8]

Prints a table and writes ``benchmarks/results/stream_load-<utc>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "stream-bench"
TENSOR_BYTES = 16 << 20
GOAL = 0.8


def build_weights(root: Path, size_mb: int, files: int) -> int:
    """``files`` safetensors files of random bytes (as float16 tensors), ``size_mb`` in all."""
    import torch
    from safetensors.torch import save_file

    per_file = max(TENSOR_BYTES, size_mb * (1 << 20) // files)
    total = 0
    for index in range(files):
        tensors, left = {}, per_file
        while left > 0:
            size = min(TENSOR_BYTES, left)
            raw = torch.empty(size, dtype=torch.uint8).random_()
            tensors[f"layer{len(tensors)}.weight"] = raw.view(torch.float16)
            left -= size
        path = root / "transformer" / f"model-{index:05d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, path)
        total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from editflow.core.s3 import s3_client
    from editflow.core.settings import WorkerSettings
    from editflow.devstack.stack import LocalStack
    from editflow.inference.modelstore import S3Store, push
    from editflow.inference.snapshot import Snapshot
    from editflow.inference.streambench import measure_stream

    with tempfile.TemporaryDirectory(prefix="editflow-stream-bench-") as tmp:
        source = Path(tmp) / MODEL
        size = build_weights(source, args.size_mb, args.files)
        with LocalStack(Path(tmp) / "stack", kube=False, nats=False, kubelet=False) as stack:
            s3 = stack.s3_settings()
            snapshot = Snapshot(source, MODEL, "", {}, ())
            push(snapshot, S3Store(s3_client(s3), s3.bucket, "models"))
            worker = WorkerSettings(
                models_root=str(Path(tmp) / "none"),
                weights_s3_prefix="models",
                cache_dir=str(Path(tmp) / "cache"),
                stream_concurrency=args.concurrency,
            )
            measured = measure_stream(MODEL, worker, s3, repeats=args.repeats)

    row = measured.as_dict()
    print(f"{'':16}{'seconds':>10}{'MB/s':>10}")
    print(f"{'raw read':16}{measured.raw_seconds:>10.3f}{measured.raw_mb_s:>10.1f}")
    print(f"{'streamed load':16}{measured.load_seconds:>10.3f}{measured.load_mb_s:>10.1f}")
    filled_mb_s = measured.bytes / measured.filled_seconds / 1e6
    print(f"{'+ cache filled':16}{measured.filled_seconds:>10.3f}{filled_mb_s:>10.1f}")
    verdict = "meets" if measured.ratio >= GOAL else "misses"
    print(
        f"{size / 1e6:.0f} MB in {args.files} files, {args.concurrency} range reads at once: "
        f"streamed load = {measured.ratio:.2f}x raw read ({verdict} the {GOAL}x goal)"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"stream_load-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                **row,
                "goal_ratio": GOAL,
                "repeats": args.repeats,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "at": stamp,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    from editflow.devstack.procs import exit_on_sigterm

    exit_on_sigterm()  # a `timeout` or `kill` still stops the servers and removes temp dirs
    main()
