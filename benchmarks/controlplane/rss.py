"""The operator's memory with N finished EditJobs present, and nothing else (``--rss-only``).

Issue 11's memory goal (RSS ≤ 300 MB with 10,000 finished EditJobs) does not
need load: what the operator costs at rest is its caches, kopf's own state and
what its first list left behind. One platform serves every level: the levels
run smallest first and each tops the finished EditJobs up to its count, then
starts a fresh operator, waits until its caches say they hold them and it has
gone idle, and reads ``/proc/<pid>/status`` for a few seconds (``VmRSS``, its
anonymous and file-backed parts, and ``VmHWM``, the high-water mark of the
process's whole life, i.e. of the first list).

    .venv/bin/python benchmarks/control_plane.py --rss-only                     # 0, 1,000, 10,000
    .venv/bin/python benchmarks/control_plane.py --rss-only --background 10000,70000
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import httpx

from controlplane.background import create_finished
from controlplane.localplatform import (
    NAMESPACE,
    BenchPlatform,
    operator_env,
    start_operator,
    start_platform,
)
from controlplane.procstats import ProcessMeter, wait_idle
from editflow.devstack import localmode

MB = 1024 * 1024

#: ``/proc/<pid>/status`` fields reported, in kB there, in MB here.
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def proc_status(pid: int) -> dict[str, float]:
    """The memory lines of ``/proc/<pid>/status``, in MB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                out[name] = round(int(value.split()[0]) * 1024 / MB, 1)
    return out


def health(operator: localmode.OperatorProcess) -> dict[str, Any]:
    """The operator's liveness answer: kopf's probes, ``caches`` among them (sizes, synced)."""
    url = f"http://127.0.0.1:{operator.health_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read() or b"{}")
    return data


async def wait_caches(
    operator: localmode.OperatorProcess, editjobs: int, *, timeout: float
) -> dict[str, Any]:
    """Until the operator's caches are synced and hold ``editjobs`` EditJobs (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    caches: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            caches = (await asyncio.to_thread(health, operator)).get("caches") or {}
        except (OSError, ValueError):
            caches = {}
        if caches.get("synced") and caches.get("editjobs", -1) >= editjobs:
            return caches
        await asyncio.sleep(0.5)
    return caches


async def measure_operator(
    platform: BenchPlatform, editjobs: int, *, settle_seconds: float, hold_seconds: float
) -> dict[str, Any]:
    """A fresh operator over what the platform holds now: startup, then RSS at rest."""
    began = time.monotonic()
    operator = await asyncio.to_thread(start_operator, platform, operator_env(platform))
    try:
        assert operator.process is not None and operator.process.pid is not None
        pid = operator.process.pid
        meter = ProcessMeter(pid)
        caches = await wait_caches(operator, editjobs, timeout=settle_seconds)
        synced_after = round(time.monotonic() - began, 1)
        waited, settled, idle = await wait_idle(meter, timeout=settle_seconds)
        samples: list[dict[str, float]] = []
        hold_until = time.monotonic() + hold_seconds
        while True:
            samples.append(proc_status(pid))
            if time.monotonic() >= hold_until:
                break
            await asyncio.sleep(0.5)
        rss = [s["VmRSS"] for s in samples]
        return {
            "editjobs": editjobs,
            "caches": caches,
            "synced_after_seconds": synced_after,
            "idle_after_seconds": round(time.monotonic() - began - hold_seconds, 1),
            "settled": settled,
            "idle_cpu_cores": round(idle, 3),
            "startup_cpu_seconds": round(meter.cpu(), 2),
            "rss_mb": samples[-1]["VmRSS"],
            "rss_min_mb": min(rss),
            "rss_max_mb": max(rss),
            "rss_anon_mb": samples[-1].get("RssAnon"),
            "rss_file_mb": samples[-1].get("RssFile"),
            "hwm_mb": samples[-1].get("VmHWM"),
            "hold_seconds": hold_seconds,
            "waited_idle_seconds": waited,
            "operator_log_tail": operator.log_tail(3),
        }
    finally:
        await asyncio.to_thread(operator.stop)


async def run_rss(
    backgrounds: tuple[int, ...],
    *,
    settle_seconds: float = 120.0,
    hold_seconds: float = 10.0,
    on_progress: Any = None,
) -> list[dict[str, Any]]:
    """One platform; per level, smallest first: top up the finished EditJobs, measure."""
    say = on_progress or (lambda _msg: None)
    say("starting the local platform")
    platform = await asyncio.to_thread(start_platform)
    api = platform.apiserver
    http = httpx.AsyncClient(
        base_url=api.url,
        verify=api.ssl_admin,
        timeout=30,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )
    levels: list[dict[str, Any]] = []
    present = 0
    try:
        for count in sorted(set(backgrounds)):
            began = time.monotonic()
            if count > present:
                say(f"creating {count - present:,} finished EditJobs (to {count:,})")
                await create_finished(
                    http, NAMESPACE, count - present,
                    bucket=platform.stack.s3_settings().bucket, first=present,
                )  # fmt: skip
                present = count
            created = round(time.monotonic() - began, 1)
            say(f"measuring the operator with {count:,} finished EditJobs")
            level = await measure_operator(
                platform, count, settle_seconds=settle_seconds, hold_seconds=hold_seconds
            )
            level["created_seconds"] = created
            levels.append(level)
    finally:
        await http.aclose()
        await asyncio.to_thread(platform.api.close)
        await asyncio.to_thread(platform.stack.stop)
    return levels
