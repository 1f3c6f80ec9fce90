"""The container shim: runs one container's process and records how it ended.

Like containerd's shim, it outlives the agent that started it: it runs in
its own session, writes ``started.json`` when the process starts and
``exit.json`` (exit code, signal, times) when it ends, so a restarted agent
adopts a running container or reads the outcome it missed. SIGTERM to the
shim is forwarded to the container's process group; SIGKILL goes straight to
that group (its id is in ``started.json``), and the shim records 137.

Usage (by :mod:`.runtime`, not by people)::

    python -S -E .../editflow/devstack/kubelet/shim.py STATE_DIR

Standard library only: it runs without site-packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # readers never see half a file


def main(state_dir: Path) -> int:
    spec = json.loads((state_dir / "spec.json").read_text())
    log = open(spec["log_path"], "ab")  # noqa: SIM115 - handed to the child for its lifetime
    started_at = now()
    try:
        child = subprocess.Popen(
            spec["argv"],
            env=spec["env"],
            cwd=spec["cwd"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        log.write(f"failed to start {spec['argv'][0]}: {exc}\n".encode())
        log.close()
        write_json(
            state_dir / "exit.json",
            {
                "exit_code": 128,
                "signal": None,
                "started_at": started_at,
                "finished_at": now(),
                "reason": "StartError",
                "message": str(exc),
            },
        )
        return 0

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    write_json(
        state_dir / "started.json",
        {"shim_pid": os.getpid(), "pid": child.pid, "pgid": child.pid, "started_at": started_at},
    )
    code = child.wait()
    log.close()
    sig = -code if code < 0 else None
    write_json(
        state_dir / "exit.json",
        {
            "exit_code": 128 + sig if sig else code,
            "signal": sig,
            "started_at": started_at,
            "finished_at": now(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
