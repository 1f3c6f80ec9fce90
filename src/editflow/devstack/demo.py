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
from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
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


def _models_root(stack: LocalStack, console: Console) -> tuple[Path, bool]:
    root = localmode.models_dir(stack, localmode.NAMESPACE)
    real = os.environ.get("EDITFLOW_DEMO_MODELS_DIR")
    if real and (Path(real) / "longcat-image-edit" / "model_index.json").exists():
        link = root / "longcat-image-edit"
        if not link.exists():
            link.symlink_to(Path(real) / "longcat-image-edit")
        console.print(f"model: real LongCat-Image-Edit weights from {real}")
        return root, True
    with console.status("building a tiny random-weight LongCat pipeline (no weights here)"):
        localmode.build_tiny_model(root)
    console.print(
        "model: [yellow]tiny random-weight LongCat pipeline[/yellow] (set "
        "EDITFLOW_DEMO_MODELS_DIR for real weights); every other component is the real one"
    )
    return root, False


async def _submit_and_follow(
    stack: LocalStack, api: KubeClient, image_key: str, real: bool, console: Console
) -> DemoResult:
    settings = Settings(nats=NatsSettings(url=stack.nats_url))
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


def _get(api: KubeClient, name: str) -> dict | None:
    try:
        return api.get(editjob_path(localmode.NAMESPACE, name))
    except Exception:
        return None


def run_demo(output_dir: Path, console: Console | None = None) -> DemoResult:
    """Run the whole flow once; raises if the edit did not succeed."""
    console = console or Console()
    output_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with console.status(
        "starting etcd, kube-apiserver, controller-manager, process kubelet, NATS, MinIO"
    ):
        stack = LocalStack(host_images=True).start()
    try:
        console.print(f"local platform up in {time.monotonic() - began:.1f}s")
        api = KubeClient(stack.kubeconfig)
        localmode.install_crd(api)
        localmode.install_namespace(api, stack, localmode.NAMESPACE)
        _, real = _models_root(stack, console)
        env = localmode.operator_env(stack, localmode.NAMESPACE, resync_seconds="2")
        with console.status("starting the editflow operator"):
            operator = localmode.OperatorProcess(env, stack.workdir).start()
        try:
            s3 = stack.s3_settings()
            client = s3_client(s3)
            png = demo_image()
            key = f"uploads/{localmode.NAMESPACE}/demo-{uuid.uuid4().hex[:8]}.png"
            client.put_object(s3.bucket, key, io.BytesIO(png), len(png), content_type="image/png")
            input_path = output_dir / "input.png"
            input_path.write_bytes(png)
            result = asyncio.run(_submit_and_follow(stack, api, key, real, console))
            result.input_path = input_path
            if result.status != "success" or not result.result_url:
                console.print(f"[red]edit ended with {result.status}[/red]\n{operator.log_tail()}")
                raise RuntimeError(f"the demo edit ended with status {result.status}")
            with urllib.request.urlopen(result.result_url, timeout=30) as resp:  # noqa: S310
                data = resp.read()
            result.output_path = output_dir / "result.png"
            result.output_path.write_bytes(data)
            result.output_size = Image.open(io.BytesIO(data)).size
            ej = api.get(editjob_path(localmode.NAMESPACE, result.editjob))
            attempt = ej["status"]["attempts"]
            prefix = f"results/{localmode.NAMESPACE}"
            raw = client.get_object(s3.bucket, result_json_key(prefix, result.editjob, attempt))
            result.cost = json.loads(raw.read())["cost"]
            raw.close()
            _report(console, result, ej)
        finally:
            operator.stop()
            api.close()
    finally:
        with console.status("stopping the local platform"):
            stack.stop()
    console.print(
        f"[green]demo finished in {time.monotonic() - began:.1f}s; nothing left running[/green]"
    )
    return result


def _report(console: Console, result: DemoResult, ej: dict) -> None:
    table = Table(title=f"EditJob {result.editjob}")
    for col in ("field", "value"):
        table.add_column(col)
    status = ej["status"]
    rows = [
        ("phase", status["phase"]),
        ("attempts", str(status["attempts"])),
        ("cost (s)", f"{status.get('costSeconds', 0):.2f}"),
        ("cost split (s)", ", ".join(f"{k} {v:.2f}" for k, v in result.cost.items())),
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
