"""The operator's CPU time and memory, read from the kernel while it works.

CPU-seconds come from the process's own accounting (user + system, plus any
children it waited for), so they count only the operator, whatever else the
shared machine runs. RSS is sampled twice a second for the per-step peak;
``VmHWM`` is the kernel's high-water mark over the process's whole life.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_peak_mb: float
    rss_end_mb: float
    hwm_mb: float


def _hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    return 0.0


class ProcessMeter:
    """Measure one window (a benchmark step) of one process."""

    def __init__(self, pid: int, *, interval: float = 0.5) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self._cpu0 = 0.0
        self._peak = 0
        self._task: asyncio.Task[None] | None = None

    def cpu(self) -> float:
        t = self.process.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def rss(self) -> int:
        return self.process.memory_info().rss

    async def __aenter__(self) -> ProcessMeter:
        self._cpu0 = self.cpu()
        self._peak = self.rss()
        self._task = asyncio.create_task(self._sample(), name="rss sampler")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        while True:
            self._peak = max(self._peak, self.rss())
            await asyncio.sleep(self.interval)

    def usage(self) -> Usage:
        """Usage since the window opened (call before leaving it)."""
        rss = self.rss()
        self._peak = max(self._peak, rss)
        return Usage(
            cpu_seconds=round(self.cpu() - self._cpu0, 3),
            rss_peak_mb=round(self._peak / MB, 1),
            rss_end_mb=round(rss / MB, 1),
            hwm_mb=round(_hwm_mb(self.process.pid), 1),
        )


async def _wait_below(
    cpu: Callable[[], float], *, below: float, window: float, timeout: float
) -> tuple[float, bool, float]:
    """Until ``cpu()`` (CPU-seconds so far) grows by less than ``below`` cores over ``window``.

    Returns (seconds waited, settled, cores used in the last window); gives up after
    ``timeout`` seconds, unsettled.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        cpu0 = cpu()
        await asyncio.sleep(window)
        cores = (cpu() - cpu0) / window
        if cores < below:
            return round(loop.time() - began, 1), True, cores
        if loop.time() - began > timeout:
            return round(loop.time() - began, 1), False, cores


async def wait_idle(
    meter: ProcessMeter, *, below: float = 0.15, window: float = 3.0, timeout: float = 120.0
) -> tuple[float, bool, float]:
    """Until the process uses less than ``below`` of a core over ``window`` seconds.

    Returns (seconds waited, settled, cores used in the last window). An
    operator that never settles (one that re-reads every EditJob on a timer)
    is reported as such, not waited for forever.
    """
    return await _wait_below(meter.cpu, below=below, window=window, timeout=timeout)


async def wait_machine_idle(
    *, below: float = 0.4, window: float = 3.0, timeout: float = 60.0
) -> tuple[float, float]:
    """Until the whole machine is busy less than ``below`` cores over ``window`` seconds.

    A platform just started still syncs (the controller manager's informers, the
    kubelet's node status): events sent then would time the start-up, not the load.
    Returns (seconds waited, busy cores in the last window).
    """
    waited, _, cores = await _wait_below(_busy_seconds, below=below, window=window, timeout=timeout)
    return waited, round(cores, 2)


def _busy_seconds() -> float:
    """CPU-seconds the whole machine spent not idle, since boot (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


class CpuBreakdown:
    """Who used the CPU during one window: each named process, and the machine as a whole.

    On a shared two-core machine this says whether a slow step was the operator's
    doing, the platform's (apiserver, etcd, the process kubelet), or everyone
    else's: ``other`` is the machine's busy time minus the named processes
    (worker Pods, this client's children, other users).
    """

    #: The whole machine's figures in :meth:`stop`'s answer, beside the named processes.
    MACHINE_KEYS = ("machine_busy", "machine_busy_cores", "wall_seconds")

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self.processes[name] = psutil.Process(pid)
        self._start: dict[str, float] = {}
        self._busy0 = 0.0
        self._wall0 = 0.0

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            t = process.cpu_times()
        except psutil.Error:
            return 0.0
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> None:
        self._start = {name: self._cpu(p) for name, p in self.processes.items()}
        self._busy0 = _busy_seconds()
        self._wall0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        used = {name: self._cpu(p) - self._start[name] for name, p in self.processes.items()}
        busy = _busy_seconds() - self._busy0
        wall = time.monotonic() - self._wall0
        return {
            **{name: round(v, 2) for name, v in used.items()},
            "other": round(max(0.0, busy - sum(used.values())), 2),
            "machine_busy": round(busy, 2),
            "machine_busy_cores": round(busy / wall, 2) if wall > 0 else 0.0,
            "wall_seconds": round(wall, 2),
        }
