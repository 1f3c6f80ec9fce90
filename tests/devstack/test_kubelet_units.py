"""Pure parts of the process kubelet: fit checks, path mapping, env expansion, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from editflow.devstack.kubelet import status as st
from editflow.devstack.kubelet.config import KubeletConfig, image_repository
from editflow.devstack.kubelet.podspec import (
    ContainerConfigError,
    ImageNotMapped,
    PathMapper,
    expand,
    plan_container,
    resolve_env,
)
from editflow.devstack.kubelet.scheduling import fits, pod_requests


def node(gpus: str = "1", taints: list | None = None) -> dict:
    alloc = {"cpu": "4", "memory": "8Gi", "pods": "10", "nvidia.com/gpu": gpus}
    return {
        "metadata": {"labels": {"gpu": "a100"}},
        "spec": {"taints": taints or []},
        "status": {"allocatable": alloc},
    }


def pod(gpus: str | None = None, **spec: object) -> dict:
    resources = {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}], **spec},
        "status": {"phase": "Pending"},
    }


def test_gpu_limits_count_as_requests_and_a_full_node_says_why() -> None:
    assert pod_requests(pod("2"))["nvidia.com/gpu"] == 2
    running = pod("1")
    running["status"]["phase"] = "Running"
    verdict = fits(pod("1"), node("1"), [running])
    assert not verdict.ok and "Insufficient nvidia.com/gpu" in verdict.message
    finished = {**running, "status": {"phase": "Succeeded"}}
    assert fits(pod("1"), node("1"), [finished]).ok


def test_node_selector_and_taints_are_honoured() -> None:
    assert not fits(pod(nodeSelector={"gpu": "h100"}), node(), []).ok
    assert fits(pod(nodeSelector={"gpu": "a100"}), node(), []).ok
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    refused = fits(pod(), node(taints=[taint]), [])
    assert not refused.ok and "untolerated taint" in refused.message
    tolerated = pod(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    assert fits(tolerated, node(taints=[taint]), []).ok


def test_path_mapper_rewrites_mount_paths_only_on_path_boundaries(tmp_path: Path) -> None:
    mapper = PathMapper({"/models": tmp_path / "m", "/dev/termination-log": tmp_path / "t"})
    assert mapper("/models/longcat") == f"{tmp_path}/m/longcat"
    assert mapper("--weights=/models") == f"--weights={tmp_path}/m"
    assert mapper("/modelsX/keep") == "/modelsX/keep"
    assert mapper("/dev/termination-log") == f"{tmp_path}/t"
    nested = PathMapper({"/tmp": tmp_path / "empty", "/models": Path("/tmp/pvc/models")})
    assert nested("/models/x") == "/tmp/pvc/models/x"  # not re-mapped as the container's /tmp


def test_dollar_expansion_follows_kubernetes_rules() -> None:
    env = {"A": "1"}
    assert expand("x=$(A) y=$(B) z=$$(A)", env) == "x=1 y=$(B) z=$(A)"


def test_env_from_missing_secret_is_a_config_error_unless_optional() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    with pytest.raises(ContainerConfigError, match='secret "s" not found'):
        resolve_env(pod(), container, lambda *_: None, {})
    container["env"][0]["valueFrom"]["secretKeyRef"]["optional"] = True
    assert resolve_env(pod(), container, lambda *_: None, {}) == {}


def test_unknown_images_are_refused_and_tags_do_not_matter(tmp_path: Path) -> None:
    config = KubeletConfig(root=tmp_path)
    assert (
        image_repository("ghcr.io/acme/editflow/worker:1.2@sha256:abc")
        == "ghcr.io/acme/editflow/worker"
    )
    assert config.resolve_image("ghcr.io/acme/editflow/worker:1.2") is not None
    with pytest.raises(ImageNotMapped, match="no local runtime"):
        plan_container(
            pod(),
            {"name": "c", "image": "quay.io/nope:1"},
            pod_dir=tmp_path,
            volumes={},
            config=config,
            lookup=lambda *_: None,
            node_alloc={},
            service_env={},
        )


def test_pod_phase_from_container_states() -> None:
    ok = st.ContainerState("a", "i", st.terminated(0, "t", "t"))
    bad = st.ContainerState("b", "i", st.terminated(3, "t", "t"))
    run = st.ContainerState("c", "i", st.running("t"))
    assert st.pod_phase([ok]) == "Succeeded"
    assert st.pod_phase([ok, bad]) == "Failed"
    assert st.pod_phase([ok, run]) == "Running"
    assert st.pod_phase([st.ContainerState("d", "i", st.waiting("ContainerCreating"))]) == "Pending"


def test_several_workers_never_reconcile_one_pod_at_once_and_miss_no_change(tmp_path) -> None:
    """A benchmark node runs several workers (``workers``): like controller-runtime's work
    queue, a Pod that changes while a worker reconciles it waits for that worker, then is
    looked at once more, never by two workers at the same time."""
    import threading
    import time

    from editflow.devstack.kubelet.agent import ProcessKubelet

    config = KubeletConfig(root=tmp_path / "kubelet", workers=4, image_store=tmp_path / "img")
    agent = ProcessKubelet(None, config, api_port=None, kubelet_port=0)  # type: ignore[arg-type]
    running: dict[str, int] = {}
    overlaps: list[str] = []
    done: list[str] = []
    guard = threading.Lock()

    def reconcile(uid: str) -> None:
        with guard:
            running[uid] = running.get(uid, 0) + 1
            if running[uid] > 1:
                overlaps.append(uid)
        time.sleep(0.05)
        with guard:
            running[uid] -= 1
            done.append(uid)

    agent.reconcile = reconcile  # type: ignore[method-assign]
    threads = [threading.Thread(target=agent._worker_loop, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        agent.enqueue("a")
        time.sleep(0.01)  # a worker holds "a" now
        agent.enqueue("a")  # changed meanwhile: must be seen again, after the first look
        agent.enqueue("b")
        deadline = time.monotonic() + 5
        while done.count("a") < 2 or "b" not in done:
            assert time.monotonic() < deadline, done
            time.sleep(0.01)
    finally:
        agent.stop_event.set()
        for thread in threads:
            thread.join(timeout=2)
    assert overlaps == []
    assert done.count("a") == 2


def test_required_node_affinity_pins_a_daemonset_pod_to_its_node() -> None:
    """The DaemonSet controller pins each Pod with matchFields metadata.name: another node's
    kubelet must leave it alone; label expressions are honoured too."""
    here = {**node(), "metadata": {"name": "gpu-1", "labels": {"gpu": "a100"}}}

    def pinned(name: str, expressions: list | None = None) -> dict:
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}
        if expressions:
            term["matchExpressions"] = expressions
        required = {"nodeSelectorTerms": [term]}
        return pod(
            affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
        )

    assert fits(pinned("gpu-1"), here, []).ok
    elsewhere = fits(pinned("gpu-2"), here, [])
    assert not elsewhere.ok and elsewhere.reason == "NodeAffinity"
    assert not fits(
        pinned("gpu-1", [{"key": "gpu", "operator": "NotIn", "values": ["a100"]}]), here, []
    ).ok
    assert fits(pinned("gpu-1", [{"key": "gpu", "operator": "Exists"}]), here, []).ok
