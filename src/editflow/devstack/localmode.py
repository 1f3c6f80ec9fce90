"""Local mode: editflow itself installed on the embedded platform.

What the Helm chart does on a GPU cluster, done here in a few API calls: the
EditJob CRD, a namespace with the worker's ServiceAccount, the ``editflow-s3``
Secret and the ``editflow-worker`` ConfigMap, model weights on the models
"PVC" (a directory the process kubelet maps the claim to), and the operator
as a supervised process. The demo, ``editflow dev up --with-editflow``-style
tooling and the end-to-end tests all use this one path.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.devstack.kubeapi import KubeClient, KubeError
from editflow.devstack.procs import ManagedProcess, free_port, wait_until
from editflow.devstack.stack import LocalStack

NAMESPACE = "edits"
MODELS_PVC = "editflow-models"
CRD_NAME = "editjobs.editflow.io"
WORKER_IMAGE = "editflow/worker:local"


def _create(api: KubeClient, path: str, body: dict[str, Any]) -> None:
    try:
        api.post(path, body)
    except KubeError as exc:
        if exc.status != 409:
            raise


def install_crd(api: KubeClient) -> None:
    """The EditJob and EditOutcome CRDs, created or updated, then waited for."""
    from editflow.operator.crd import editjob_crd, editoutcome_crd

    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for crd in (editjob_crd(), editoutcome_crd()):
        name = crd["metadata"]["name"]
        try:
            api.post(path, crd)
        except KubeError as exc:
            if exc.status != 409:
                raise
            current = api.get(f"{path}/{name}")
            crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            api.put(f"{path}/{name}", crd)

        def established(name: str = name) -> bool:
            conds = api.get(f"{path}/{name}").get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        wait_until(established, timeout=30, what=f"the CRD {name} to be established")


def install_namespace(
    api: KubeClient, stack: LocalStack, namespace: str, *, worker_env: dict[str, str] | None = None
) -> None:
    """The namespace and everything a worker Job references in it (as the chart creates)."""
    s3 = stack.s3_settings()
    _create(api, "/api/v1/namespaces", {"metadata": {"name": namespace}})
    base = f"/api/v1/namespaces/{namespace}"
    _create(
        api,
        f"{base}/serviceaccounts",
        {"metadata": {"name": "editflow-worker"}, "automountServiceAccountToken": False},
    )
    _create(
        api,
        f"{base}/secrets",
        {
            "metadata": {"name": "editflow-s3"},
            "stringData": {
                "access-key": s3.access_key.get_secret_value(),
                "secret-key": s3.secret_key.get_secret_value(),
            },
        },
    )
    data = {
        "EDITFLOW_S3__ENDPOINT": s3.endpoint,
        "EDITFLOW_S3__BUCKET": s3.bucket,
        "EDITFLOW_WORKER__DEVICE": "cpu",
        # The demo and tests serve source images from loopback; a cluster never would.
        "EDITFLOW_WORKER__ALLOW_CIDRS": '["127.0.0.0/8"]',
        "EDITFLOW_WORKER__FETCH_TIMEOUT_SECONDS": "120",
        # Workers of a host-mapped image share the host's network here (a cluster gives each
        # Pod its own): a warm worker's /healthz port is any free one, not 8080 for all.
        "EDITFLOW_WORKER__HTTP_PORT": "0",
        **(worker_env or {}),
    }
    _create(api, f"{base}/configmaps", {"metadata": {"name": "editflow-worker"}, "data": data})


def models_dir(stack: LocalStack, namespace: str, claim: str = MODELS_PVC) -> Path:
    """Where the process kubelet mounts the models PVC from."""
    assert stack.kubelet is not None, "local mode needs the process kubelet"
    path = stack.kubelet.root / "pvc" / namespace / claim
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_tiny_model(root: Path, model: str = "longcat-image-edit") -> Path:
    """A random-weight model saved like real weights (seconds; nothing downloaded)."""
    target = root / model
    if (target / "model_index.json").exists():
        return target
    subprocess.run(
        [
            sys.executable,
            "-m",
            "editflow.cli.main",
            "worker",
            "tiny-model",
            "--model",
            model,
            "--out",
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    return target


def operator_env(stack: LocalStack, namespace: str, **operator: str) -> dict[str, str]:
    """The operator's environment: the settings the chart would set, pointing at this stack."""
    s3 = stack.s3_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITFLOW_")}
    env.update(
        KUBECONFIG=str(stack.kubeconfig),
        EDITFLOW_NAMESPACE=namespace,
        EDITFLOW_LOG_FORMAT="json",
        EDITFLOW_NATS__URL=stack.nats_url,
        EDITFLOW_S3__ENDPOINT=s3.endpoint,
        EDITFLOW_S3__BUCKET=s3.bucket,
        EDITFLOW_S3__ACCESS_KEY=s3.access_key.get_secret_value(),
        EDITFLOW_S3__SECRET_KEY=s3.secret_key.get_secret_value(),
        EDITFLOW_OPERATOR__WORKER_IMAGE=WORKER_IMAGE,
        EDITFLOW_OPERATOR__MODELS_PVC=MODELS_PVC,
        EDITFLOW_OPERATOR__WORKER_RESOURCES=json.dumps({"requests": {"cpu": "100m"}}),
        # The demo and tests serve source images from loopback; the bridge's and the
        # gateway's SSRF guard use the worker's allow-list, so it is allowed here too.
        EDITFLOW_WORKER__ALLOW_CIDRS='["127.0.0.0/8"]',
    )
    env.update({f"EDITFLOW_OPERATOR__{k.upper()}": v for k, v in operator.items()})
    return env


class OperatorProcess:
    """``editflow operator run`` supervised like the platform's servers."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.process: ManagedProcess | None = None
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> OperatorProcess:
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {
            **self.env,
            "EDITFLOW_OPERATOR__HEALTH_PORT": str(self.health_port),
            "EDITFLOW_OPERATOR__METRICS_PORT": str(self.metrics_port),
        }
        self.process = ManagedProcess(
            "operator",
            [sys.executable, "-m", "editflow.cli.main", "operator", "run"],
            log_path=self.workdir / "operator.log",
            env=env,
        )
        self.process.start()

        def healthy() -> bool:
            self.process.ensure_running()  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200

        wait_until(healthy, timeout=60, what="the operator's liveness endpoint")
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, not a graceful stop."""
        assert self.process is not None and self.process.proc is not None
        self.process.proc.kill()
        self.process.proc.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else ""


class GatewayProcess:
    """``editflow gateway run`` on a free loopback port, with a generated Bearer token."""

    def __init__(self, env: dict[str, str], workdir: Path, token: str) -> None:
        self.env = env
        self.workdir = workdir
        self.token = token
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        self.port = free_port()
        env = {**self.env, "EDITFLOW_GATEWAY__TOKEN": self.token}
        self.process = ManagedProcess(
            "gateway",
            [
                sys.executable,
                "-m",
                "editflow.cli.main",
                "gateway",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            log_path=self.workdir / f"gateway-{self.port}.log",
            env=env,
        )
        self.process.start()

        def ready() -> bool:
            self.process.ensure_running()  # type: ignore[union-attr]
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:  # noqa: S310
                return resp.status == 200

        wait_until(ready, timeout=60, what="the gateway to be ready")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass
class EditflowLocal:
    """editflow running on a LocalStack: what `editflow dev up` gives a person."""

    operator: OperatorProcess
    gateway: GatewayProcess

    def stop(self) -> None:
        self.gateway.stop()
        self.operator.stop()


def install_editflow(stack: LocalStack, models_dir_override: Path | None = None) -> None:
    """The CRDs, the namespace's worker objects, and weights on its models PVC: the real
    model linked from ``models_dir_override`` (holding ``longcat-image-edit/``), else the
    tiny one. Host processes see the link's target; Pods in their images do not (see
    editflow.devstack.release for those)."""
    api = KubeClient(stack.kubeconfig)
    try:
        install_crd(api)
        install_namespace(api, stack, NAMESPACE)
    finally:
        api.close()
    root = models_dir(stack, NAMESPACE)
    real = models_dir_override and models_dir_override / "longcat-image-edit"
    if real and (real / "model_index.json").exists():
        link = root / "longcat-image-edit"
        if not link.exists():
            link.symlink_to(real)
    else:
        build_tiny_model(root)


def start_editflow(stack: LocalStack, *, models_dir_override: Path | None = None) -> EditflowLocal:
    """Install editflow on ``stack`` and run its operator and gateway (tiny model by default)."""
    install_editflow(stack, models_dir_override)
    env = operator_env(stack, NAMESPACE)
    operator = OperatorProcess(env, stack.workdir).start()
    try:
        gateway = GatewayProcess(env, stack.workdir, secrets.token_urlsafe(24)).start()
    except BaseException:
        operator.stop()
        raise
    return EditflowLocal(operator=operator, gateway=gateway)
