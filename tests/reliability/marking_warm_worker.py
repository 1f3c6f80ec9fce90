"""``editflow worker serve`` itself, with marks the fault suite can watch: the warm mode's faults.

The fault suite must stop MinIO while an upload is in flight and SIGKILL a worker mid-edit.
In Job mode its worker is ``uploading_worker.py``; in warm mode the worker is the real one
(the tiny model, the work queue, heartbeats, the real S3 writes), and this wrapper only
marks what it does in ``STUB_MARK_DIR``, as the Job-mode worker does:

* ``<edit>-a<n>.started`` (this process's pid) when an edit starts, renamed ``.done`` when
  it ends, however it ends;
* a line ``<edit>-a<n>`` in ``results.log`` for each run that produced a result (the
  suite checks that no attempt ran to two);
* ``<edit>-a<n>.uploading`` while an S3 write of that edit runs, after waiting
  ``STUB_UPLOAD_SECONDS`` (a large image's upload), so the suite can catch one in flight.

The arguments are ``editflow worker serve``'s (the operator adds ``--model``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from editflow.inference import output, report, worker

MARKS = Path(os.environ.get("STUB_MARK_DIR", "/tmp"))
_current: dict[str, str] = {}  # the edit in flight ("<edit>-a<n>"); one at a time


def _marked_process(original: Any) -> Any:
    def process(request: Any, *args: Any, **kwargs: Any) -> Any:
        stem = f"{request.edit_id}-a{request.attempt}"
        started = MARKS / f"{stem}.started"
        started.write_text(str(os.getpid()))
        _current["stem"] = stem
        try:
            result = original(request, *args, **kwargs)
            with (MARKS / "results.log").open("a") as log:  # O_APPEND: one line per write
                log.write(f"{stem}\n")
            return result
        finally:
            _current.pop("stem", None)
            started.rename(MARKS / f"{stem}.done")

    return process


def _marked_put(original: Any) -> Any:
    def put_bytes(*args: Any, **kwargs: Any) -> Any:
        stem = _current.get("stem")
        if stem is None:  # a refusal's or failure's result JSON: nothing to mark
            return original(*args, **kwargs)
        uploading = MARKS / f"{stem}.uploading"
        uploading.write_text(str(os.getpid()))
        try:
            time.sleep(float(os.environ.get("STUB_UPLOAD_SECONDS", "0")))
            return original(*args, **kwargs)
        finally:
            uploading.unlink(missing_ok=True)

    return put_bytes


def main() -> None:
    worker.process = _marked_process(worker.process)
    output.put_bytes = _marked_put(output.put_bytes)
    report.put_bytes = _marked_put(report.put_bytes)
    from editflow.cli.main import app

    app(args=["worker", "serve", *sys.argv[1:]], prog_name="editflow")


if __name__ == "__main__":
    main()
