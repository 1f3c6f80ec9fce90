"""Start, signal and observe container processes through their shims.

All state lives on disk under the pod's directory, one folder per container
(``spec.json``, ``started.json``, ``exit.json``), which is what makes an agent
restart harmless: a new agent reads the same files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from editflow.devstack.kubelet.podspec import ContainerPlan


@dataclass(frozen=True)
class Exited:
    exit_code: int
    started_at: str
    finished_at: str
    signal: int | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Running:
    started_at: str
    pid: int


@dataclass(frozen=True)
class Lost:
    """The shim is gone without an exit record (machine reboot, kill -9 of the shim)."""


def state_dir(pod_dir: Path, container: str) -> Path:
    return pod_dir / "containers" / container


def start(plan: ContainerPlan, pod_dir: Path) -> subprocess.Popen[bytes]:
    """Launch the shim for ``plan``; the caller reaps the returned process."""
    sdir = state_dir(pod_dir, plan.name)
    sdir.mkdir(parents=True, exist_ok=True)
    for stale in ("started.json", "exit.json"):
        (sdir / stale).unlink(missing_ok=True)
    plan.log_path.parent.mkdir(parents=True, exist_ok=True)
    plan.termination_path.write_text("")  # each container instance starts with an empty message
    (sdir / "spec.json").write_text(
        json.dumps(
            {
                "argv": plan.argv,
                "env": plan.env,
                "cwd": str(plan.cwd),
                "log_path": str(plan.log_path),
            }
        )
    )
    with (sdir / "shim.log").open("ab") as shim_log:
        return subprocess.Popen(
            [sys.executable, "-m", "editflow.devstack.kubelet.shim", str(sdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=shim_log,
            start_new_session=True,  # survives the agent: adoption after a restart
        )


def _shim_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # A recycled pid is not our shim; a zombie is already dead.
    return b"kubelet.shim" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def observe(pod_dir: Path, container: str) -> Exited | Running | Lost | None:
    """The container's state; ``None`` while the shim has not started the process yet."""
    sdir = state_dir(pod_dir, container)
    exit_file = sdir / "exit.json"
    if exit_file.exists():
        data = json.loads(exit_file.read_text())
        return Exited(**data)
    started = sdir / "started.json"
    if started.exists():
        data = json.loads(started.read_text())
        if _shim_alive(data["shim_pid"]):
            return Running(started_at=data["started_at"], pid=data["pid"])
        if exit_file.exists():  # finished between the two reads
            return Exited(**json.loads(exit_file.read_text()))
        return Lost()
    return None


def send(pod_dir: Path, container: str, sig: signal.Signals) -> bool:
    """SIGTERM goes through the shim (it forwards); SIGKILL hits the process group directly."""
    started = state_dir(pod_dir, container) / "started.json"
    if not started.exists():
        return False
    data = json.loads(started.read_text())
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sig == signal.SIGKILL:
            os.killpg(data["pgid"], signal.SIGKILL)
        elif _shim_alive(data["shim_pid"]):
            os.kill(data["shim_pid"], sig)
        return True
    return False


def sweep(root: Path) -> int:
    """Kill every container process and shim under ``root`` (local-mode teardown)."""
    killed = 0
    for started in root.glob("pods/*/containers/*/started.json"):
        with contextlib.suppress(Exception):
            data = json.loads(started.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(data["pgid"], signal.SIGKILL)
                killed += 1
            if _shim_alive(data["shim_pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(data["shim_pid"], signal.SIGKILL)
    return killed


def termination_message(plan_path: Path, log_path: Path, policy: str, failed: bool) -> str:
    """What the real kubelet reports: the file (<= 4 KiB), or the log tail when asked to."""
    message = ""
    with contextlib.suppress(FileNotFoundError):
        message = plan_path.read_bytes()[:4096].decode(errors="replace")
    if not message and policy == "FallbackToLogsOnError" and failed:
        with contextlib.suppress(FileNotFoundError):
            lines = log_path.read_bytes().decode(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
    return message
