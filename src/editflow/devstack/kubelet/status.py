"""Pure builders for what the kubelet writes: Node objects and Pod status.

Kept free of I/O so the shapes the Job controller depends on (phase,
``state.terminated.exitCode``, conditions) are tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from editflow.devstack.kubelet.config import GPU_RESOURCE, KubeletConfig


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_capacity(config: KubeletConfig) -> dict[str, str]:
    """Capacity = allocatable: nothing is reserved for system daemons here."""
    return {
        "cpu": config.cpu,
        "memory": config.memory,
        "pods": str(config.max_pods),
        "ephemeral-storage": "100Gi",
        GPU_RESOURCE: str(config.gpus),
    }


def node_manifest(config: KubeletConfig) -> dict[str, Any]:
    """The Node object this agent registers."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.node_name,
            "labels": {
                "kubernetes.io/hostname": config.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "editflow-process-kubelet",
                **config.labels,
            },
        },
        "spec": {"taints": list(config.taints)},
    }


def node_status(config: KubeletConfig, kubelet_port: int, version: str) -> dict[str, Any]:
    """The full node status: Ready, no pressure, addresses, capacity, daemon endpoint."""
    capacity = node_capacity(config)
    stamp = now()

    def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }

    return {
        "capacity": capacity,
        "allocatable": dict(capacity),
        "conditions": [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            cond("Ready", "True", "KubeletReady", "process kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": config.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": "editflow-local",
            "systemUUID": "editflow-local",
            "bootID": "editflow-local",
            "kernelVersion": "process",
            "osImage": "editflow process kubelet",
            "containerRuntimeVersion": "process://1.0",
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


@dataclass(frozen=True)
class ContainerState:
    """One container as the status reports it."""

    name: str
    image: str
    state: dict[str, Any]
    ready: bool = False
    restart_count: int = 0
    container_id: str | None = None
    started: bool | None = None  # None: running means started (no startup probe)
    image_id: str | None = None
    last_state: dict[str, Any] | None = None  # the previous instance's end, after a restart

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    body = {"reason": reason}
    if message:
        body["message"] = message
    return {"waiting": body}


def running(started_at: str) -> dict[str, Any]:
    return {"running": {"startedAt": started_at}}


def terminated(
    exit_code: int, started_at: str, finished_at: str, message: str = "", reason: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
    }
    if message:
        body["message"] = message
    return {"terminated": body}


def pod_phase(containers: list[ContainerState]) -> str:
    """restartPolicy Never/OnFailure semantics for finished containers."""
    if containers and all(c.terminated for c in containers):
        ok = all(c.terminated["exitCode"] == 0 for c in containers)  # type: ignore[index]
        return "Succeeded" if ok else "Failed"
    if any("running" in c.state for c in containers) or any(c.terminated for c in containers):
        return "Running"
    return "Pending"


def pod_status(
    pod: dict[str, Any],
    containers: list[ContainerState],
    *,
    phase: str | None = None,
    reason: str | None = None,
    message: str | None = None,
    init_containers: list[ContainerState] | None = None,
) -> dict[str, Any]:
    """The status the kubelet writes (strategic-merge-patched onto the Pod)."""
    phase = phase or pod_phase(containers)
    # Ready is the containers' readiness (probes), not merely "running".
    all_ready = bool(containers) and all("running" in c.state and c.ready for c in containers)
    stamp = now()
    init_done = init_containers is None or all(
        c.terminated and c.terminated["exitCode"] == 0 for c in init_containers
    )

    def cond(kind: str, ok: bool, why: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": kind,
            "status": "True" if ok else "False",
            "lastTransitionTime": stamp,
        }
        if not ok and why:
            body["reason"] = why
        return body

    finished = phase in ("Succeeded", "Failed")
    ready_reason = "PodCompleted" if finished else "ContainersNotReady"
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": pod.get("status", {}).get("startTime") or stamp,
        "qosClass": pod.get("status", {}).get("qosClass", "BestEffort"),
        "conditions": [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", init_done, "ContainersNotInitialized"),
            cond("ContainersReady", all_ready and not finished, ready_reason),
            cond("Ready", all_ready and not finished, ready_reason),
        ],
        "containerStatuses": [_container_status(c) for c in containers],
    }
    if init_containers is not None:
        status["initContainerStatuses"] = [_container_status(c) for c in init_containers]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status


def _container_status(c: ContainerState) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id or f"process://{c.image}",
        "ready": c.ready,
        "started": ("running" in c.state) if c.started is None else c.started,
        "restartCount": c.restart_count,
        "state": c.state,
    }
    if c.container_id:
        body["containerID"] = c.container_id
    if c.last_state:
        body["lastState"] = c.last_state
    return body
