"""Every test module leaves the shared platform as it found it (issue 19).

All tests share one local platform (``tests/conftest.py``, session scope) and two CPU cores.
A warm worker, an operator or a running Pod that outlives the module that started it keeps
competing for those cores (and for the node's GPUs) with every later test: the warm fault run
took 4x its time alone inside the full suite. So at each module boundary, after the module's
fixtures are finalised, this plugin looks for what must not survive a module:

* operator processes (``editflow operator run``) other than the session's own operator,
* worker processes (``editflow worker serve``, the test workers, kubelet container shims),
* Pods of the session's platform that have not finished (a Pod holding a GPU is one of them),
  and Jobs still active there (a warm pool is a set of active Jobs).

It waits a short grace for what is already shutting down, then fails the module's last test
with the list, so the leak is fixed where it starts. :func:`node_report` is also what the
fault suite prints when it times out: who was using the CPU, and which Pods were running.

The process scan reads ``/proc`` by hand: psutil is no declared dependency, and the three fields
needed (parent, command line, CPU ticks) are one line each.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from editflow.devstack.stack import LocalStack

#: How long a module's processes and Pods get to go after its fixtures were finalised.
GRACE_SECONDS = float(os.environ.get("EDITFLOW_TEST_HYGIENE_GRACE", "20"))
#: Pod phases that hold nothing.
FINISHED_PODS = {"Succeeded", "Failed"}


@dataclass
class SessionState:
    """What the session's fixtures own and may keep across modules."""

    stack: LocalStack | None = None
    #: Objects with a ``process`` (a ManagedProcess) that live for the whole session.
    owned: list[Any] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    #: The work directories of every LocalStack this session started: a container shim runs
    #: in a session of its own (ppid 1), and its command line names its stack's directory.
    workdirs: set[str] = field(default_factory=set)
    #: Leftovers already blamed on the module that left them: later modules neither wait
    #: for them nor fail for them (one leak, one failure, not a cascade).
    reported: set[str] = field(default_factory=set)

    def owned_pids(self) -> set[int]:
        pids = set()
        for holder in self.owned:
            process = getattr(holder, "process", None)
            pid = getattr(process, "pid", None)
            if pid:
                pids.add(pid)
        return pids


SESSION = SessionState()


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str
    ticks: int
    start_ticks: int


def _read_proc(pid: int) -> Proc | None:
    base = Path("/proc") / str(pid)
    try:
        stat = (base / "stat").read_text()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        cmdline=cmdline.strip(),
        ticks=int(fields[11]) + int(fields[12]),
        start_ticks=int(fields[19]),
    )


def processes() -> dict[int, Proc]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := _read_proc(int(entry.name))) is not None:
            out[proc.pid] = proc
    return out


def _descendants(procs: dict[int, Proc], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    seen, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def role(cmdline: str) -> str | None:
    """What a process is to this check: ``operator``, ``worker`` or ``None`` (a server)."""
    if "editflow.cli.main operator run" in cmdline or "editflow operator run" in cmdline:
        return "operator"
    if (
        "worker serve" in cmdline
        or "/test-workers/" in cmdline
        or "/kubelet/shim.py" in cmdline
        or "editflow.cli.main worker" in cmdline
    ):
        return "worker"
    return None


def session_processes(procs: dict[int, Proc] | None = None) -> list[Proc]:
    """This session's processes: our descendants, and detached ones (container shims) that
    belong to a platform this session started (never another pytest's, say a CI run)."""
    procs = procs if procs is not None else processes()
    ours = _descendants(procs, os.getpid())
    out = []
    for proc in procs.values():
        detached = proc.ppid == 1 and any(w in proc.cmdline for w in SESSION.workdirs)
        if proc.pid in ours or detached:
            out.append(proc)
    return out


def pytest_configure(config: pytest.Config) -> None:
    """Record every LocalStack's work directory as it starts (see SessionState.workdirs)."""
    from editflow.devstack.stack import LocalStack

    original = LocalStack.start

    def start(self: LocalStack) -> LocalStack:
        SESSION.workdirs.add(str(self.workdir))
        return original(self)

    LocalStack.start = start  # type: ignore[method-assign]


def leftover_processes() -> list[str]:
    owned = SESSION.owned_pids()
    owned_trees = set(owned)
    procs = processes()
    for pid in owned:
        owned_trees |= _descendants(procs, pid)
    out = []
    for proc in session_processes(procs):
        kind = role(proc.cmdline)
        if kind is None or proc.pid in owned_trees:
            continue
        out.append(f"{kind} pid {proc.pid}: {proc.cmdline[:160]}")
    return out


def running_pods(stack: LocalStack) -> list[str]:
    """Pods of ``stack`` that still hold a slot (and maybe a GPU), and active Jobs."""
    from editflow.devstack.kubeapi import KubeClient

    api = KubeClient(stack.kubeconfig, timeout=10)
    try:
        pods = api.get("/api/v1/pods")["items"]
        jobs = api.get("/apis/batch/v1/jobs")["items"]
    except Exception as exc:  # an apiserver restarting: report it, do not hide the rest
        return [f"(could not list Pods: {exc})"]
    finally:
        api.close()
    out = []
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase in FINISHED_PODS:
            continue
        meta = pod["metadata"]
        gpus = sum(
            int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
            for c in pod["spec"].get("containers", [])
        )
        held = f", {gpus} GPU" if gpus else ""
        out.append(f"Pod {meta['namespace']}/{meta['name']} {phase}{held}")
    for job in jobs:
        if (job.get("status") or {}).get("active"):
            meta = job["metadata"]
            out.append(f"Job {meta['namespace']}/{meta['name']} active")
    return out


def leftovers() -> list[str]:
    found = leftover_processes()
    if SESSION.stack is not None:
        found += running_pods(SESSION.stack)
    return found


def wait_for_no_leftovers(grace: float = GRACE_SECONDS, *, strict: bool = False) -> list[str]:
    """What is still there after ``grace`` seconds (empty when everything went), leaving out
    what an earlier module was already failed for unless ``strict``."""
    deadline = time.monotonic() + grace
    while True:
        found = [f for f in leftovers() if strict or f not in SESSION.reported]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def top_cpu(seconds: float = 1.0, limit: int = 12) -> list[tuple[float, int, str]]:
    """The processes that used the most CPU over ``seconds``: (percent of one core, pid, cmd)."""
    before = processes()
    time.sleep(seconds)
    after = processes()
    hertz = os.sysconf("SC_CLK_TCK")
    rows = []
    for pid, proc in after.items():
        prev = before.get(pid)
        used = proc.ticks - (prev.ticks if prev and prev.start_ticks == proc.start_ticks else 0)
        if used > 0:
            rows.append((round(100 * used / hertz / seconds, 1), pid, proc.cmdline[:140]))
    rows.sort(reverse=True)
    return rows[:limit]


def _label(cmdline: str) -> str:
    """A process's kind, not its instance: ``kube-apiserver``, ``editflow worker serve``, ...,
    so that the CPU of every short-lived worker adds up under one name."""
    words = cmdline.split()
    if not words:
        return "(kernel)"
    program = Path(words[0]).name
    if not program.startswith("python") or len(words) < 2:
        # A platform binary, with the platform it belongs to: the session's or a test's own.
        stack = re.search(r"/([^/\s]*stack[^/\s]*)/", cmdline)
        return f"{program} ({stack.group(1)})"[:60] if stack else program[:60]
    if words[1] == "-c":
        return "python -c"
    if words[1] == "-m":  # the module and its subcommand: python -m editflow.cli.main dev kubelet
        return " ".join(["python -m", *[w for w in words[2:5] if not w.startswith("-")]])[:60]
    script = Path(words[1]).name  # a script or console entry: python editflow worker serve
    subcommand = [w for w in words[2:4] if not w.startswith("-") and "/" not in w]
    return " ".join(["python", script, *subcommand])[:60]


class CpuSampler:
    """CPU seconds by kind of process over a run, sampled from ``/proc`` every ``every`` s:
    what competed with a fault run (issue 19), short-lived workers included."""

    def __init__(self, every: float = 2.0) -> None:
        self.every = every
        self.used: dict[str, float] = {}
        self._last: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> CpuSampler:
        self._sample(baseline=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self, *, baseline: bool = False) -> None:
        """Add each process's CPU since the last look; a process first seen now counts from its
        start (it began during the run), except in the ``baseline`` look."""
        hertz = os.sysconf("SC_CLK_TCK")
        for proc in processes().values():
            key = (proc.pid, proc.start_ticks)
            before = self._last.get(key, proc.ticks if baseline else 0)
            if proc.ticks > before:
                label = _label(proc.cmdline)
                self.used[label] = self.used.get(label, 0.0) + (proc.ticks - before) / hertz
            self._last[key] = proc.ticks

    def table(self, limit: int = 12) -> str:
        wall = time.monotonic() - self.started
        rows = sorted(self.used.items(), key=lambda kv: -kv[1])[:limit]
        lines = [f"CPU seconds by process over {wall:.0f} s (all: {sum(self.used.values()):.0f}):"]
        lines += [f"  {seconds:8.1f}  {label}" for label, seconds in rows]
        return "\n".join(lines)


def node_report(stack: LocalStack | None = None) -> str:
    """What was running on this machine, for a failure's message."""
    lines = ["processes by CPU over 1 s (% of one core):"]
    lines += [f"  {cpu:6.1f}  {pid:>7}  {cmd}" for cpu, pid, cmd in top_cpu()]
    for name, target in (
        ("this test's platform", stack),
        ("the session's platform", SESSION.stack),
    ):
        if target is not None:
            pods = running_pods(target)
            lines.append(f"unfinished Pods and active Jobs on {name}: {len(pods)}")
            lines += [f"  {p}" for p in pods[:30]]
    return "\n".join(lines)


def assert_idle_node() -> None:
    """Fail unless nothing of an earlier test is still running (the fault suite's start)."""
    found = wait_for_no_leftovers(strict=True)
    assert not found, "the node is not idle at the start:\n  " + "\n  ".join(found)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    # Module-scoped fixtures are finalised when the next test is in another module.
    if nextitem is not None and nextitem.module is item.module:
        return result
    found = wait_for_no_leftovers()
    if found:
        SESSION.reported.update(found)
        raise AssertionError(
            f"{item.module.__name__} left these running after its fixtures were finalised "
            f"(a test that starts something stops it):\n  " + "\n  ".join(found)
        )
    return result
