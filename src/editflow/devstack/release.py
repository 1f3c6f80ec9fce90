"""editflow on the local stack as a cluster operator installs it: ``helm install`` from its images.

``make demo`` and ``editflow dev up`` run editflow this way (issue #12): the chart in
``charts/editflow`` is installed with the images ``make images`` built
(:func:`editflow.devstack.images.publish`), pulled from the stack's own registry. The
operator and gateway Pods run in the control-plane image and the worker Jobs in the
worker image, under the chart's securityContext (uid 10001, read-only root, no
capabilities), each Pod in its own network namespace (see
:mod:`editflow.devstack.kubelet.netbridge`). Nothing of editflow runs from the host's
virtualenv; the host only builds the images and drives the platform.

What differs from a real cluster is only what the local platform lacks, and it is set
in :func:`local_values`: MinIO's root keys are handed to the chart, workers run on the
CPU, the source allow-list admits loopback (the demo serves images from there), and a
models PVC points at a directory on this machine (the tiny model, or
``EDITFLOW_DEMO_MODELS_DIR``).

NATS is not one of those differences (issue 20 §2): the platform's NATS gets the chart's
per-role users and permissions before the install (:func:`require_nats_users`), so what a
newcomer runs is what production runs, and the host publishes as the OA system's user.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from editflow.core.settings import NatsSettings
from editflow.devstack import images, installer, localmode
from editflow.devstack.images import BuiltImage, chart_values, repo_root
from editflow.devstack.kubeapi import KubeClient, KubeError
from editflow.devstack.stack import LocalStack

#: The release name ``make demo`` and ``editflow dev up`` install.
RELEASE = "editflow"

#: Seconds a Pod of the chart gets to become Ready in its image (first pull included).
READY_TIMEOUT = 240.0

Reporter = Callable[[str], None]


#: The images editflow runs from: control-plane (operator, gateway) and worker.
TARGETS = ("control-plane", "worker")


def publish_images(console: Console, *, push: bool = True) -> list[BuiltImage]:
    """Both images, built or found by their content hash, and (``push``) in the registry
    storage every stack serves: seconds when warm. Progress on a spinner; builds and
    pushes are printed, skips are not. ``push=False`` when they were just pushed (the
    background half of ``editflow dev up``): the hash check alone."""
    began = time.monotonic()
    with console.status("images: checking the content hash") as spinner:

        def report(line: str) -> None:
            spinner.update(f"images: {line[:110]}")
            if "skipped" not in line and ("built" in line or "push" in line):
                console.print(f"  {line}", markup=False, highlight=False)

        if push:
            built = images.publish(TARGETS, report=report)
        else:
            built = images.build(TARGETS, report=report)
    tags = ", ".join(f"{name}:{image.tag}" for image in built for name in image.names)
    console.print(f"images ready in {time.monotonic() - began:.1f}s: {tags}")
    return built


def images_unavailable() -> str | None:
    """Why editflow cannot run from its images on this machine, or None when it can.

    Building (buildah's overlay storage) and running (runc, a network namespace per Pod)
    need root and Debian's image tools (``scripts/bootstrap.sh`` installs them as root).
    """
    if os.geteuid() != 0:
        return "building and running images needs root (buildah overlay storage, runc)"
    missing = [tool for tool in ("buildah", "skopeo", "runc") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/bootstrap.sh installs them as root)"
    return None


def chart_dir() -> Path:
    """``charts/editflow`` of this checkout: the chart a cluster operator installs."""
    return repo_root() / "charts" / "editflow"


def helm(
    stack: LocalStack, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the cached ``helm`` against ``stack``, with helm's own state inside the stack's
    workdir (never the user's ``~/.config/helm``)."""
    home = stack.workdir / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(stack.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(installer.binary("helm")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed:\n{result.stderr.strip()}")
    return result


def local_values(stack: LocalStack, built: Sequence[BuiltImage]) -> dict[str, Any]:
    """Chart values for this stack: its registry's images, its NATS and MinIO, CPU workers.

    Every value here is a documented chart value; the platform-specific ones are
    explained in the module docstring.
    """
    if stack.registry is None:
        raise ValueError("the stack has no registry: start it with LocalStack(registry=True)")
    s3 = stack.s3_settings()
    values: dict[str, Any] = chart_values(stack.registry.address, built)
    values.update(
        {
            # The chart's per-role users, loaded into the platform's NATS before the install.
            "nats": {"url": stack.nats_url, "auth": {"method": "userPassword"}},
            "s3": {
                "endpoint": s3.endpoint,
                "bucket": s3.bucket,
                "accessKey": s3.access_key.get_secret_value(),
                "secretKey": s3.secret_key.get_secret_value(),
            },
            "models": {"pvc": {"enabled": True}},
            "events": {
                # The platform's NATS keeps nothing across its restarts either.
                "storage": "memory",
                # The demo publishes as the SDK does by default: unsigned.
                "signingKey": {"enabled": False},
            },
        }
    )
    values.setdefault("operator", {}).update(replicas=1)
    values.setdefault("gateway", {}).update(enabled="gateway" in _names(built), replicas=1)
    worker = values.setdefault("worker", {})
    worker.update(
        device="cpu",
        allowCidrs=["127.0.0.0/8"],
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {}},
    )
    return values


def _names(built: Sequence[BuiltImage]) -> set[str]:
    return {name for image in built for name in image.names}


@dataclass
class Release:
    """A ``helm install``-ed editflow on a LocalStack, and the handles a person needs."""

    stack: LocalStack
    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        """The chart's ``editflow.fullname``: the release name when it contains "editflow"."""
        return self.name if "editflow" in self.name else f"{self.name}-editflow"

    #: The chart's NATS passwords by Secret key (``publisher-password``, ...).
    nats_passwords: dict[str, str] | None = None

    @property
    def models_claim(self) -> str:
        return f"{self.fullname}-models"

    def nats_settings(self, role: str = "publisher") -> NatsSettings:
        """How the host connects as ``role`` (the OA system by default): the chart's user."""
        if not self.nats_passwords:
            raise RuntimeError("this release's NATS has no users (require_nats_users not run)")
        return NatsSettings(
            url=self.stack.nats_url,
            user=f"editflow-{role}",
            password=self.nats_passwords[f"{role}-password"],
        )

    def api(self) -> KubeClient:
        return KubeClient(self.stack.kubeconfig)

    def pods(self, component: str) -> list[dict]:
        api = self.api()
        try:
            selector = f"app.kubernetes.io/component={component}"
            path = f"/api/v1/namespaces/{self.namespace}/pods"
            return api.get(path, labelSelector=selector)["items"]
        finally:
            api.close()

    def wait_ready(self, component: str, timeout: float = READY_TIMEOUT) -> dict:
        """The first Ready Pod of ``component``; on timeout, an error with each Pod's state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.pods(component)
            for pod in pods:
                if _ready(pod):
                    return pod
            time.sleep(0.5)
        states = {
            p["metadata"]["name"]: p.get("status", {}).get("containerStatuses")
            for p in self.pods(component)
        }
        raise TimeoutError(
            f"no {component} Pod of release {self.name} became Ready in its image within "
            f"{timeout:.0f}s; container states: {json.dumps(states)[:2000]}"
        )

    def gateway_token(self) -> str:
        """The Bearer token the chart generated (Secret ``<fullname>-gateway-token``)."""
        api = self.api()
        try:
            path = f"/api/v1/namespaces/{self.namespace}/secrets/{self.fullname}-gateway-token"
            return base64.b64decode(api.get(path)["data"]["token"]).decode()
        finally:
            api.close()


def _ready(pod: dict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def install(
    stack: LocalStack,
    built: Sequence[BuiltImage],
    *,
    name: str = RELEASE,
    namespace: str = localmode.NAMESPACE,
    models_dir: Path | None = None,
    extra_values: dict[str, Any] | None = None,
) -> Release:
    """``helm install`` editflow on ``stack`` from ``built`` images, the CRD included.

    The models PVC is filled before the install: with the real model from
    ``models_dir`` (a directory holding ``longcat-image-edit/`` saved by
    ``save_pretrained``), else with the tiny random-weight pipeline.
    """
    api = KubeClient(stack.kubeconfig)
    try:
        try:
            api.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
        except KubeError as exc:
            if exc.status != 409:
                raise
    finally:
        api.close()
    release = Release(stack=stack, name=name, namespace=namespace)
    _fill_models(localmode.models_dir(stack, namespace, release.models_claim), models_dir)
    values = local_values(stack, built)
    if extra_values:
        merge_values(values, extra_values)
    values_path = stack.workdir / f"{name}-values.yaml"
    values_path.write_text(yaml.safe_dump(values, sort_keys=False))
    values_path.chmod(0o600)  # it holds MinIO's keys
    if values["nats"]["auth"]["method"] == "userPassword":
        release.nats_passwords = require_nats_users(release, values_path)
    helm(stack, "install", name, str(chart_dir()), "-n", namespace, "-f", str(values_path))
    return release


def require_nats_users(release: Release, values_path: Path) -> dict[str, str]:
    """Give the platform's NATS the chart's users before ``helm install`` (issue 20 §2).

    The platform's NATS runs before helm generates any password. So the chart is rendered as
    for its bundled NATS (its ``authorization.conf``, passwords as ``$VAR``, and the Secret
    that holds them), the Secret is created with helm's ownership marks (the install adopts
    it, and the chart's ``lookup`` keeps its passwords: the worker Secret of each namespace
    gets the same), and the platform's NATS restarts with those users. Returns the passwords
    by Secret key.
    """
    stack, name, namespace = release.stack, release.name, release.namespace
    rendered = helm(
        stack, "template", name, str(chart_dir()), "-n", namespace, "-f", str(values_path),
        "--set", "nats.bundled.enabled=true",
        "--show-only", "templates/bundled-nats.yaml", "--show-only", "templates/secrets.yaml",
    )  # fmt: skip
    objs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    secret_name = f"{release.fullname}-nats"
    (secret,) = (o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == secret_name)
    (config,) = (o for o in objs if o["kind"] == "ConfigMap")
    (server,) = (o for o in objs if o["kind"] == "StatefulSet")
    data = secret["data"]
    passwords = {key: base64.b64decode(value).decode() for key, value in data.items()}
    env = {
        var["name"]: passwords[var["valueFrom"]["secretKeyRef"]["key"]]
        for var in server["spec"]["template"]["spec"]["containers"][0]["env"]
        if (var.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") == secret_name
    }
    api = KubeClient(stack.kubeconfig)
    try:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": secret_name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": name,
                    "meta.helm.sh/release-namespace": namespace,
                },
            },
            "data": data,
        }
        api.post(f"/api/v1/namespaces/{namespace}/secrets", body)
    finally:
        api.close()
    assert stack.nats is not None
    stack.nats.require_users(config["data"]["authorization.conf"], env)
    return passwords


def has_real_model(models_dir: Path | None) -> bool:
    """Whether ``models_dir`` holds ``longcat-image-edit/`` saved by ``save_pretrained``."""
    return bool(models_dir) and (models_dir / "longcat-image-edit" / "model_index.json").exists()


def _fill_models(root: Path, real: Path | None) -> None:
    """The claim's directory: the real weights (as a link to them), else the tiny model.

    The claim directory itself becomes the link: the kubelet bind-mounts it into the
    worker, and a link *inside* it would point at a host path the container cannot see.
    The worker runs as uid 10001, so the real weights must be world-readable.
    """
    if real is not None and has_real_model(real):
        if not root.is_symlink():
            if any(root.iterdir()):
                raise RuntimeError(f"{root} already holds models; remove it to use {real}")
            root.rmdir()
            root.symlink_to(real.resolve(), target_is_directory=True)
        return
    localmode.build_tiny_model(root)


def merge_values(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into ``base`` in place, maps key by key (as helm merges ``-f`` files)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_values(base[key], value)
        else:
            base[key] = value
    return base


@dataclass
class GatewayForward:
    """The chart's gateway Pod reached from the host: what ``editflow dev up`` hands out."""

    url: str
    token: str
    forward: Any  # netbridge.PortForward

    def close(self) -> None:
        self.forward.close()


def forward_gateway(release: Release, host_port: int = 0) -> GatewayForward:
    """Wait for a Ready gateway Pod and relay a host loopback port to its port 8000
    (``kubectl port-forward``: the Pod lives in its own network namespace)."""
    assert release.stack.kubelet is not None, "the chart's Pods need the process kubelet"
    pod = release.wait_ready("gateway")
    port = next(
        (
            p["containerPort"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
            if p.get("name") == "http"
        ),
        8000,
    )
    forward = release.stack.kubelet.port_forward(pod, port, host_port)
    return GatewayForward(
        url=f"http://127.0.0.1:{forward.host_port}", token=release.gateway_token(), forward=forward
    )
