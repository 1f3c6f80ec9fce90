"""Shared fixtures for end-to-end tests: the operator on the real platform: CRD, Secrets and ConfigMap as the chart creates them,
a tiny LongCat model, a local image server, and ``editflow operator run`` as a process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import ManagedProcess, free_port, wait_until
from editflow.devstack.stack import LocalStack

NAMESPACE = "edits"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Gate:
    """An image URL whose response waits until the test opens the gate (a long edit)."""

    released: threading.Event = field(default_factory=threading.Event)


class ImageHost:
    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), (200, 30, 30)).save(buf, format="PNG")
        self.png = buf.getvalue()
        self.gates: dict[str, Gate] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                name = self.path.strip("/")
                if name.startswith("gate-"):
                    host.gates.setdefault(name, Gate()).released.wait(timeout=120)
                    name = "red.png"
                if name == "red.png":
                    body, ctype = host.png, "image/png"
                elif name == "notes.txt":
                    body, ctype = b"this is not an image", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def gate(self) -> tuple[str, Gate]:
        name = f"gate-{uuid.uuid4().hex[:8]}"
        gate = self.gates.setdefault(name, Gate())
        return self.url(name), gate

    def close(self) -> None:
        for gate in self.gates.values():
            gate.released.set()
        self.server.shutdown()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


MODELS_PVC = "editflow-models"


@pytest.fixture(scope="session")
def tiny_model_root(stack: LocalStack) -> Path:
    """The tiny model goes where the process kubelet maps the models PVC, as on a cluster
    where the weights live on a PersistentVolume mounted read-only at /models."""
    root = stack.kubelet.root / "pvc" / NAMESPACE / MODELS_PVC
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "editflow.cli.main",
            "worker",
            "tiny-model",
            "--model",
            "longcat-image-edit",
            "--out",
            str(root / "longcat-image-edit"),
        ],
        check=True,
        capture_output=True,
    )
    return root


@dataclass
class OperatorHarness:
    stack: LocalStack
    api: KubeClient
    env: dict[str, str]
    workdir: Path
    process: ManagedProcess | None = None
    health_port: int = 0

    def start(self) -> None:
        self.health_port = free_port()
        env = {
            **self.env,
            "EDITFLOW_OPERATOR__HEALTH_PORT": str(self.health_port),
            "EDITFLOW_OPERATOR__METRICS_PORT": str(free_port()),
        }
        self.process = ManagedProcess(
            "operator",
            [sys.executable, "-m", "editflow.cli.main", "operator", "run"],
            log_path=self.workdir / "operator.log",
            env=env,
        )
        self.process.start()
        import urllib.request

        def healthy() -> bool:
            self.process.ensure_running()  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200

        wait_until(healthy, timeout=60, what="the operator's liveness endpoint")

    def kill(self) -> None:
        """SIGKILL: a crash, not a graceful stop."""
        assert self.process is not None and self.process.proc is not None
        self.process.proc.kill()
        self.process.proc.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def editjob(self, name: str) -> dict:
        return self.api.get(f"/apis/editflow.io/v1alpha1/namespaces/{NAMESPACE}/editjobs/{name}")

    def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict:
        seen: dict = {}

        def reached() -> bool:
            ej = self.editjob(name)
            seen.update(ej)
            return (ej.get("status") or {}).get("phase") in phases

        try:
            wait_until(reached, timeout=timeout, what=f"editjob {name} to reach {phases}")
        except TimeoutError as exc:
            log = self.process.log_tail(40) if self.process else ""
            raise AssertionError(
                f"{exc}; status={seen.get('status')}\noperator log:\n{log}"
            ) from None
        return seen


@pytest.fixture(scope="session")
def operator(
    stack: LocalStack, kubectl, tiny_model_root: Path, tmp_path_factory
) -> Iterator[OperatorHarness]:
    kubectl("apply", "-f", str(REPO / "charts" / "editflow" / "crds" / "editjob.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/editjobs.editflow.io")
    kubectl("create", "namespace", NAMESPACE)
    s3 = stack.s3_settings()
    kubectl("-n", NAMESPACE, "create", "serviceaccount", "editflow-worker")
    kubectl(
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "editflow-s3",
        f"--from-literal=access-key={s3.access_key.get_secret_value()}",
        f"--from-literal=secret-key={s3.secret_key.get_secret_value()}",
    )
    worker_env = {
        "EDITFLOW_S3__ENDPOINT": s3.endpoint,
        "EDITFLOW_S3__BUCKET": s3.bucket,
        "EDITFLOW_WORKER__DEVICE": "cpu",
        "EDITFLOW_WORKER__ALLOW_CIDRS": '["127.0.0.0/8"]',
        "EDITFLOW_WORKER__FETCH_TIMEOUT_SECONDS": "120",
    }
    kubectl(
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "editflow-worker",
        *[f"--from-literal={k}={v}" for k, v in worker_env.items()],
    )
    workdir = tmp_path_factory.mktemp("operator")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDITFLOW_")},
        "KUBECONFIG": str(stack.kubeconfig),
        "EDITFLOW_NAMESPACE": NAMESPACE,
        "EDITFLOW_LOG_FORMAT": "json",
        "EDITFLOW_NATS__URL": stack.nats_url,
        "EDITFLOW_S3__ENDPOINT": s3.endpoint,
        "EDITFLOW_S3__BUCKET": s3.bucket,
        "EDITFLOW_S3__ACCESS_KEY": s3.access_key.get_secret_value(),
        "EDITFLOW_S3__SECRET_KEY": s3.secret_key.get_secret_value(),
        "EDITFLOW_OPERATOR__WORKER_IMAGE": "editflow/worker:test",
        "EDITFLOW_OPERATOR__MODELS_PVC": MODELS_PVC,
        "EDITFLOW_OPERATOR__RESYNC_SECONDS": "2",
        "EDITFLOW_OPERATOR__BACKOFF_SECONDS": "1",
        "EDITFLOW_OPERATOR__MAX_RUNNING_PER_NAMESPACE": "1",
        "EDITFLOW_OPERATOR__WORKER_RESOURCES": json.dumps({"requests": {"cpu": "100m"}}),
        "EDITFLOW_EVENTS__ACK_WAIT_SECONDS": "10",
    }
    api = KubeClient(stack.kubeconfig)
    harness = OperatorHarness(stack=stack, api=api, env=env, workdir=workdir)
    harness.start()
    yield harness
    harness.stop()
    api.close()
