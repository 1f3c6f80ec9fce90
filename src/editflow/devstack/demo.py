"""The main job, end to end on one machine: an OA approval becomes an edited image.

``make demo`` / ``editflow demo`` starts the embedded platform, installs
editflow on it (local mode), publishes an approval event exactly as an OA
system would, follows the EditJob through its phases, downloads the result
from MinIO through its presigned URL, and tears everything down.

Without real weights the worker runs a tiny random-weight LongCat pipeline
(the result is noise-like, but every component on the path is real); point
``EDITFLOW_DEMO_MODELS_DIR`` at a directory holding ``longcat-image-edit/``
saved with ``save_pretrained`` to run the real model.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from editflow.core.s3 import s3_client
from editflow.core.settings import NatsSettings, Settings
from editflow.devstack import images, localmode, release
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.kubelet import podspec
from editflow.devstack.stack import LocalStack
from editflow.events.models import Person
from editflow.events.sdk import OAClient
from editflow.events.worker_contract import result_json_key
from editflow.operator.crd import editjob_path

INSTRUCTION = "把背景换成海边日落，保留前景的红色方块"


@dataclass
class DemoResult:
    status: str
    editjob: str
    phases: list[tuple[float, str, str]] = field(default_factory=list)
    result_url: str | None = None
    result_key: str | None = None
    cost: dict[str, float] = field(default_factory=dict)
    input_path: Path | None = None
    output_path: Path | None = None
    output_size: tuple[int, int] | None = None


def demo_image() -> bytes:
    """A small poster: gradient sky, ground, a red square: something an OA user would send."""
    img = Image.new("RGB", (960, 640))
    draw = ImageDraw.Draw(img)
    for y in range(640):
        shade = int(120 + 100 * y / 640)
        draw.line([(0, y), (960, y)], fill=(shade // 2, shade // 2 + 40, shade))
    draw.rectangle([0, 470, 960, 640], fill=(90, 140, 70))
    draw.rectangle([380, 260, 580, 460], fill=(210, 30, 40), outline=(255, 255, 255), width=6)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _demo_models_dir() -> Path | None:
    real = os.environ.get("EDITFLOW_DEMO_MODELS_DIR")
    return Path(real) if real and release.has_real_model(Path(real)) else None


def _say_model(console: Console, real: Path | None) -> None:
    if real:
        console.print(f"model: real LongCat-Image-Edit weights from {real}")
    else:
        console.print(
            "model: [yellow]tiny random-weight LongCat pipeline[/yellow] (set "
            "EDITFLOW_DEMO_MODELS_DIR for real weights); every other component is the real one"
        )


class _HostEditflow:
    """The operator as a host process, workers mapped to host commands (``--host-images``)."""

    def __init__(self, stack: LocalStack, real: Path | None) -> None:
        localmode.install_editflow(stack, real)
        env = localmode.operator_env(stack, localmode.NAMESPACE, resync_seconds="2")
        self.operator = localmode.OperatorProcess(env, stack.workdir).start()
        # Host processes on an open NATS: the --host-images fallback only (no root, no images).
        self.nats = NatsSettings(url=stack.nats_url)

    def log_tail(self) -> str:
        return self.operator.log_tail()

    def stop(self) -> None:
        self.operator.stop()


class _ChartEditflow:
    """``helm install`` of the chart with editflow's images from the stack's registry."""

    def __init__(
        self, stack: LocalStack, built: list[images.BuiltImage], real: Path | None
    ) -> None:
        self.release = release.install(stack, built, models_dir=real)
        self.stack = stack
        # The OA system's NATS user, as the chart configured the platform's NATS.
        self.nats = self.release.nats_settings("publisher")

    def log_tail(self) -> str:
        pods = self.release.pods("operator")
        if not pods:
            return "(no operator Pod)"
        log = podspec.pod_dir_for(self.stack.kubelet.root, pods[0]) / "logs" / "operator.log"
        lines = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
        return "\n".join(lines)

    def stop(self) -> None:
        """Nothing to undo: the stack is the demo's own, and stopping it ends every Pod.

        (``helm uninstall --wait`` would wait on the models PVC's protection finalizer,
        which no controller of the local platform removes.)
        """


async def _submit_and_follow(
    nats: NatsSettings, api: KubeClient, image_key: str, real: bool, console: Console
) -> DemoResult:
    settings = Settings(nats=nats)
    client = await OAClient.connect(settings, source="/oa/demo")
    started = time.monotonic()
    try:
        event_id = await client.submit_approval(
            form_id=f"DEMO-{uuid.uuid4().hex[:6]}",
            approval_id="AP-1",
            applicant=Person(id="u-1001", name="李雷"),
            approvers=[Person(id="m-2001", name="韩梅梅"), Person(id="d-3001", name="王总")],
            instruction=INSTRUCTION,
            image_key=image_key,
            usage="wechat-article",
            generation=None if real else {"steps": 2, "seed": 42},  # type: ignore[arg-type]
        )
        console.print(f"published approval event [bold]{event_id}[/bold] to NATS JetStream")
        from editflow.operator.names import editjob_name

        name = editjob_name(event_id)
        result = DemoResult(status="pending", editjob=name)
        waiter = asyncio.create_task(client.wait_for_completion(event_id, timeout=1800))
        last = ""
        with console.status("waiting for the EditJob") as spinner:
            while not waiter.done():
                ej = await asyncio.to_thread(_get, api, name)
                status = (ej or {}).get("status") or {}
                phase = status.get("phase", "")
                line = f"{phase}: {status.get('message', '')}"
                if phase and line != last:
                    elapsed = time.monotonic() - started
                    result.phases.append((elapsed, phase, status.get("message", "")))
                    console.print(
                        f"  {elapsed:6.1f}s  [cyan]{phase:<10}[/cyan] {status.get('message', '')}"
                    )
                    spinner.update(f"EditJob {name}: {phase}")
                    last = line
                await asyncio.wait({waiter}, timeout=0.5)
        done = waiter.result()
    finally:
        await client.close()
    result.status = done.data.status
    result.result_url = done.data.result_url
    result.result_key = done.data.result_key
    return result


def _recorded(api: KubeClient, name: str, timeout: float = 10.0) -> dict:
    """The EditJob once its delivery is recorded in status: the write right after the
    completion event reached NATS, which is when the demo's waiter woke up."""
    deadline = time.monotonic() + timeout
    ej = api.get(editjob_path(localmode.NAMESPACE, name))
    while not ej["status"].get("completionPublishedAt") and time.monotonic() < deadline:
        time.sleep(0.3)
        ej = api.get(editjob_path(localmode.NAMESPACE, name))
    return ej


def _get(api: KubeClient, name: str) -> dict | None:
    try:
        return api.get(editjob_path(localmode.NAMESPACE, name))
    except Exception:
        return None


def run_demo(
    output_dir: Path, console: Console | None = None, *, host_images: bool = False
) -> DemoResult:
    """Run the whole flow once; raises if the edit did not succeed.

    By default editflow runs from its images (``make images``, then ``helm install``
    of the chart on the stack, images pulled from the stack's registry); with
    ``host_images`` the operator runs as a host process and workers as host commands,
    which needs no image build.
    """
    console = console or Console()
    output_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    real = _demo_models_dir()
    why_not = None if host_images else release.images_unavailable()
    if why_not:
        console.print(f"[yellow]editflow runs as host processes here: {why_not}[/yellow]")
        host_images = True
    built = [] if host_images else release.publish_images(console)
    stack_began = time.monotonic()
    with console.status(
        "starting etcd, kube-apiserver, controller-manager, process kubelet, NATS, MinIO"
        + ("" if host_images else ", registry")
    ):
        stack = LocalStack(registry=not host_images, host_images=host_images).start()
    try:
        console.print(f"local platform up in {time.monotonic() - stack_began:.1f}s")
        api = KubeClient(stack.kubeconfig)
        _say_model(console, real)
        installed: _HostEditflow | _ChartEditflow
        if host_images:
            with console.status("starting the editflow operator (host process)"):
                installed = _HostEditflow(stack, real)
        else:
            with console.status("helm install editflow (operator Pod in its image)"):
                t0 = time.monotonic()
                installed = _ChartEditflow(stack, built, real)
                pod = installed.release.wait_ready("operator")
            console.print(
                f"helm install: operator Pod {pod['metadata']['name']} Ready in its image "
                f"in {time.monotonic() - t0:.1f}s"
            )
        try:
            result = _edit_once(stack, installed.nats, api, real is not None, output_dir, console)
            if result.status != "success" or not result.result_url:
                console.print(f"[red]edit ended with {result.status}[/red]\n{installed.log_tail()}")
                raise RuntimeError(f"the demo edit ended with status {result.status}")
        finally:
            installed.stop()
            api.close()
    finally:
        with console.status("stopping the local platform"):
            stack.stop()
    console.print(
        f"[green]demo finished in {time.monotonic() - began:.1f}s; nothing left running[/green]"
    )
    return result


def _edit_once(
    stack: LocalStack,
    nats: NatsSettings,
    api: KubeClient,
    real: bool,
    output_dir: Path,
    console: Console,
) -> DemoResult:
    """Upload the poster, publish the approval, follow it, download and report the result."""
    s3 = stack.s3_settings()
    client = s3_client(s3)
    png = demo_image()
    key = f"uploads/{localmode.NAMESPACE}/demo-{uuid.uuid4().hex[:8]}.png"
    client.put_object(s3.bucket, key, io.BytesIO(png), len(png), content_type="image/png")
    input_path = output_dir / "input.png"
    input_path.write_bytes(png)
    result = asyncio.run(_submit_and_follow(nats, api, key, real, console))
    result.input_path = input_path
    if result.status != "success" or not result.result_url:
        return result
    with urllib.request.urlopen(result.result_url, timeout=30) as resp:  # noqa: S310
        data = resp.read()
    result.output_path = output_dir / f"result{Path(result.result_key or '.png').suffix}"
    result.output_path.write_bytes(data)
    result.output_size = Image.open(io.BytesIO(data)).size
    ej = _recorded(api, result.editjob)
    attempt = ej["status"]["attempts"]
    prefix = f"results/{localmode.NAMESPACE}"
    raw = client.get_object(s3.bucket, result_json_key(prefix, result.editjob, attempt))
    result.cost = json.loads(raw.read())["cost"]
    raw.close()
    _report(console, result, ej, real)
    return result


def _gate_line(quality: dict | None, real: bool) -> str:
    """What the gate said, plainly: the tiny random model paints noise, whatever it is asked."""
    if not quality:
        return "did not run"
    line = f"{quality['verdict']} ({quality['kind']} edit, advisory): {quality['reason']}"
    if not real:
        line += " [the tiny random-weight model returns noise; real weights give real verdicts]"
    return line


def _cost_split(cost: dict) -> str:
    """``fetch 0.16, ..., load 4.93 (imports 1.2, read 3.1, to device 0.6)``."""
    parts = [f"{k} {v:.2f}" for k, v in cost.items() if isinstance(v, int | float)]
    detail = cost.get("load_detail")
    if detail:
        parts.append(
            f"load = imports {detail['imports']:.2f} + read {detail['read']:.2f} "
            f"+ to device {detail['to_device']:.2f}"
        )
    return ", ".join(parts)


def _report(console: Console, result: DemoResult, ej: dict, real: bool) -> None:
    table = Table(title=f"EditJob {result.editjob}")
    for col in ("field", "value"):
        table.add_column(col)
    status = ej["status"]
    rows = [
        ("phase", status["phase"]),
        ("attempts", str(status["attempts"])),
        ("cost (s)", f"{status.get('costSeconds', 0):.2f}"),
        ("cost split (s)", _cost_split(result.cost)),
        ("quality gate", _gate_line(status.get("quality"), real)),
        ("result key", result.result_key or ""),
        ("result size", "x".join(map(str, result.output_size or ()))),
        ("completion event", status.get("completionEventId", "")),
        ("input", str(result.input_path)),
        ("output", str(result.output_path)),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"presigned result URL: {result.result_url}")
