"""What per-attempt S3 credentials cost at dispatch: one STS AssumeRole per attempt.

Mints through :class:`editflow.operator.credentials.AttemptCredentialMinter` (the
dispatcher's call) against a real MinIO started by the devstack, one after the
other and in concurrent bursts (the dispatcher mints in a worker thread, so a
burst of starts overlaps its STS calls).

    .venv/bin/python benchmarks/bench_attempt_credentials.py [--sequential 200] [--burst 100]

Prints a table and writes ``benchmarks/results/bench_attempt_credentials-<utc>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from editflow.core.settings import OperatorSettings
from editflow.devstack.stack import LocalStack
from editflow.operator.credentials import AttemptCredentialMinter

RESULTS = Path(__file__).resolve().parent / "results"


def editjob(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"bench-{i}", "namespace": "bench", "uid": f"uid-{i}"},
        "spec": {"source": {"s3Key": f"uploads/bench/{i:02x}/in.png"}, "prompt": "x"},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
    with LocalStack(kube=False, nats=False) as stack:
        minter = AttemptCredentialMinter(stack.s3_settings(), OperatorSettings())
        asyncio.run(minter.mint(editjob(0), 1))  # warm the connection pool
        latencies = []
        for i in range(args.sequential):
            began = time.perf_counter()
            asyncio.run(minter.mint(editjob(i), 1))
            latencies.append((time.perf_counter() - began) * 1000)

        async def burst() -> float:
            began = time.perf_counter()
            await asyncio.gather(*(minter.mint(editjob(i), 1) for i in range(args.burst)))
            return time.perf_counter() - began

        burst_seconds = asyncio.run(burst())
        minio_version = stack.minio.version() if stack.minio else "?"
    figures = {
        "sequential_mints": args.sequential,
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "max_ms": round(max(latencies), 2),
        "burst_mints": args.burst,
        "burst_seconds": round(burst_seconds, 3),
        "burst_per_second": round(args.burst / burst_seconds, 1),
    }
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value} |")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench_attempt_credentials-{stamp}.json"
    meta = {"minio": minio_version, "cpus": os.cpu_count(), "python": platform.python_version()}
    out.write_text(json.dumps({"figures": figures, "environment": meta}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
