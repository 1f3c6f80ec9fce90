"""Pure parts of running Pods in their images: probe rules, securityContext mapping,
image names, scheduling on cordoned nodes and host ports, pull back-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from editflow.devstack.kubelet import oci
from editflow.devstack.kubelet.images import (
    ImagePuller,
    ImageStore,
    Waiting,
    credentials_for,
    qualify,
)
from editflow.devstack.kubelet.podspec import ContainerConfigError
from editflow.devstack.kubelet.probes import ProbeTracker
from editflow.devstack.kubelet.scheduling import fits
from editflow.devstack.procs import free_port, wait_until


def node(*, unschedulable: bool = False) -> dict:
    return {
        "metadata": {"labels": {}},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"}},
    }


def pod(name: str = "p", *, host_port: int | None = None, **spec: object) -> dict:
    container: dict = {"name": "c", "image": "busybox"}
    if host_port:
        container["ports"] = [{"containerPort": 8080, "hostPort": host_port}]
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"containers": [container], **spec},
        "status": {"phase": "Running"},
    }


def test_a_cordoned_node_refuses_pods_in_the_schedulers_words_unless_tolerated() -> None:
    fit = fits(pod(), node(unschedulable=True), [])
    assert not fit.ok
    assert fit.message == "0/1 nodes are available: 1 node(s) were unschedulable."
    tolerant = pod(tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}])
    assert fits(tolerant, node(unschedulable=True), []).ok


def test_two_pods_cannot_take_the_same_host_port_on_one_node() -> None:
    first = pod("a", host_port=18080)
    fit = fits(pod("b", host_port=18080), node(), [first])
    assert not fit.ok and "didn't have free ports" in fit.message
    assert fits(pod("c", host_port=18081), node(), [first]).ok


def test_readiness_needs_its_success_threshold_and_fails_after_its_failure_threshold() -> None:
    spec = {
        "name": "c",
        "readinessProbe": {"periodSeconds": 1, "successThreshold": 2, "failureThreshold": 2},
    }
    tracker = ProbeTracker(spec, started_mono=0.0)
    assert tracker.started and not tracker.ready
    tracker.record("readinessProbe", True, "", 1.0)
    assert not tracker.ready  # one success of two
    tracker.record("readinessProbe", True, "", 2.0)
    assert tracker.ready
    tracker.record("readinessProbe", False, "refused", 3.0)
    assert tracker.ready  # one failure of two
    tracker.record("readinessProbe", False, "refused", 4.0)
    assert not tracker.ready and tracker.kill_reason() is None  # readiness never kills


def test_liveness_waits_for_startup_and_initial_delay_then_asks_for_a_restart() -> None:
    spec = {
        "name": "c",
        "startupProbe": {"periodSeconds": 1},
        "livenessProbe": {"initialDelaySeconds": 5, "periodSeconds": 1, "failureThreshold": 1},
    }
    tracker = ProbeTracker(spec, started_mono=0.0)
    assert tracker.due(0.0) == ["startupProbe"]  # the startup probe runs alone
    assert not tracker.started and not tracker.ready
    tracker.record("startupProbe", True, "", 0.0)
    assert tracker.started and tracker.ready  # no readiness probe: started means ready
    assert tracker.due(1.0) == []  # liveness still in its initial delay
    assert tracker.due(5.0) == ["livenessProbe"]
    tracker.record("livenessProbe", False, "dial tcp: connection refused", 5.0)
    assert tracker.kill_reason() == (
        "failed liveness probe, will be restarted (dial tcp: connection refused)"
    )


def test_capabilities_start_from_containerds_defaults() -> None:
    assert oci.capabilities({}) == sorted(oci.DEFAULT_CAPABILITIES)
    dropped = oci.capabilities({"capabilities": {"drop": ["NET_RAW", "CAP_CHOWN"]}})
    assert "CAP_NET_RAW" not in dropped and "CAP_CHOWN" not in dropped and "CAP_KILL" in dropped
    only = oci.capabilities({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}})
    assert only == ["CAP_NET_BIND_SERVICE"]


def test_image_users_resolve_through_the_images_passwd(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:10001:10002::/app:/x\n")
    layers = (layer,)
    assert oci.image_user("", layers) == (0, None, "")
    assert oci.image_user("10001", layers) == (10001, None, "")
    assert oci.image_user("app", layers) == (10001, 10002, "app")
    assert oci.image_user("ghost", layers) == (None, None, "ghost")
    assert oci.home_dir(10001, layers) == "/app"


def test_run_as_non_root_messages_are_the_kubelets() -> None:
    the_pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
    container = {"name": "c"}
    secure = {"runAsNonRoot": True}
    with pytest.raises(ContainerConfigError) as root:
        oci.verify_run_as_non_root(the_pod, container, secure, 0, "")
    assert str(root.value) == (
        'container has runAsNonRoot and image will run as root (pod: "p_ns(u)", container: c)'
    )
    with pytest.raises(ContainerConfigError, match="non-numeric user \\(app\\)"):
        oci.verify_run_as_non_root(the_pod, container, secure, None, "app")
    oci.verify_run_as_non_root(the_pod, container, secure, 10001, "")
    oci.verify_run_as_non_root(the_pod, container, {**secure, "runAsUser": 5}, 0, "")


def test_unqualified_images_come_from_the_default_registry() -> None:
    assert qualify("editflow/worker:1", "127.0.0.1:5000") == "127.0.0.1:5000/editflow/worker:1"
    assert qualify("127.0.0.1:6000/x:1", "127.0.0.1:5000") == "127.0.0.1:6000/x:1"
    assert qualify("busybox", None) == "docker.io/library/busybox"
    assert qualify("ghcr.io/acme/x:2", "127.0.0.1:5000") == "ghcr.io/acme/x:2"


def test_a_failed_pull_reports_err_image_pull_then_image_pull_back_off(tmp_path: Path) -> None:
    # A real skopeo against a port where no registry listens.
    puller = ImagePuller(ImageStore(tmp_path / "store"))
    reference = f"127.0.0.1:{free_port()}/nothing/here:1"
    seen: list[Waiting] = []

    def failed() -> bool:
        got = puller.get(reference, reference)
        assert isinstance(got, Waiting)
        seen.append(got)
        return got.reason == "ImagePullBackOff"

    try:
        wait_until(failed, timeout=60, what="the pull to fail")
    finally:
        puller.shutdown()
    reasons = [w.reason for w in seen]
    assert reasons[0] == "ContainerCreating"
    assert reasons[-2:] == ["ErrImagePull", "ImagePullBackOff"]
    assert reference in seen[-2].message
    assert seen[-1].message.startswith(f'Back-off pulling image "{reference}": ErrImagePull: ')


def test_pull_credentials_come_from_the_secret_naming_the_images_registry() -> None:
    import base64

    token = base64.b64encode(b"robot:pw").decode()
    configs = [
        {"auths": {"ghcr.io": {"username": "someone", "password": "else"}}},
        {"auths": {"https://127.0.0.1:5000/v1/": {"auth": token}}},
    ]
    assert credentials_for("127.0.0.1:5000/editflow/worker:1", configs) == "robot:pw"
    assert credentials_for("ghcr.io/acme/x:1", configs) == "someone:else"
    assert credentials_for("quay.io/x:1", configs) is None
    assert credentials_for("127.0.0.1:5000/x:1", [{"127.0.0.1:5000": {"auth": token}}]) == (
        "robot:pw"  # the older .dockercfg shape: the auths map itself
    )


def test_a_new_image_retires_the_oldest_of_its_repository_and_layers_nothing_names(
    tmp_path: Path,
) -> None:
    """Issue 19: every build was a new digest and the store only grew."""
    import json
    import os

    store = ImageStore(tmp_path)
    (tmp_path / "images").mkdir()
    layers = tmp_path / "layers"

    def record(name: str, reference: str, layer_names: list[str], age: int) -> Path:
        for layer in layer_names:
            (layers / layer).mkdir(parents=True, exist_ok=True)
        path = tmp_path / "images" / f"{name}.json"
        path.write_text(
            json.dumps({"reference": reference, "layers": [str(layers / n) for n in layer_names]})
        )
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
        return path

    record("w1", "127.0.0.1:5000/editflow/worker:a", ["deps-old", "app1"], age=30)
    record("w2", "127.0.0.1:6001/editflow/worker:b", ["deps-old", "app2"], age=20)
    record("bb", "127.0.0.1:5000/busybox:1", ["busybox"], age=100)
    newest = record("w3", "127.0.0.1:5000/editflow/worker:c", ["deps-new", "app3"], age=0)
    removed = store._prune(keep=newest)
    assert sorted(p.name for p in removed) == ["app1"]
    assert not (tmp_path / "images" / "w1.json").exists()
    # deps-old is still under w2, the one before the newest; busybox is another repository.
    assert sorted(p.name for p in layers.iterdir()) == [
        "app2",
        "app3",
        "busybox",
        "deps-new",
        "deps-old",
    ]
