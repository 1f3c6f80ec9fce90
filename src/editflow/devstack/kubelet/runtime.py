"""Start, signal and observe container processes through their shims.

All state lives on disk under the pod's directory, one folder per container
(``spec.json``, ``started.json``, ``exit.json``), which is what makes an agent
restart harmless: a new agent reads the same files.

A container that runs in its image is ``runc run`` under the same shim: each
start mounts a fresh overlay (the image's layers below, an empty upper
directory of this instance above) at ``bundle/rootfs`` and writes the bundle's
``config.json``; ``runc.json`` says which runc container it is, so a SIGKILL
goes through ``runc kill`` (killing runc itself would orphan the container).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from editflow.devstack.kubelet.podspec import ContainerPlan, RuncPlan

#: The container shim (:mod:`.shim`), started by path.
SHIM = Path(__file__).resolve().parent / "shim.py"


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


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order to unmount them)."""
    prefix = str(root.resolve())
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    found = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    return sorted(set(found), key=len, reverse=True)


def unmount_all(root: Path) -> bool:
    """Unmount everything under ``root``; True when nothing is left mounted there."""
    for point in mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True)
    return not mounts_under(root)


def _runc(plan: RuncPlan, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [plan.runc, "--root", str(plan.state_root), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def prepare_bundle(plan: RuncPlan, sdir: Path) -> None:
    """A fresh root for a new container instance: overlay of the layers + an empty upper."""
    plan.state_root.mkdir(parents=True, exist_ok=True)
    _runc(plan, "delete", "--force", plan.container_id)  # a previous instance's leftovers
    rootfs = plan.bundle / "rootfs"
    if rootfs.exists() and _mounted(rootfs):
        subprocess.run(["umount", "-l", str(rootfs)], capture_output=True)
    overlay = sdir / "overlay"
    shutil.rmtree(overlay, ignore_errors=True)
    upper, work = overlay / "upper", overlay / "work"
    for path in (upper, work, rootfs):
        path.mkdir(parents=True, exist_ok=True)
    lowers = [str(p) for p in reversed(plan.layers)]
    if not lowers:  # an image with no layers at all (FROM scratch, nothing added)
        empty = overlay / "empty"
        empty.mkdir()
        lowers = [str(empty)]
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise OSError(f"mounting the container's root failed: {result.stderr.strip()}")
    (plan.bundle / "config.json").write_text(json.dumps(plan.spec, indent=1))
    (sdir / "runc.json").write_text(
        json.dumps({"runc": plan.runc, "root": str(plan.state_root), "id": plan.container_id})
    )


def _runc_of(sdir: Path) -> RuncPlan | None:
    try:
        data = json.loads((sdir / "runc.json").read_text())
    except FileNotFoundError:
        return None
    return RuncPlan(data["runc"], Path(data["root"]), data["id"], sdir / "bundle", (), {})


def remove(pod_dir: Path, container: str) -> None:
    """Delete the runc container and unmount its root (the Pod is gone)."""
    sdir = state_dir(pod_dir, container)
    plan = _runc_of(sdir)
    if plan is not None:
        with contextlib.suppress(Exception):
            _runc(plan, "delete", "--force", plan.container_id)
    unmount_all(sdir)


def exec_in(plan: ContainerPlan, command: list[str], timeout: float) -> tuple[int, str]:
    """Run ``command`` in the running container (exec probes): exit code and output."""
    if plan.runc is None:
        result = subprocess.run(
            command, env=plan.env, cwd=plan.cwd, capture_output=True, text=True, timeout=timeout
        )
    else:
        result = subprocess.run(
            [
                plan.runc.runc,
                "--root",
                str(plan.runc.state_root),
                "exec",
                plan.runc.container_id,
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return result.returncode, (result.stdout + result.stderr)[-1024:]


def start(plan: ContainerPlan, pod_dir: Path) -> subprocess.Popen[bytes]:
    """Launch the shim for ``plan``; the caller reaps the returned process."""
    sdir = state_dir(pod_dir, plan.name)
    sdir.mkdir(parents=True, exist_ok=True)
    for stale in ("started.json", "exit.json"):
        (sdir / stale).unlink(missing_ok=True)
    if plan.runc is not None:
        prepare_bundle(plan.runc, sdir)
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
            # The shim needs only the standard library: run by path, without site-packages
            # (-S -E) and without its own directory, whose modules have stdlib-like names,
            # on sys.path (-P), it starts in a quarter of the CPU of ``-m editflow...``.
            [sys.executable, "-S", "-E", "-P", str(SHIM), str(sdir)],
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
    ours = b"kubelet/shim.py" in cmdline or b"kubelet.shim" in cmdline  # (older agents: -m)
    return ours and stat.rsplit(")", 1)[1].split()[0] != "Z"


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
    """SIGTERM goes through the shim (it forwards); SIGKILL hits the process group directly,
    or for a runc container goes through ``runc kill`` (runc then exits with 137)."""
    started = state_dir(pod_dir, container) / "started.json"
    if not started.exists():
        return False
    data = json.loads(started.read_text())
    runc = _runc_of(state_dir(pod_dir, container))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if sig == signal.SIGKILL and runc is not None:
            if _runc(runc, "kill", runc.container_id, "KILL").returncode != 0:
                os.killpg(data["pgid"], signal.SIGKILL)  # no container left: stop runc
        elif sig == signal.SIGKILL:
            os.killpg(data["pgid"], signal.SIGKILL)
        elif _shim_alive(data["shim_pid"]):
            os.kill(data["shim_pid"], sig)
        return True
    return False


def sweep(root: Path) -> int:
    """Kill every container, shim and network bridge under ``root`` and unmount what the
    kubelet mounted there (local-mode teardown): nothing survives a stopped stack."""
    from editflow.devstack.kubelet import netbridge

    killed = 0
    for sdir in root.glob("pods/*/containers/*"):
        runc = _runc_of(sdir)
        if runc is not None:
            with contextlib.suppress(Exception):
                _runc(runc, "kill", runc.container_id, "KILL")
    for started in root.glob("pods/*/containers/*/started.json"):
        with contextlib.suppress(Exception):
            data = json.loads(started.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(data["pgid"], signal.SIGKILL)
                killed += 1
            if _shim_alive(data["shim_pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(data["shim_pid"], signal.SIGKILL)
    for sdir in root.glob("pods/*/containers/*"):
        with contextlib.suppress(Exception):
            remove(sdir.parent.parent, sdir.name)
    for pod_dir in root.glob("pods/*"):
        with contextlib.suppress(Exception):
            netbridge.stop_bridge(pod_dir)
    unmount_all(root)
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
