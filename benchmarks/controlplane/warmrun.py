"""The control plane in warm mode (the default mode): one level of ``control_plane.py --mode warm``.

One fresh platform per level (``background`` finished EditJobs present), and on it, one
after the other, never at once on 2 cores:

1. **the operator**, ``editflow operator run`` with ``worker_mode=warm`` and per-attempt
   STS credentials (``attempt_credentials``, the default, as in production); its warm
   workers are :mod:`controlplane.stub_warm_worker` Pods (the real worker's loop,
   unsealing and S3 write, no model). A short warm-up at 5/s brings the pool up before
   anything is timed. Stages, on this process's monotonic clock: event → EditJob (watch),
   event → handed out (the work message seen on its subject), worker result → completion
   event (both seen on NATS). With ``count_writes`` the operator talks to the apiserver
   through the request-counting proxy and each step reports its writes per successful
   edit by kind (:mod:`controlplane.writes`); the proxy runs in this process, so the
   level that counts is not the level whose latencies are the goal's;
2. **the warm floor** (:mod:`controlplane.warmfloor`), after the operator stopped, on the
   same rates: the least the platform costs per event in warm mode;
3. with ``with_keda`` (the first level of a run, unless ``--no-keda``), **the KEDA peer**
   (:mod:`controlplane.warmkeda`), after the floor: a ScaledObject over warm consumers on
   the same approvals, from zero and at the same rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from controlplane import warmkeda
from controlplane.background import create_finished
from controlplane.floor import admit_steady
from controlplane.load import PublishReport, publish_steady
from controlplane.localplatform import (
    NAMESPACE,
    BenchPlatform,
    operator_env,
    platform_pids,
    start_operator,
    start_platform,
)
from controlplane.procstats import CpuBreakdown, ProcessMeter, wait_idle, wait_machine_idle
from controlplane.stats import deltas, summarize
from controlplane.timeline import Timeline, wait_for_stage
from controlplane.warmfloor import WarmFloorDriver
from controlplane.warmwatch import subscribe_warm_stages
from controlplane.watch import ClusterWatches, subscribe_completions
from controlplane.writes import per_edit
from editflow.core.settings import NatsSettings, OperatorSettings, Settings
from editflow.devstack.countingproxy import CountingProxy
from editflow.events.sdk import OAClient

#: The operator's warm-mode settings: a pool big enough that 50/s never waits for a worker
#: (each stub answers in milliseconds), and workers that outlive the level.
WARM_OPERATOR = {
    "worker_mode": "warm",
    "max_warm_workers": "6",
    "warm_idle_seconds": "1800",
}
WARM_ENV = {f"EDITFLOW_OPERATOR__{k.upper()}": v for k, v in WARM_OPERATOR.items()}
WARMUP_RATE = 5.0
WARMUP_SECONDS = 4.0

Say = Callable[[str], None]


def warm_stages(timeline: Timeline, ids: tuple[str, ...]) -> dict[str, Any]:
    """p50/p99/max of warm mode's three stages, and what never reached each stage."""
    published = {e: timeline.published[e] for e in ids}
    results = {e: timeline.worker_result[e] for e in ids if e in timeline.worker_result}
    stages = {"editjob": timeline.editjob, "handed": timeline.handed}
    stages |= {"result": timeline.worker_result, "completion": timeline.completion}
    return {
        "event_to_editjob": summarize(deltas(published, timeline.editjob)).as_dict(),
        "event_to_handed_out": summarize(deltas(published, timeline.handed)).as_dict(),
        "result_to_completion": summarize(deltas(results, timeline.completion)).as_dict(),
        "lost": {name: sum(1 for e in ids if e not in seen) for name, seen in stages.items()},
        "completion_status": dict(
            Counter(timeline.completion_status.get(e, "?") for e in ids if e in timeline.completion)
        ),
    }


def from_zero(timeline: Timeline, event_id: str) -> float | None:
    """Seconds from the first event to its hand-out, with no worker up yet."""
    handed = timeline.handed.get(event_id)
    return None if handed is None else round(handed - timeline.published[event_id], 4)


async def drain(timeline: Timeline, ids: tuple[str, ...], timeout: float) -> float:
    """Until every event's completion arrived, or ``timeout``; returns seconds waited."""
    return await wait_for_stage(timeline.completion, ids, timeout)


def cpu_per_event(by_process: dict[str, float], events: int) -> dict[str, Any]:
    """A step's CPU split by process, in ms per event, with the machine's busy cores.

    Why per process: at the goal rate the two cores are the limit, so a stage's latency
    follows the whole machine's CPU per event, of which the operator is one part. ``other``
    is the rest of the machine: in the operator's phase mostly its warm worker Pods.
    """
    per = max(1, events)
    named = {
        name: round(1000 * seconds / per, 1)
        for name, seconds in by_process.items()
        if name not in CpuBreakdown.MACHINE_KEYS
    }
    return {
        "ms_per_event": named,
        "machine_ms_per_event": round(1000 * by_process["machine_busy"] / per, 1),
        "machine_busy_cores": by_process["machine_busy_cores"],
        "wall_seconds": by_process["wall_seconds"],
    }


def http_client(platform: BenchPlatform) -> httpx.AsyncClient:
    api = platform.apiserver
    return httpx.AsyncClient(
        base_url=api.url,
        verify=api.ssl_admin,
        timeout=30,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


def step_seconds(plan: Any, rate: float) -> float:
    return plan.goal_seconds if rate == plan.goal_rate else plan.step_seconds


def judged(rate: float, published: PublishReport, stages: dict[str, Any]) -> bool:
    """Sustained: nothing lost or failed, and the publisher held the rate."""
    lost = sum(stages["lost"].values())
    ok = set(stages["completion_status"]) <= {"success"}
    return lost == 0 and ok and published.errors == 0 and published.achieved_rate >= 0.95 * rate


@contextlib.contextmanager
def maybe_proxy(platform: BenchPlatform, enabled: bool) -> Iterator[CountingProxy | None]:
    if not enabled:
        yield None
        return
    # A watch the operator closes leaves the proxy writing to a closed socket; aiohttp logs
    # each with a traceback, which would bury the benchmark's own output.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    with CountingProxy(platform.apiserver.url, platform.apiserver.ssl_admin) as proxy:
        yield proxy


async def run_warm_level(
    background: int, plan: Any, *, count_writes: bool, say: Say, with_keda: bool = False
) -> dict[str, Any]:
    """The phases (operator, floor, KEDA) on one fresh platform; see the module docs."""
    level: dict[str, Any] = {"background": background, "count_writes": count_writes}
    say(f"warm level, {background:,} finished EditJobs: starting the platform")
    platform = await asyncio.to_thread(start_platform)
    http = http_client(platform)
    try:
        began = time.monotonic()
        if background:
            say(f"creating {background:,} finished EditJobs")
            await create_finished(
                http, NAMESPACE, background, bucket=platform.stack.s3_settings().bucket
            )
        level["background_seconds"] = round(time.monotonic() - began, 1)
        with maybe_proxy(platform, count_writes) as proxy:
            level["operator"] = await operator_phase(platform, http, plan, background, proxy, say)
        say("warm floor: same rates, no operator")
        level["floor"] = await floor_phase(platform, http, plan, background, say)
        if with_keda:
            try:
                level["keda"] = await warmkeda.keda_phase(platform, plan, say)
            except Exception as exc:  # the other phases' figures stand; say what broke
                say(f"KEDA phase failed: {exc!r}")
                level["keda"] = {"error": repr(exc)}
    finally:
        await http.aclose()
        await asyncio.to_thread(platform.api.close)
        if plan.keep_logs is not None:  # before the stack removes its workdir
            keep_logs(platform, plan.keep_logs / f"warm-{background}")
        await asyncio.to_thread(platform.stack.stop)
    return level


def keep_logs(platform: BenchPlatform, keep: Path) -> None:
    """The platform's logs and the operator's, copied before teardown."""
    workdir = Path(platform.stack.workdir)
    shutil.copytree(workdir / "logs", keep, dirs_exist_ok=True)
    if (workdir / "operator.log").exists():
        shutil.copy2(workdir / "operator.log", keep / "operator.log")


async def operator_phase(
    platform: BenchPlatform,
    http: httpx.AsyncClient,
    plan: Any,
    background: int,
    proxy: CountingProxy | None,
    say: Say,
) -> dict[str, Any]:
    env = operator_env(platform, WARM_ENV)
    if proxy is not None:
        kubeconfig = proxy.write_kubeconfig(Path(platform.stack.workdir) / "proxy.kubeconfig")
        env["KUBECONFIG"] = str(kubeconfig)
    say("starting the operator (warm mode)")
    operator = await asyncio.to_thread(start_operator, platform, env)
    phase: dict[str, Any] = {"settings": WARM_OPERATOR, "steps": []}
    try:
        assert operator.process is not None and operator.process.pid is not None
        meter = ProcessMeter(operator.process.pid)
        waited, settled, idle = await wait_idle(meter, timeout=plan.settle_seconds)
        phase["startup"] = {"seconds": waited, "settled": settled, "idle_cpu_cores": idle}
        settings = Settings(nats=NatsSettings(url=platform.stack.nats_url))
        client = await OAClient.connect(settings, source="/bench/oa")
        timeline = Timeline()
        watches = ClusterWatches(http, timeline, NAMESPACE)
        await watches.start()
        prefix = client.settings.events.completion_subject_prefix
        subs = [await subscribe_completions(client.nc, prefix, timeline)]
        subs += await subscribe_warm_stages(client.nc, NAMESPACE, timeline)
        began = time.monotonic()
        try:
            say(f"warm-up: {WARMUP_RATE:g}/s for {WARMUP_SECONDS:g} s (the pool comes up)")
            warm = await publish_steady(
                client, timeline, rate=WARMUP_RATE, duration=WARMUP_SECONDS, label="warmup"
            )
            phase["warmup"] = {
                "drain_seconds": await drain(timeline, warm.event_ids, 90.0),
                # The pool starts at zero: its first event is the from-zero hand-out.
                "from_zero_to_handed_out": from_zero(timeline, warm.event_ids[0]),
                **warm_stages(timeline, warm.event_ids),
            }
            await wait_idle(meter, timeout=15)
            for rate in plan.rates:
                say(f"operator: {rate:g}/s for {step_seconds(plan, rate):g} s")
                pids = platform_pids(platform, operator=meter.process.pid)
                step = await operator_step(
                    client, timeline, meter, pids, proxy, plan, background, rate
                )
                phase["steps"].append(step)
                say(f"  lost {step['lost']}, sustained {step['sustained']}")
            if proxy is not None:  # every edit of the phase, each given time to finish
                await drain(timeline, tuple(timeline.published), plan.drain_seconds)
                await asyncio.sleep(2)
                done = Counter(timeline.completion_status.values())
                requests = [r for r in proxy.since(began) if not r.watch]
                phase["writes"] = per_edit(requests, done.get("success", 0))
        finally:
            for sub in subs:
                await sub.unsubscribe()
            await watches.stop()
            await client.close()
    finally:
        phase["log_tail"] = operator.log_tail(5)
        await asyncio.to_thread(operator.stop)
    return phase


async def operator_step(
    client: OAClient,
    timeline: Timeline,
    meter: ProcessMeter,
    pids: dict[str, int],
    proxy: CountingProxy | None,
    plan: Any,
    background: int,
    rate: float,
) -> dict[str, Any]:
    seconds = step_seconds(plan, rate)
    cpu = CpuBreakdown(pids)
    cpu.start()
    began = time.monotonic()
    published = await publish_steady(
        client, timeline, rate=rate, duration=seconds, label=f"w{background}-{rate:g}"
    )
    drained = await drain(timeline, published.event_ids, plan.drain_seconds)
    await asyncio.sleep(2)  # late writes of this step's edits (delivery records, Events)
    by_process = cpu.stop()
    split = cpu_per_event(by_process, published.events)
    stages = warm_stages(timeline, published.event_ids)
    step: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "publish": {k: v for k, v in asdict(published).items() if k != "event_ids"},
        **stages,
        "drain_seconds": drained,
        "sustained": judged(rate, published, stages),
        "operator_cpu_ms_per_event": split["ms_per_event"].get("operator", 0.0),
        "operator_rss_mb": round(meter.rss() / 2**20, 1),
        "cpu": split,
    }
    if proxy is not None:
        requests = [r for r in proxy.since(began) if not r.watch]
        step["writes"] = per_edit(requests, stages["completion_status"].get("success", 0))
    await wait_idle(meter, timeout=10)
    return step


async def floor_phase(
    platform: BenchPlatform, http: httpx.AsyncClient, plan: Any, background: int, say: Say
) -> dict[str, Any]:
    phase: dict[str, Any] = {"settle": await wait_machine_idle(timeout=20.0), "steps": []}
    settings = Settings(nats=NatsSettings(url=platform.stack.nats_url))
    client = await OAClient.connect(settings, source="/bench/floor")
    timeline = Timeline()
    watches = ClusterWatches(http, timeline, NAMESPACE)
    await watches.start()
    prefix = client.settings.events.completion_subject_prefix
    subs = [await subscribe_completions(client.nc, prefix, timeline)]
    subs += await subscribe_warm_stages(client.nc, NAMESPACE, timeline)
    s3 = platform.stack.s3_settings()
    driver = WarmFloorDriver(
        http, client.nc, timeline, floor_operator_settings(platform),
        namespace=NAMESPACE, bucket=s3.bucket, completion_prefix=prefix, s3=s3,
    )  # fmt: skip
    try:
        async with driver:
            for rate in plan.rates:
                say(f"warm floor: {rate:g}/s for {step_seconds(plan, rate):g} s")
                step = await floor_step(driver, platform_pids(platform), plan, background, rate)
                phase["steps"].append(step)
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await watches.stop()
        await client.close()
    phase["errors"] = driver.errors[-5:]
    return phase


def floor_operator_settings(platform: BenchPlatform) -> OperatorSettings:
    """The operator's settings from its environment (what the floor's EditJobs are built with),
    read as ``editflow operator run`` reads them."""
    env = operator_env(platform, WARM_ENV)
    saved = dict(os.environ)
    try:
        os.environ.update({k: str(v) for k, v in env.items() if k.startswith("EDITFLOW_")})
        return Settings().operator
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def floor_step(
    driver: WarmFloorDriver, pids: dict[str, int], plan: Any, background: int, rate: float
) -> dict[str, Any]:
    seconds = step_seconds(plan, rate)
    cpu = CpuBreakdown(pids)
    cpu.start()
    admitted = await admit_steady(
        driver, rate=rate, duration=seconds, label=f"wf{background}-{rate:g}"
    )
    drained = await drain(driver.timeline, admitted.event_ids, plan.drain_seconds)
    await asyncio.sleep(2)  # as the operator's step: its late writes are in the window
    by_process = cpu.stop()
    stages = warm_stages(driver.timeline, admitted.event_ids)
    step = {
        "rate": rate,
        "seconds": seconds,
        "publish": {k: v for k, v in asdict(admitted).items() if k != "event_ids"},
        **stages,
        "drain_seconds": drained,
        "sustained": judged(rate, admitted, stages),
        "cpu": cpu_per_event(by_process, admitted.events),
    }
    return step
