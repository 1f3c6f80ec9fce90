"""From zero to the first edit: a warm pool at zero answering its first approval (issue 23).

On the local platform (``LocalStack`` with its registry: etcd, kube-apiserver,
kube-controller-manager with the DaemonSet controller, the process kubelet running Pods in
their images with runc, NATS JetStream, MinIO), with editflow installed by ``helm install``
from its own images, in the chart's default warm mode with the pool at zero. Each scenario
gets a platform of its own, and a kubelet image store of its own, so "not pulled" really is:

    unpulled       the node has never pulled the worker image; weights on the models PVC
                   (today's ``make demo`` on a fresh machine)
    image-present  the image was pulled before (a worker ran here earlier); weights on the PVC
                   (today's ``editflow dev up``): the baseline of the staging goal
    staged         the prestage DaemonSet (``worker.prestage``) pulled the image and filled the
                   node's weights cache from MinIO before the approval; workers read the cache
    streamed       the image is present, the weights are on MinIO and not in any cache: the
                   worker streams them (``EDITFLOW_WORKER__STREAM_WEIGHTS``)

For each, one approval is published with the project's OA SDK and followed from this process
(the apiserver polled every 50 ms, the completion event subscribed to). Every time is on this
machine's wall clock, which the worker's own figures share:

    schedule   EditJob seen -> the warm worker's Pod bound to the node
    pull       bound -> its container running (the image pull and unpack, then runc)
    start      -> the worker process up (Python, the CLI, NATS)   (from the worker's log)
    imports / read / to_device   the model load: ``import torch, diffusers``, weights read
               (local files, or the stream from MinIO), placement (its "model loaded" line)
    ready      model loaded -> the worker ready for work
    hand_out   ready -> the operator's work message arrives (the worker said "edit started")
    edit       fetch, preprocess, denoise, encode, upload
    report     edit done -> the completion event reached this process
    total      publish -> completion event

The goal (tiny model, this machine): ``staged`` within 1.2x of ``image-present``. A multi-GB
streamed load against the raw read throughput of the same objects is ``benchmarks/
stream_load.py`` (run with ``--stream-mb``, its figure is added to this table's JSON).

    .venv/bin/python benchmarks/cold_start.py                  # the four scenarios, ~10 min
    .venv/bin/python benchmarks/cold_start.py --scenarios staged image-present
    .venv/bin/python benchmarks/cold_start.py --stream-mb 2048  # plus the streamed-load figure

Needs root (buildah, runc) and the images (``make images``; built here when missing). Prints
a table and writes ``benchmarks/results/cold_start-<utc>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import platform as host
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from editflow.core.s3 import s3_client
from editflow.core.settings import Settings
from editflow.devstack import localmode, release
from editflow.devstack.demo import demo_image
from editflow.devstack.kubeapi import KubeClient, KubeError
from editflow.devstack.kubelet import podspec
from editflow.devstack.kubelet.images import ImageStore
from editflow.devstack.stack import LocalStack
from editflow.events.models import Person
from editflow.events.sdk import OAClient
from editflow.operator.crd import editjob_path
from editflow.operator.names import editjob_name

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "longcat-image-edit"
SCENARIOS = ("unpulled", "image-present", "staged", "streamed")
MODELS_PREFIX = "models"
HOST_CACHE = "/var/cache/editflow"
GOAL_STAGED_RATIO = 1.2
READER_SECRET = "weights-reader"  # noqa: S105 - a Secret's name


@dataclass
class Run:
    scenario: str
    total: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    split: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)
    staging_seconds: float | None = None
    status: str = ""
    worker_pod: str = ""
    error: str = ""


def scenario_values(scenario: str) -> dict[str, Any]:
    """The chart values that make a scenario, over ``release.local_values``."""
    if scenario in ("unpulled", "image-present"):
        return {}  # weights on the models PVC, as the local install does
    s3_weights = {
        "models": {
            "pvc": {"enabled": False},
            "s3Prefix": MODELS_PREFIX,
            "s3ReaderSecret": READER_SECRET,
            "nodeCache": {"hostPath": HOST_CACHE} if scenario == "staged" else {},
        }
    }
    if scenario == "staged":
        return {**s3_weights, "worker": {"prestage": {"enabled": True}}}
    return s3_weights


def prepare_namespace(api: KubeClient, stack: LocalStack) -> None:
    """The namespace before the install: hostPath volumes need the privileged Pod Security
    level (the chart README says so of ``models.nodeCache.hostPath``), and weights on S3 a
    reader key (MinIO's own here; a real site gives a read-only user of the prefix)."""
    namespace = localmode.NAMESPACE
    api.post(
        "/api/v1/namespaces",
        {
            "metadata": {
                "name": namespace,
                "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
            }
        },
    )
    s3 = stack.s3_settings()
    keys = {
        "access-key": s3.access_key.get_secret_value(),
        "secret-key": s3.secret_key.get_secret_value(),
    }
    api.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "metadata": {"name": READER_SECRET},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        },
    )


def prepull(stack: LocalStack, reference: str) -> float:
    """Put the worker image into the node's store as an earlier Pod's pull would have."""
    assert stack.kubelet is not None and stack.kubelet.image_store is not None
    began = time.time()
    ImageStore(stack.kubelet.image_store).pull(reference)
    return time.time() - began


def push_tiny_weights(stack: LocalStack, into: Path) -> None:
    """The tiny random-weight pipeline on MinIO under ``models/<model>/`` with its manifest."""
    from editflow.inference.weights import publish_to_s3

    localmode.build_tiny_model(into, MODEL)
    publish_to_s3(into / MODEL, stack.s3_settings(), f"{MODELS_PREFIX}/{MODEL}")


def wait_staged(api: KubeClient, node: str, began: float, timeout: float = 900) -> float:
    """Seconds from ``began`` (the install) until the prestage DaemonSet labelled the node."""
    from editflow.core.staging import staged_label

    label = staged_label(MODEL)
    while time.time() - began < timeout:
        labels = api.get(f"/api/v1/nodes/{node}")["metadata"].get("labels") or {}
        if label in labels:
            return time.time() - began
        time.sleep(0.5)
    raise TimeoutError(f"node {node} was not labelled {label} within {timeout:.0f}s")


async def publish_and_follow(rel: release.Release, api: KubeClient, run: Run) -> float:
    """One approval, followed: wall-clock marks of what this process saw (seconds after the
    publish, which is returned as a wall-clock time)."""
    stack = rel.stack
    s3 = stack.s3_settings()
    client = s3_client(s3)
    png = demo_image()
    key = f"uploads/{localmode.NAMESPACE}/cold-{uuid.uuid4().hex[:8]}.png"
    client.put_object(s3.bucket, key, io.BytesIO(png), len(png), content_type="image/png")
    oa = await OAClient.connect(Settings(nats=rel.nats_settings("publisher")), source="/oa/bench")
    namespace = localmode.NAMESPACE
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    try:
        began = time.time()
        event_id = await oa.submit_approval(
            form_id=f"COLD-{uuid.uuid4().hex[:6]}",
            approval_id="AP-1",
            applicant=Person(id="u-1", name="bench"),
            approvers=[Person(id="m-1", name="a"), Person(id="d-1", name="b")],
            instruction="Make the red square blue",
            image_key=key,
            usage="wechat-article",
            generation={"steps": 2, "seed": 7},  # type: ignore[arg-type]
        )
        run.marks["published"] = 0.0
        name = editjob_name(event_id)
        waiter = asyncio.create_task(oa.wait_for_completion(event_id, timeout=900))
        marks = run.marks
        while not waiter.done():
            now = time.time() - began
            if "editjob" not in marks:
                with contextlib.suppress(KubeError):  # not there yet
                    await asyncio.to_thread(api.get, editjob_path(namespace, name))
                    marks["editjob"] = now
            pods = await asyncio.to_thread(
                api.get, pods_path, labelSelector="app.kubernetes.io/name=editflow-warm-worker"
            )
            for pod in pods["items"]:
                run.worker_pod = pod["metadata"]["name"]
                marks.setdefault("pod", now)
                if pod["spec"].get("nodeName"):
                    marks.setdefault("scheduled", now)
                for status in pod.get("status", {}).get("containerStatuses") or []:
                    if "running" in (status.get("state") or {}):
                        marks.setdefault("running", now)
            await asyncio.wait({waiter}, timeout=0.05)
        done = waiter.result()
        run.total = time.time() - began
        marks["completed"] = run.total
        run.status = done.data.status
    finally:
        await oa.close()
    return began


def worker_marks(stack: LocalStack, api: KubeClient, pod_name: str, began: float) -> dict[str, Any]:
    """What the worker's own log says (wall clock, as this process's marks): when its process
    was up, the model loaded (with the load's split), the worker ready, the edit started and
    done. The process kubelet keeps each container's log in the Pod's folder."""
    assert stack.kubelet is not None
    pod = api.get(f"/api/v1/namespaces/{localmode.NAMESPACE}/pods/{pod_name}")
    logs = podspec.pod_dir_for(stack.kubelet.root, pod) / "logs"
    wanted = {
        "warm worker http": "process_up",
        "model loaded": "model_loaded",
        "warm worker ready": "ready",
        "edit started": "edit_started",
        "edit done": "edit_done",
    }
    found: dict[str, Any] = {}
    for log in logs.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            mark = wanted.get(record.get("msg", ""))
            if mark is None or mark in found:
                continue
            at = datetime.fromisoformat(record["ts"]).timestamp() - began
            found[mark] = at
            if mark == "model_loaded":
                found["load"] = {k: float(record.get(k, 0.0)) for k in LOAD_PARTS}
    return found


LOAD_PARTS = ("imports", "read", "to_device")
#: The table's columns: (name, from mark, to mark); the load's parts come from its log line.
SPANS = (
    ("schedule", "editjob", "scheduled"),
    ("pull", "scheduled", "running"),
    ("start", "running", "process_up"),
    ("load", "process_up", "model_loaded"),
    ("ready", "model_loaded", "ready"),
    ("hand_out", "ready", "edit_started"),
    ("edit", "edit_started", "edit_done"),
    ("report", "edit_done", "completed"),
)


def split(run: Run) -> dict[str, float]:
    """The table's columns from this process's marks and the worker's log."""
    marks = run.marks
    out = {
        name: marks[end] - marks[start]
        for name, start, end in SPANS
        if start in marks and end in marks
    }
    out.update(run.load)
    return out


def run_scenario(scenario: str, built: list[Any], console: Console, workdir: Path) -> Run:
    run = Run(scenario=scenario)
    stack = LocalStack(workdir / scenario, registry=True)
    assert stack.kubelet is not None
    stack.kubelet.image_store = workdir / scenario / "image-store"
    stack.start()
    api = KubeClient(stack.kubeconfig)
    try:
        assert stack.registry is not None
        worker = next(b for b in built if b.target == "worker")
        reference = worker.reference(stack.registry.address, "worker")
        if scenario in ("image-present", "streamed"):
            seconds = prepull(stack, reference)
            console.print(
                f"  {scenario}: worker image pulled into the node's store in {seconds:.1f}s"
            )
        if scenario in ("staged", "streamed"):
            push_tiny_weights(stack, workdir / scenario / "tiny")
            prepare_namespace(api, stack)
        installing = time.time()
        rel = release.install(stack, built, extra_values=scenario_values(scenario))
        rel.wait_ready("operator")
        if scenario == "staged":
            assert stack.kubelet is not None
            run.staging_seconds = wait_staged(api, stack.kubelet.node_name, installing)
            console.print(
                f"  staged: node labelled by the prestage DaemonSet in {run.staging_seconds:.1f}s"
            )
        began = asyncio.run(publish_and_follow(rel, api, run))
        worker = worker_marks(stack, api, run.worker_pod, began)
        run.load = worker.pop("load", {})
        run.marks.update(worker)
        run.split = split(run)
    except Exception as exc:  # a scenario's failure is a row of the table, not the end
        run.error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        api.close()
        stack.stop()
        shutil.rmtree(workdir / scenario, ignore_errors=True)  # its image store is GBs
    return run


def stream_figure(size_mb: int) -> dict[str, Any] | None:
    """benchmarks/stream_load.py's streamed load against the raw read, if asked for."""
    if not size_mb:
        return None
    script = Path(__file__).resolve().parent / "stream_load.py"
    before = set(RESULTS.glob("stream_load-*.json"))
    out = subprocess.run(
        [sys.executable, str(script), "--size-mb", str(size_mb)],
        capture_output=True,
        text=True,
        check=False,
    )
    written = sorted(set(RESULTS.glob("stream_load-*.json")) - before)
    if out.returncode != 0 or not written:
        return {"error": (out.stderr or out.stdout)[-500:]}
    return json.loads(written[-1].read_text())


def report(runs: list[Run], console: Console) -> dict[str, Any]:
    table = Table(title="cold start: approval -> completion, pool at zero (seconds, wall clock)")
    columns = ("schedule", "pull", "start", *LOAD_PARTS, "ready", "hand_out", "edit", "report")
    table.add_column("scenario")
    for name in (*columns, "total"):
        table.add_column(name, justify="right")
    for run in runs:
        if run.error:
            table.add_row(run.scenario, *["-"] * len(columns), f"[red]{run.error[:60]}[/red]")
            continue
        cells = [f"{run.split[c]:.2f}" if c in run.split else "-" for c in columns]
        table.add_row(run.scenario, *cells, f"{run.total:.2f}")
    console.print(table)
    by = {r.scenario: r for r in runs if not r.error}
    goals: dict[str, Any] = {}
    if "staged" in by and "image-present" in by:
        ratio = by["staged"].total / by["image-present"].total
        ok = ratio <= GOAL_STAGED_RATIO
        goals["staged_vs_image_present"] = {"ratio": ratio, "goal": GOAL_STAGED_RATIO, "met": ok}
        console.print(
            f"freshly staged node vs a node that had the image: {ratio:.2f}x "
            f"(goal <= {GOAL_STAGED_RATIO}x: {'met' if ok else 'MISSED'})"
        )
    if "unpulled" in by and "image-present" in by:
        pull = by["unpulled"].split.get("pull", 0.0)
        console.print(
            f"the image pull a staged node saves: {pull:.1f}s of {by['unpulled'].total:.1f}s"
        )
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--stream-mb", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    why_not = release.images_unavailable()
    if why_not:
        console.print(f"[red]cold_start needs editflow's images: {why_not}[/red]")
        return 2
    built = release.publish_images(console)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="editflow-cold-") as tmp:
        for scenario in args.scenarios:
            console.print(f"[bold]{scenario}[/bold]")
            runs.append(run_scenario(scenario, built, console, Path(tmp)))
    goals = report(runs, console)
    stream = stream_figure(args.stream_mb)
    if stream is not None:
        console.print(f"streamed load vs raw read: {json.dumps(stream)[:300]}")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"cold_start-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {"arch": host.machine(), "python": host.python_version()},
                "runs": [asdict(r) for r in runs],
                "goals": goals,
                "stream_load": stream,
            },
            indent=2,
        )
    )
    console.print(f"wrote {out}")
    return 0 if all(not r.error for r in runs) else 1


if __name__ == "__main__":
    from editflow.devstack.procs import exit_on_sigterm

    exit_on_sigterm()  # a `timeout` or `kill` still stops the servers and removes temp dirs
    sys.exit(main())
