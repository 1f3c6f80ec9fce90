"""The control plane at production scale: editflow's operator under a steady stream of approvals.

On the local platform (``LocalStack``: etcd, kube-apiserver, kube-controller-
manager, the process kubelet, NATS JetStream, MinIO), with ``editflow
operator run`` as a process exactly as the end-to-end tests run it:

* approval events are published with the project's OA SDK at a steady rate;
* EditJobs and Jobs are watched through the apiserver, and completion events
  are subscribed to, from this process, all started before publishing;
* every stage is timed on this process's monotonic clock, from the SDK publish
  call to the watch event or message that shows it: event → EditJob created,
  event → first Job created, Job finished → completion event (p50/p99/max);
* the worker is a stub that finishes at once (``controlplane/stub_worker.py``,
  mapped to the stub image by the process kubelet), and the node has GPUs and
  Pod slots to spare and the namespace cap is out of the way, so what is
  timed is the control plane alone;
* rates step up (10, 25, 50, 75 /s by default); a step is *sustained* when
  every event reached its EditJob, Job and completion within the drain window
  after the last publish, nothing failed to publish, and the publisher held
  the rate; the ladder stops at the first step that is not (the goal rate
  still runs);
* each ladder runs on a fresh platform with 0, 1,000 and 10,000 finished
  EditJobs already present (``--background``, e.g. ``--background 70000``);
* the operator's CPU-seconds per event and its RSS come from the kernel;
* the peer, KEDA's ScaledJob with its NATS JetStream scaler, runs on its own
  consumer of the same approvals beside editflow (``--no-keda`` to skip).

    .venv/bin/python benchmarks/control_plane.py             # full run, < 20 min
    .venv/bin/python benchmarks/control_plane.py --quick     # small sizes, a few minutes
    .venv/bin/python benchmarks/control_plane.py --background 70000 --no-keda
    .venv/bin/python benchmarks/control_plane.py --rss-only  # memory at rest, 0/1,000/10,000

``--rss-only`` skips the load and the peer: one platform, the finished EditJobs
topped up level by level, a fresh operator's RSS at rest for each
(``controlplane/rss.py``); it writes ``control_plane-rss-<utc>.json``.

Prints tables and writes ``benchmarks/results/control_plane-<utc>.json``.

``--mode warm`` (the default, as the product's default mode) runs
``controlplane/warmrun.py`` instead: per level (0 and 10,000 finished EditJobs) the
operator in warm mode with stub warm workers (``controlplane/stub_warm_worker.py``:
the real worker's loop, unsealing and S3 write, no model), then the warm platform
floor (``controlplane/warmfloor.py``) on the same platform; event → EditJob, event →
handed out and worker result → completion (p50/p99/max), and at the first level the
operator's apiserver writes per successful edit by kind, through the counting proxy.
At the first level, after the floor, the KEDA peer runs on the same platform
(``controlplane/warmkeda.py``: a ScaledObject over warm consumers, from zero and at the
same rates; ``--no-keda`` to skip).
It writes ``control_plane-warm-<utc>.json``. ``--mode job`` is the run described above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform as host
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from controlplane import keda, report, warmreport, warmrun
from controlplane.background import create_finished
from controlplane.floor import FloorDriver, admit_steady
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
from controlplane.rss import run_rss
from controlplane.stats import deltas, ordered_deltas, summarize
from controlplane.timeline import Timeline
from controlplane.watch import ClusterWatches, subscribe_completions
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from editflow.core.settings import NatsSettings, Settings
from editflow.devstack.procs import wait_until
from editflow.events.sdk import OAClient

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@dataclass(frozen=True)
class Plan:
    backgrounds: tuple[int, ...]
    rates: tuple[float, ...]
    goal_rate: float
    goal_background: int
    goal_seconds: float
    step_seconds: float
    drain_seconds: float
    settle_seconds: float
    keda: bool
    keda_rate: float
    keda_seconds: float
    keda_polling: tuple[int, ...]
    out: Path
    keep_logs: Path | None
    rss_only: bool = False
    rss_hold_seconds: float = 10.0
    floor: bool = False
    mode: str = "warm"


def _numbers(text: str, kind: Callable[[str], Any]) -> tuple[Any, ...]:
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 10,25,50, got {text!r}") from None


def parse_plan(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode",
        choices=("warm", "job"),
        default="warm",
        help="warm (the default mode: a pool of warm workers, controlplane/warmrun.py) or "
        "job (one Job per attempt, with the KEDA peer and --platform-floor)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes to try the benchmark: 0 and 1,000 EditJobs, 10/s and "
        "50/s for 10 s, KEDA for 10 s",
    )
    parser.add_argument(
        "--background",
        type=lambda t: _numbers(t, int),
        help="finished EditJobs present, one fresh platform each "
        "(default 0,1000,10000; e.g. 70000)",
    )
    parser.add_argument(
        "--rates",
        type=lambda t: _numbers(t, float),
        help="offered rates, events/s (default 10,25,50,75)",
    )
    parser.add_argument("--goal-rate", type=float, default=50.0)
    parser.add_argument("--goal-background", type=int, default=10_000)
    parser.add_argument("--duration", type=float, help="seconds at the goal rate (default 60)")
    parser.add_argument(
        "--step-duration", type=float, help="seconds at each other rate (default 15)"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=15.0,
        help="seconds after the last publish for every event to complete",
    )
    parser.add_argument(
        "--no-keda",
        dest="keda",
        action="store_false",
        help="skip the KEDA peer (otherwise built on first use: ~8 min cold)",
    )
    parser.add_argument("--keda-rate", type=float, default=2.0)
    parser.add_argument("--keda-duration", type=float, help="seconds per trial (default 60)")
    parser.add_argument(
        "--keda-polling",
        type=lambda t: _numbers(t, int),
        default=(30, 1),
        help="pollingInterval values to try (default 30,1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for the JSON (default benchmarks/results)",
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="copy each platform's logs (operator, apiserver, kubelet, ...) here before teardown",
    )
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="only the operator's RSS at rest with each --background count of finished "
        "EditJobs (one platform, no load, no KEDA)",
    )
    parser.add_argument(
        "--rss-hold",
        type=float,
        default=10.0,
        help="with --rss-only: seconds RSS is sampled once the operator is idle",
    )
    parser.add_argument(
        "--platform-floor",
        dest="floor",
        action="store_true",
        help="no operator: this process asks the least any operator could (4 apiserver "
        "requests per event) on the same schedule; the platform's lower bound",
    )
    args = parser.parse_args(argv)  # fmt: skip
    quick, warm = args.quick, args.mode == "warm"
    if warm:  # each level runs the operator and the warm floor, so fewer levels and rates
        backgrounds = (0,) if quick else (0, 10_000)
        rates: tuple[float, ...] = (50.0,) if quick else (10.0, 50.0)
    else:
        backgrounds = (0, 1000) if quick else (0, 1000, 10_000)
        rates = (10.0, 50.0) if quick else (10.0, 25.0, 50.0, 75.0)
    plan = Plan(
        backgrounds=args.background or backgrounds,
        rates=args.rates or rates,
        goal_rate=args.goal_rate,
        goal_background=args.goal_background,
        goal_seconds=args.duration or (10.0 if quick else 60.0),
        step_seconds=args.step_duration or (5.0 if quick else 15.0),
        drain_seconds=args.drain,
        settle_seconds=20.0 if quick else 60.0,
        keda=args.keda,
        keda_rate=args.keda_rate,
        keda_seconds=args.keda_duration or (10.0 if quick else 60.0),
        keda_polling=args.keda_polling,
        out=args.out,
        keep_logs=args.keep_logs,
        rss_only=args.rss_only,
        rss_hold_seconds=args.rss_hold,
        floor=args.floor,
        mode=args.mode,
    )
    for name, values in (("--background", plan.backgrounds), ("--rates", plan.rates)):
        if not values or min(values) < 0 or (name == "--rates" and min(values) <= 0):
            parser.error(f"{name}: give positive numbers (background may be 0), got {values}")
    return plan


# -- the pieces of one run ---------------------------------------------------------------------
def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<44}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    )


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def http_client(platform: BenchPlatform) -> httpx.AsyncClient:
    api = platform.apiserver
    return httpx.AsyncClient(
        base_url=api.url,
        verify=api.ssl_admin,
        timeout=30,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def drain(
    timeline: Timeline, ids: tuple[str, ...], *, timeout: float, on_done: Callable[[int], None]
) -> float:
    """Until every event's completion arrived, or ``timeout``; returns seconds waited."""
    began = time.monotonic()
    while True:
        done = sum(1 for e in ids if e in timeline.completion)
        on_done(done)
        if done == len(ids) or time.monotonic() - began > timeout:
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(0.1)


def stage_summaries(timeline: Timeline, ids: tuple[str, ...]) -> dict[str, Any]:
    published = {e: timeline.published[e] for e in ids}
    finished = {e: timeline.job_finished[e] for e in ids if e in timeline.job_finished}
    ending = {e: timeline.job_ending[e] for e in ids if e in timeline.job_ending}
    return {
        "event_to_editjob": summarize(deltas(published, timeline.editjob)).as_dict(),
        "event_to_job": summarize(deltas(published, timeline.job)).as_dict(),
        "job_finished_to_completion": summarize(deltas(finished, timeline.completion)).as_dict(),
        # Diagnosis: from the first sign of the end (the Job controller's succeeded count, which
        # it writes before the Complete condition) to the completion, and between the two.
        "job_ending_to_completion": summarize(deltas(ending, timeline.completion)).as_dict(),
        "job_ending_to_finished": summarize(deltas(ending, timeline.job_finished)).as_dict(),
        "lost": timeline.missing(list(ids)),
        "completion_status": dict(
            Counter(timeline.completion_status.get(e, "?") for e in ids if e in timeline.completion)
        ),
    }


async def add_background(http: httpx.AsyncClient, platform: BenchPlatform, count: int) -> float:
    """``count`` finished EditJobs, with a progress bar; returns the seconds it took."""
    began = time.monotonic()
    if count:
        with progress() as bar:
            task = bar.add_task(f"creating {count:,} finished EditJobs", total=count)
            await create_finished(
                http, NAMESPACE, count,
                bucket=platform.stack.s3_settings().bucket,
                on_created=lambda n: bar.advance(task, n),
            )  # fmt: skip
    return round(time.monotonic() - began, 1)


@dataclass
class Session:
    """One operator on one platform, watched from this process."""

    platform: BenchPlatform
    http: httpx.AsyncClient
    operator_pid: int
    client: OAClient
    timeline: Timeline
    watches: ClusterWatches
    #: The processes whose CPU time each step reports (platform servers, operator, client).
    pids: dict[str, int]
    #: Cores the operator used with nothing to do (measured once it settled).
    idle_cores: float


@contextlib.asynccontextmanager
async def session(background: int, plan: Plan, level: dict[str, Any]) -> Any:
    """A fresh platform with ``background`` finished EditJobs, the operator, the watches."""
    with console.status("starting the local platform"):
        platform = await asyncio.to_thread(start_platform)
    http = http_client(platform)
    logs = platform.stack.workdir / "logs"
    try:
        level["background_seconds"] = await add_background(http, platform, background)
        with console.status("starting the operator"):
            operator = await asyncio.to_thread(start_operator, platform, operator_env(platform))
        try:
            assert operator.process is not None and operator.process.pid is not None
            meter = ProcessMeter(operator.process.pid)
            with console.status(f"waiting for the operator to settle ({background:,} EditJobs)"):
                waited, settled, idle = await wait_idle(meter, timeout=plan.settle_seconds)
            level["operator_startup"] = {
                "seconds": waited,
                "settled": settled,
                "cpu_seconds": round(meter.cpu(), 2),
                "idle_cpu_cores": round(idle, 3),
                "rss_mb": round(meter.rss() / 2**20, 1),
            }
            client = await OAClient.connect(
                Settings(nats=NatsSettings(url=platform.stack.nats_url)), source="/bench/oa"
            )
            try:
                timeline = Timeline()
                watches = ClusterWatches(http, timeline, NAMESPACE)
                await watches.start()
                sub = await subscribe_completions(
                    client.nc, client.settings.events.completion_subject_prefix, timeline
                )
                try:
                    pids = platform_pids(platform, operator=meter.process.pid)
                    yield Session(
                        platform, http, meter.process.pid, client, timeline, watches, pids, idle
                    )
                finally:
                    await sub.unsubscribe()
                    await watches.stop()
            finally:
                await client.close()
        finally:
            level["operator_log_tail"] = operator.log_tail(5)
            await asyncio.to_thread(operator.stop)
            if plan.keep_logs is not None:
                shutil.copy2(platform.stack.workdir / "operator.log", logs / "operator.log")
    finally:
        await http.aclose()
        await asyncio.to_thread(platform.api.close)
        if plan.keep_logs is not None:  # before the stack removes its workdir
            keep = plan.keep_logs / f"{level.get('name', 'level')}-{background}"
            shutil.copytree(logs, keep, dirs_exist_ok=True)
            console.print(f"logs kept in {keep}")
        await asyncio.to_thread(platform.stack.stop)


async def run_step(s: Session, plan: Plan, background: int, rate: float) -> dict[str, Any]:
    seconds = plan.goal_seconds if rate == plan.goal_rate else plan.step_seconds
    present = background + len(s.timeline.editjob)
    # Events of earlier steps still without a completion: a backlog this step inherits.
    backlog = sum(1 for e in s.timeline.published if e not in s.timeline.completion)
    load_start = loadavg()
    cpu = CpuBreakdown(s.pids)
    cpu.start()
    async with ProcessMeter(s.operator_pid) as meter:
        with progress() as bar:
            total = max(1, round(rate * seconds))
            sent = bar.add_task(f"{present:,} EditJobs, {rate:g}/s for {seconds:g} s", total=total)
            published: PublishReport = await publish_steady(
                s.client, s.timeline, rate=rate, duration=seconds, label=f"s{background}-{rate:g}",
                on_published=lambda n: bar.advance(sent, n),
            )  # fmt: skip
            done = bar.add_task("  completions", total=published.events)
            drained = await drain(
                s.timeline, published.event_ids, timeout=plan.drain_seconds,
                on_done=lambda n: bar.update(done, completed=n),
            )  # fmt: skip
        usage = meter.usage()
    cpu_by_process = cpu.stop()
    stages = stage_summaries(s.timeline, published.event_ids)
    lost = sum(stages["lost"].values())
    sustained = (
        lost == 0 and published.errors == 0 and published.achieved_rate >= 0.95 * rate
    ) and all(status == "success" for status in stages["completion_status"])
    step = {
        "background": background,
        "present_at_start": present,
        "backlog_at_start": backlog,
        "rate": rate,
        "seconds": seconds,
        "publish": {k: v for k, v in asdict(published).items() if k != "event_ids"},
        **stages,
        "drain_seconds": drained,
        "sustained": sustained,
        "operator": {
            **asdict(usage),
            "cpu_ms_per_event": round(1000 * usage.cpu_seconds / published.events, 2),
            # The same without what the operator burns idle over the step's wall time.
            "cpu_ms_per_event_above_idle": round(
                1000
                * max(0.0, usage.cpu_seconds - s.idle_cores * cpu_by_process["wall_seconds"])
                / published.events,
                2,
            ),
        },
        "cpu_seconds_by_process": cpu_by_process,
        "loadavg": [load_start, loadavg()],
    }
    # Let what is left of this step (late status patches) finish before the next one starts.
    await wait_idle(meter, timeout=10)
    return step


async def run_level(background: int, plan: Plan) -> dict[str, Any]:
    console.rule(f"{background:,} finished EditJobs present")
    level: dict[str, Any] = {"background": background, "loadavg_start": loadavg(), "steps": []}
    async with session(background, plan, level) as s:
        failed = False
        for rate in plan.rates:
            if failed and rate != plan.goal_rate:
                level["steps_skipped"] = [*level.get("steps_skipped", []), rate]
                continue
            step = await run_step(s, plan, background, rate)
            level["steps"].append(step)
            console.print(report.steps_table([{"steps": [step]}]))
            failed = failed or not step["sustained"]
            if failed and rate >= plan.goal_rate:
                break
        level["watch"] = {
            w.path: {"events": w.events, "relists": w.relists} for w in s.watches.watches
        }
    sustained = [st["rate"] for st in level["steps"] if st["sustained"]]
    ladder_ok = [
        st["rate"] for i, st in enumerate(level["steps"])
        if all(prev["sustained"] for prev in level["steps"][: i + 1])
    ]  # fmt: skip
    level["highest_sustained_rate"] = max(ladder_ok) if ladder_ok else None
    level["sustained_rates"] = sustained
    level["rss_peak_mb"] = max((st["operator"]["rss_peak_mb"] for st in level["steps"]), default=0)
    level["loadavg_end"] = loadavg()
    return level


async def run_peer(plan: Plan) -> list[dict[str, Any]]:
    """editflow and KEDA on the same events: one KEDA ScaledJob per polling interval."""
    console.rule("KEDA beside editflow")
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def on_build(step: str, done: int, total: int) -> None:
            tasks.setdefault(step, bar.add_task(f"building {step} (cached after)", total=total))
            bar.update(tasks[step], completed=done, total=total)

        binary = await asyncio.to_thread(keda.ensure_built, on_build)
    trials: list[dict[str, Any]] = []
    level: dict[str, Any] = {"name": "keda"}
    async with session(0, plan, level) as s:
        stack = s.platform.stack
        assert stack.nats is not None
        with console.status("applying KEDA's CRDs and starting its operator"):
            await asyncio.to_thread(keda.apply_crds, s.platform.api, stack.kubeconfig)
            peer = await asyncio.to_thread(
                keda.KedaOperator(binary, stack.kubeconfig, stack.workdir).start, s.platform.api
            )
        try:
            s.watches.add_peer(s.http, keda.SCALEDJOB_NAMESPACE)
            await s.watches.start()
            for polling in plan.keda_polling:
                trials.append(await run_peer_trial(s, plan, polling, peer))
                console.print(report.peer_table(trials[-1:]))
        finally:
            await asyncio.to_thread(peer.stop)
    return trials


async def run_peer_trial(
    s: Session, plan: Plan, polling: int, peer: keda.KedaOperator
) -> dict[str, Any]:
    stack = s.platform.stack
    assert stack.nats is not None
    events = s.client.settings.events
    name = f"bench-poll-{polling}s"
    consumer = f"bench-keda-poll-{polling}s"
    count = max(1, round(plan.keda_rate * plan.keda_seconds))
    await keda.add_consumer(s.client.js, events.approvals_stream, consumer, events.approval_subject)
    manifest = keda.scaled_job(
        name,
        polling_seconds=polling,
        monitor_endpoint=f"127.0.0.1:{stack.nats.monitor_port}",
        nats_url=stack.nats_url,
        stream=events.approvals_stream,
        consumer=consumer,
        max_jobs=max(100, 2 * count),
    )
    path = keda.SCALEDJOBS.format(namespace=keda.SCALEDJOB_NAMESPACE)
    await asyncio.to_thread(s.platform.api.post, path, manifest)
    try:
        await asyncio.to_thread(
            wait_until, lambda: keda.scaled_job_ready(s.platform.api, name),
            timeout=60, what=f"KEDA to mark ScaledJob {name} Ready",
        )  # fmt: skip
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}\nKEDA operator log:\n{peer.log_tail()}") from None
    with progress() as bar:
        sent = bar.add_task(f"KEDA pollingInterval {polling}s: {plan.keda_rate:g}/s", total=count)
        published = await publish_steady(
            s.client, s.timeline, rate=plan.keda_rate, duration=plan.keda_seconds,
            label=f"keda-{polling}", on_published=lambda n: bar.advance(sent, n),
        )  # fmt: skip
        made = bar.add_task("  KEDA Jobs created", total=published.events)
        deadline = time.monotonic() + polling + 20
        while time.monotonic() < deadline:
            jobs = len(s.timeline.peer_jobs.get(name, {}))
            bar.update(made, completed=min(jobs, published.events))
            editflow_done = all(e in s.timeline.job for e in published.event_ids)
            if jobs >= published.events and editflow_done:
                break
            await asyncio.sleep(0.2)
    ids = published.event_ids
    starts = [s.timeline.published[e] for e in ids]
    peer_times = list(s.timeline.peer_jobs.get(name, {}).values())
    await asyncio.to_thread(s.platform.api.delete, f"{path}/{name}")
    await s.client.js.delete_consumer(events.approvals_stream, consumer)
    return {
        "polling_interval_s": polling,
        "rate": plan.keda_rate,
        "seconds": plan.keda_seconds,
        "events": published.events,
        "rows": [
            {
                "system": "editflow (push)",
                "jobs": sum(1 for e in ids if e in s.timeline.job),
                "event_to_job": stage_summaries(s.timeline, ids)["event_to_job"],
            },
            {
                "system": f"KEDA ScaledJob, pollingInterval {polling}s",
                "jobs": len(peer_times),
                # KEDA's Jobs name no event: the k-th Job created answers the k-th event.
                "event_to_job": summarize(ordered_deltas(starts, peer_times)).as_dict(),
            },
        ],
    }


# -- the platform's floor (no operator) --------------------------------------------------------
async def run_floor_level(background: int, plan: Plan) -> dict[str, Any]:
    """The ladder with :class:`~controlplane.floor.FloorDriver` in place of the operator."""
    console.rule(f"platform floor, {background:,} finished EditJobs present")
    level: dict[str, Any] = {"background": background, "loadavg_start": loadavg(), "steps": []}
    with console.status("starting the local platform"):
        platform = await asyncio.to_thread(start_platform)
    http = http_client(platform)
    try:
        level["background_seconds"] = await add_background(http, platform, background)
        settings = floor_settings(operator_env(platform))
        with console.status("waiting for the platform to settle"):
            level["settle"] = await wait_machine_idle()
        client = await OAClient.connect(
            Settings(nats=NatsSettings(url=platform.stack.nats_url)), source="/bench/oa"
        )
        timeline = Timeline()
        watches = ClusterWatches(http, timeline, NAMESPACE)
        await watches.start()
        prefix = client.settings.events.completion_subject_prefix
        sub = await subscribe_completions(client.nc, prefix, timeline)
        pids = platform_pids(platform)
        driver = FloorDriver(
            http, client.nc, timeline, settings.operator,
            namespace=NAMESPACE, bucket=platform.stack.s3_settings().bucket,
            completion_prefix=prefix,
        )  # fmt: skip
        try:
            async with driver:
                for rate in plan.rates:
                    step = await run_floor_step(driver, pids, plan, background, rate)
                    level["steps"].append(step)
                    console.print(report.floor_table([{"steps": [step]}]))
        finally:
            await sub.unsubscribe()
            await watches.stop()
            await client.close()
    finally:
        await http.aclose()
        await asyncio.to_thread(platform.api.close)
        await asyncio.to_thread(platform.stack.stop)
    level["loadavg_end"] = loadavg()
    return level


def floor_settings(env: dict[str, Any]) -> Settings:
    """The operator's settings from its environment, as ``editflow operator run`` reads them."""
    saved = dict(os.environ)
    try:
        os.environ.update({k: str(v) for k, v in env.items() if k.startswith("EDITFLOW_")})
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def run_floor_step(
    driver: FloorDriver, pids: dict[str, int], plan: Plan, background: int, rate: float
) -> dict[str, Any]:
    seconds = plan.goal_seconds if rate == plan.goal_rate else plan.step_seconds
    present = background + len(driver.timeline.editjob)
    load_start = loadavg()
    cpu = CpuBreakdown(pids)
    cpu.start()
    with progress() as bar:
        total = max(1, round(rate * seconds))
        sent = bar.add_task(f"floor: {rate:g}/s for {seconds:g} s", total=total)
        admitted = await admit_steady(
            driver, rate=rate, duration=seconds, label=f"f{background}-{rate:g}",
            on_admitted=lambda n: bar.advance(sent, n),
        )  # fmt: skip
        done = bar.add_task("  completions", total=admitted.events)
        drained = await drain(
            driver.timeline, admitted.event_ids, timeout=plan.drain_seconds,
            on_done=lambda n: bar.update(done, completed=n),
        )  # fmt: skip
    by_process = cpu.stop()
    stages = stage_summaries(driver.timeline, admitted.event_ids)
    lost = sum(stages["lost"].values())
    platform_cpu = by_process["machine_busy"] - by_process.get("benchmark_client", 0.0)
    step = {
        "background": background,
        "present_at_start": present,
        "rate": rate,
        "seconds": seconds,
        "publish": {k: v for k, v in asdict(admitted).items() if k != "event_ids"},
        **stages,
        "drain_seconds": drained,
        "sustained": lost == 0 and admitted.errors == 0 and admitted.achieved_rate >= 0.95 * rate,
        "errors": driver.errors[-5:],
        "platform_cpu_ms_per_event": round(1000 * platform_cpu / admitted.events, 1),
        "cpu_seconds_by_process": by_process,
        "loadavg": [load_start, loadavg()],
    }
    await asyncio.sleep(3)  # late Pod and Job status writes of this step
    return step


# -- the run as a whole ----------------------------------------------------------------------
def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    import psutil

    return {
        "platform": host.platform(),
        "python": host.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git("rev-parse", "--short", "HEAD"),
        "operator_commits": _git("log", "-3", "--format=%h %s", "--", "operator/").splitlines(),
        "dirty_operator": bool(_git("status", "--porcelain", "--", "operator/")),
    }


@contextlib.contextmanager
def timed(result: dict[str, Any]) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        result["wall_seconds"] = round(time.monotonic() - began, 1)


async def run(plan: Plan) -> dict[str, Any]:
    """Every background level with the operator (and the peer), or the platform's floor."""
    result: dict[str, Any] = {
        "benchmark": "control_plane_floor" if plan.floor else "control_plane",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": asdict(plan),
        "levels": [],
    }
    if not plan.floor:
        result["peer"] = []
    run_one = run_floor_level if plan.floor else run_level
    with timed(result):
        for background in plan.backgrounds:
            try:
                result["levels"].append(await run_one(background, plan))
            except Exception as exc:  # keep what was measured; say what broke
                console.print_exception()
                result.setdefault("errors", []).append(f"level {background}: {exc!r}")
        if plan.keda and not plan.floor:
            try:
                result["peer"] = await run_peer(plan)
            except Exception as exc:
                console.print_exception()
                result.setdefault("errors", []).append(f"KEDA peer: {exc!r}")
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not plan.floor:  # the goals are the operator's
        result["goals"] = report.goals(result["levels"], plan.goal_rate, plan.goal_background)
    return result


async def run_rss_only(plan: Plan) -> dict[str, Any]:
    """``--rss-only``: the operator at rest with each count of finished EditJobs."""
    result: dict[str, Any] = {
        "benchmark": "control_plane_rss",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": {"backgrounds": plan.backgrounds, "hold_seconds": plan.rss_hold_seconds},
        "levels": [],
    }
    with timed(result), console.status("measuring") as status:
        try:
            result["levels"] = await run_rss(
                plan.backgrounds,
                settle_seconds=max(plan.settle_seconds, 120.0),
                hold_seconds=plan.rss_hold_seconds,
                on_progress=status.update,
            )
        except Exception as exc:
            console.print_exception()
            result.setdefault("errors", []).append(repr(exc))
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    goal = report.GOALS["rss_mb"]
    at_goal = [lv for lv in result["levels"] if lv["editjobs"] == plan.goal_background]
    result["goals"] = [
        {
            "goal": f"operator RSS at rest with {plan.goal_background:,} finished EditJobs",
            "target": f"≤ {goal:.0f} MB",
            "value": at_goal[0]["rss_mb"] if at_goal else None,
            "ok": (at_goal[0]["rss_mb"] <= goal) if at_goal else None,
            "unit": "MB",
        }
    ]
    return result


def main_rss(plan: Plan) -> int:
    result = asyncio.run(run_rss_only(plan))
    console.print(report.rss_table(result["levels"]))
    for error in result.get("errors", []):
        console.print(f"[red]not measured:[/red] {error}")
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / f"control_plane-rss-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    console.print(f"wall {result['wall_seconds']:.0f} s; wrote {path}")
    return 1 if result.get("errors") else 0


async def run_warm(plan: Plan) -> dict[str, Any]:
    """Warm mode: each level's operator phase, then its warm floor, on one platform.

    The operator's apiserver writes are counted (through the counting proxy) at the
    first level only, and never at the goal level: its latencies carry no proxy.
    """
    result: dict[str, Any] = {
        "benchmark": "control_plane_warm",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": asdict(plan),
        "levels": [],
    }

    def say(what: str) -> None:  # a line each, not a transient status: a run is minutes long
        console.print(f"{datetime.now(UTC):%H:%M:%S} {what}")

    with timed(result):
        for index, background in enumerate(plan.backgrounds):
            try:
                level = await warmrun.run_warm_level(
                    background,
                    plan,
                    count_writes=counts_writes(plan, index),
                    say=say,
                    with_keda=plan.keda and index == 0,
                )
                result["levels"].append(level)
                console.print(warmreport.steps_table([level]))
                write_json(plan, "control_plane-warm-partial", result)  # kept if cut short
            except Exception as exc:  # keep what was measured; say what broke
                console.print_exception()
                result.setdefault("errors", []).append(f"warm level {background}: {exc!r}")
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["goals"] = warmreport.goals(result["levels"], plan.goal_rate, plan.goal_background)
    return result


def counts_writes(plan: Plan, index: int) -> bool:
    """Whether level ``index`` runs its operator through the counting proxy."""
    return index == 0 and plan.backgrounds[0] != plan.goal_background


def main_warm(plan: Plan) -> int:
    result = asyncio.run(run_warm(plan))
    warmreport.print_all(console, result)
    for error in result.get("errors", []):
        console.print(f"[red]not measured:[/red] {error}")
    path = write_json(plan, "control_plane-warm", result)
    (plan.out / "control_plane-warm-partial.json").unlink(missing_ok=True)
    console.print(f"wall {result['wall_seconds']:.0f} s; wrote {path}")
    return 1 if result.get("errors") else 0


def write_json(plan: Plan, kind: str, result: dict[str, Any]) -> Path:
    """``<out>/<kind>-<utc>.json`` (``<kind>.json`` for the partial file, overwritten)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    stamp = "" if kind.endswith("partial") else f"-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    path = plan.out / f"{kind}{stamp}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    plan = parse_plan(argv)
    if plan.rss_only:
        return main_rss(plan)
    if plan.mode == "warm" and not plan.floor:
        return main_warm(plan)
    result = asyncio.run(run(plan))
    if plan.floor:
        console.print(report.floor_table(result["levels"]))
    else:
        report.print_all(console, result)
    for error in result.get("errors", []):
        console.print(f"[red]not measured:[/red] {error}")
    plan.out.mkdir(parents=True, exist_ok=True)
    kind = "control_plane-floor" if plan.floor else "control_plane"
    path = plan.out / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    console.print(f"wall {result['wall_seconds']:.0f} s; wrote {path}")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    from editflow.devstack.procs import exit_on_sigterm

    exit_on_sigterm()  # a `timeout` or `kill` still stops the servers and removes temp dirs
    sys.exit(main())
