"""A worker that finishes at once, so the benchmark measures the control plane, not an edit.

The process kubelet runs it in place of ``editflow`` for the benchmark's stub
image. It takes exactly the operator's command line (the contract in
``editflow.events.worker_contract``)::

    editflow worker run --request '<WorkerRequest JSON>' --termination-log PATH

and writes a success :class:`~editflow.events.worker_contract.WorkerResult`
to the termination message and stdout, then exits 0. No S3 upload: the
operator reads the termination message while the Job exists (the benchmark
keeps finished Jobs for minutes).

Standard library only and started with ``python -S``: a Pod's process costs
a few milliseconds, so thousands of Jobs a minute stay cheap for the node.
"""

from __future__ import annotations

import json
import os
import sys


def _options(args: list[str]) -> dict[str, str]:
    """``--name value`` and ``--name=value`` pairs."""
    found: dict[str, str] = {}
    rest = iter(args)
    for arg in rest:
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            found[name] = value
        elif arg.startswith("--"):
            found[arg] = next(rest, "")
    return found


def result_for(request: dict[str, object], bucket: str | None) -> dict[str, object]:
    """The WorkerResult of a successful attempt of ``request`` (no image is really made)."""
    output = request.get("output") or {}
    assert isinstance(output, dict)
    prefix = str(output.get("key_prefix") or "results").strip("/")
    fmt = str(output.get("format") or "png")
    edit_id, attempt = request["edit_id"], request.get("attempt", 1)
    params = request.get("parameters") or {}
    assert isinstance(params, dict)
    return {
        "status": "success",
        "edit_id": edit_id,
        "attempt": attempt,
        "model": request.get("model") or "longcat-image-edit",
        "seed": params.get("seed") or 0,
        "bucket": bucket,
        "result_key": f"{prefix}/{edit_id}/attempt-{attempt}/result.{fmt}",
        "width": 64,
        "height": 64,
        "format": fmt,
        "cost": {"fetch": 0.0, "preprocess": 0.0, "load": 0.0, "infer": 0.0, "upload": 0.0,
                 "total": 0.001},
    }  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[:2] != ["worker", "run"]:
        print(f"stub worker: expected 'worker run ...', got {argv[:2]}", file=sys.stderr)
        return 2
    options = _options(argv[2:])
    if "--request" not in options:
        print("stub worker: --request is required", file=sys.stderr)
        return 2
    request = json.loads(options["--request"])
    line = json.dumps(result_for(request, os.environ.get("EDITFLOW_S3__BUCKET")))
    termination = options.get("--termination-log")
    if termination:
        with open(termination, "w") as fh:
            fh.write(line)
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
