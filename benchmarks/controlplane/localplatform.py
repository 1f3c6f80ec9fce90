"""The platform one benchmark level runs on: LocalStack, a roomy node, editflow installed.

What differs from local mode (``editflow.devstack.localmode``), and why:

* the process kubelet maps the benchmark's stub image to
  :mod:`controlplane.stub_worker` (``worker run``, Job mode) or
  :mod:`controlplane.stub_warm_worker` (``worker serve``, warm mode), and the
  peer's consumer image to the project's Python, through an explicit host-command
  image mapping, and advertises enough GPUs, CPU and Pod slots that a Job never waits for the
  node: the benchmark times the control plane, not a full node;
* the namespace cap is set out of the way for the same reason;
* finished Jobs are kept for minutes (the operator reads the termination
  message while the Job exists) and then collected, as on a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.devstack import localmode
from editflow.devstack.components import KubeAPIServer, ProcessKubeletServer
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.kubelet.config import KubeletConfig
from editflow.devstack.stack import LocalStack

HERE = Path(__file__).resolve().parent
NAMESPACE = localmode.NAMESPACE
STUB_IMAGE = "editflow-bench/stub-worker:1"
PEER_IMAGE = "editflow-bench/keda-consumer:1"
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


class ConfiguredKubelet(ProcessKubeletServer):
    """The project's process kubelet, started with a JSON config (``--config-file``)."""

    def __init__(self, workdir: Path, api: KubeAPIServer, *, gpus: int, config: Path) -> None:
        super().__init__(workdir, api, gpus=gpus)
        self.config = config

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super()._spawn([*argv, f"--config-file={self.config}"], env)


def write_stub_launcher(directory: Path) -> Path:
    """``<directory>/editflow``: what the stub image's ``editflow`` command resolves to."""
    directory.mkdir(parents=True, exist_ok=True)
    launcher = directory / "editflow"
    # Job mode, -S: no site-packages (the stub needs only the standard library), so it starts
    # in ms. Warm mode (``worker serve``): the real worker's loop, so the project's packages.
    launcher.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "worker serve" ]; then\n'
        f'  exec "{sys.executable}" "{HERE / "stub_warm_worker.py"}" "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" -S -E "{HERE / "stub_worker.py"}" "$@"\n'
    )
    launcher.chmod(0o755)
    return directory


def write_node_config(workdir: Path, *, pods: int) -> Path:
    """The kubelet config: image mappings and a node with room for ``pods`` Pods."""
    stub_bin = write_stub_launcher(workdir / "stub-bin")
    venv_bin = str(Path(sys.executable).parent)
    config = {
        "images": {
            "editflow-bench/stub-worker*": {
                "path": [str(stub_bin), *SYSTEM_PATH],
                "entrypoint": ["editflow"],
            },
            "editflow-bench/keda-consumer*": {
                "path": [venv_bin, *SYSTEM_PATH],
                "entrypoint": ["python"],
            },
        },
        "cpu": str(max(8, pods // 10)),
        "memory": f"{max(32, pods)}Gi",
        "max_pods": pods,
        # Dozens of Pods a second: each waits on apiserver round trips, so run several at once.
        "workers": 6,
    }
    if "host_images" in {f.name for f in dataclasses.fields(KubeletConfig)}:
        # A kubelet that runs real images with runc maps images to host commands
        # only when asked to: the stub is a host command on purpose.
        config["host_images"] = True
    path = workdir / "bench-kubelet.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@dataclass
class BenchPlatform:
    stack: LocalStack
    api: KubeClient

    @property
    def apiserver(self) -> KubeAPIServer:
        assert self.stack.apiserver is not None
        return self.stack.apiserver


def start_platform(*, pods: int = 5000) -> BenchPlatform:
    """A fresh LocalStack with editflow's CRD and namespace installed (no operator yet)."""
    stack = LocalStack(gpus=pods)
    assert stack.apiserver is not None
    stack.kubelet = ConfiguredKubelet(
        stack.workdir,
        stack.apiserver,
        gpus=pods,
        config=write_node_config(stack.workdir, pods=pods),
    )
    stack.start()
    try:
        api = KubeClient(stack.kubeconfig)
        localmode.install_crd(api)
        localmode.install_namespace(api, stack, NAMESPACE)
        localmode.models_dir(stack, NAMESPACE)  # the PVC directory the worker Pods mount
    except BaseException:
        stack.stop()
        raise
    return BenchPlatform(stack=stack, api=api)


def operator_env(platform: BenchPlatform, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Local mode's operator settings, with the stub image and the cap out of the way."""
    env = localmode.operator_env(
        platform.stack,
        NAMESPACE,
        worker_image=STUB_IMAGE,
        max_running_per_namespace="1000000",
        job_ttl_seconds="300",
        worker_resources=json.dumps({"requests": {"cpu": "10m"}}),
    )
    env.update(extra or {})
    return env


def start_operator(platform: BenchPlatform, env: dict[str, str]) -> localmode.OperatorProcess:
    """``editflow operator run`` as a process, as tests/harness.py runs it."""
    return localmode.OperatorProcess(env, platform.stack.workdir).start()


def platform_pids(platform: BenchPlatform, **more: int) -> dict[str, int]:
    """The processes a step's CPU is split by: the platform's servers, this client, ``more``."""
    pids = {
        comp.name: comp.process.pid
        for comp in platform.stack.started
        if comp.process is not None and comp.process.pid is not None
    }
    return {**pids, **more, "benchmark_client": os.getpid()}
