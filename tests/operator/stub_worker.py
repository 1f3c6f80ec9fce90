"""A worker that finishes at once: the operator's contract without torch.

Scale tests and benchmarks need thousands of attempts that end quickly, so
``EDITFLOW_OPERATOR__WORKER_COMMAND='["python", "<this file>"]'`` replaces the
real worker. It speaks the same contract (``--request JSON --termination-log
PATH``, the result JSON as termination message, exit code 0), optionally
holding the attempt for ``STUB_WORKER_SECONDS`` so slots stay taken a while.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--request", required=True)
    parser.add_argument("--termination-log", required=True)
    args = parser.parse_args()
    request = json.loads(args.request)
    time.sleep(float(os.environ.get("STUB_WORKER_SECONDS", "0")))
    prefix = request.get("output", {}).get("key_prefix", "results")
    key = f"{prefix}/{request['edit_id']}/attempt-{request['attempt']}/result.png"
    result = {
        "status": "success",
        "edit_id": request["edit_id"],
        "attempt": request["attempt"],
        "model": request.get("model", "stub"),
        "result_key": key,
        "cost": {"total": 0.01},
    }
    with open(args.termination_log, "w") as fh:
        fh.write(json.dumps(result))


if __name__ == "__main__":
    main()
