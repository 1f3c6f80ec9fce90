"""`helm install` with editflow's own images from the local registry: Pods run in their images.

A stack of its own with the registry and the process kubelet running containers in their
images (no host-command mapping); the chart's ``image.repository``/``tag``/``pullPolicy``
and ``imagePullSecrets`` name the images :func:`editflow.devstack.images.publish` pushed.
The chart's securityContext (uid 10001, read-only root, no capabilities) is what runs.

The approval round trip needs the worker image, which ``EDITFLOW_TEST_WORKER_IMAGE=0``
leaves out (see conftest.py); the control plane runs always.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from editflow.core.settings import EventsSettings, NatsSettings, Settings
from editflow.devstack import images, localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.kubelet import runtime
from editflow.devstack.kubelet.podspec import pod_dir_for
from editflow.devstack.procs import wait_until
from editflow.devstack.release import merge_values
from editflow.devstack.stack import LocalStack
from editflow.events.sdk import OAClient, Person
from editflow.operator.crd import editjob_path
from editflow.operator.names import editjob_name
from tests.chart.test_install import install, isolated_events, local_values
from tests.images.conftest import REPO, WORKER_ENV, worker_image_wanted

pytestmark = [pytest.mark.platform, pytest.mark.slow]

PULL_SECRET = "local-registry"


@pytest.fixture(scope="module")
def published(build_log: list[str]) -> dict[str, images.BuiltImage]:
    if os.geteuid() != 0:
        pytest.skip("Pods in their images need root (buildah, runc, overlay mounts)")
    targets = ["control-plane", "worker"] if worker_image_wanted() else ["control-plane"]
    return {
        image.target: image for image in images.publish(targets, report=build_log.append, repo=REPO)
    }


@pytest.fixture(scope="module")
def image_stack(published) -> Iterator[LocalStack]:
    with LocalStack(registry=True) as running:
        yield running


def _image_values(stack: LocalStack, published: dict[str, images.BuiltImage]) -> dict[str, Any]:
    registry = stack.registry.address
    values: dict[str, Any] = images.chart_values(registry, list(published.values()))
    if "worker" not in published:
        # Never pulled by these tests; a name in the registry all the same.
        values["worker"] = {"image": {"repository": f"{registry}/editflow/worker", "tag": "absent"}}
    values["imagePullSecrets"] = [{"name": PULL_SECRET}]
    values["worker"]["imagePullSecrets"] = [{"name": PULL_SECRET}]
    return values


def _pull_secret(api: KubeClient, namespace: str, registry: str) -> None:
    """A dockerconfigjson Secret for the registry (it needs none; the chart must wire it)."""
    config = {"auths": {registry: {"auth": ""}}}
    api.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": PULL_SECRET},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": json.dumps(config)},
        },
    )


@pytest.fixture(scope="module")
def release(image_stack: LocalStack, published, image_host, tmp_path_factory) -> Iterator[dict]:
    tag = uuid.uuid4().hex[:6]
    name, namespace = f"img{tag}", f"ef-img-{tag}"
    api = KubeClient(image_stack.kubeconfig)
    api.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
    _pull_secret(api, namespace, image_stack.registry.address)
    localmode.build_tiny_model(
        localmode.models_dir(image_stack, namespace, f"{name}-editflow-models")
    )
    # Pods live in network namespaces of their own: publish the test's image server to them.
    image_stack.kubelet.publish_host_ports([image_host.server.server_address[1]])
    values = merge_values(
        local_values(image_stack, tag, image_stack.nats_url), _image_values(image_stack, published)
    )
    # The gateway is Ready once it sees this test's streams (its /readyz checks them).
    values["gateway"].update(enabled=True, extraEnv=isolated_events(tag))
    workdir = tmp_path_factory.mktemp("release")
    install(image_stack, workdir, name, namespace, values)
    try:
        yield {"name": name, "namespace": namespace, "tag": tag, "api": api, "workdir": workdir}
    finally:
        # No `helm uninstall`: the stack is this module's own, and stopping it ends every Pod.
        api.close()


def _pods(api: KubeClient, namespace: str, component: str) -> list[dict]:
    selector = f"app.kubernetes.io/component={component}"
    return api.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]


def _ready(pod: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def _wait_ready(api: KubeClient, namespace: str, component: str) -> dict:
    try:
        wait_until(
            lambda: any(_ready(p) for p in _pods(api, namespace, component)),
            timeout=240,
            what=f"the chart's {component} Pod to be Ready in its image",
        )
    except TimeoutError as exc:
        states = [
            (
                p["metadata"]["name"],
                p["status"].get("conditions"),
                p["status"].get("containerStatuses"),
            )
            for p in _pods(api, namespace, component)
        ]
        raise AssertionError(f"{exc}; pods: {json.dumps(states, indent=1)[:3000]}") from None
    return next(p for p in _pods(api, namespace, component) if _ready(p))


def _exec(
    stack: LocalStack, pod: dict, container: str, argv: list[str]
) -> subprocess.CompletedProcess:
    """``runc exec`` in a running container of the process kubelet (its state: runc.json)."""
    state = runtime.state_dir(pod_dir_for(stack.kubelet.root, pod), container) / "runc.json"
    runc = json.loads(state.read_text())
    return subprocess.run(
        [runc["runc"], "--root", runc["root"], "exec", runc["id"], *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_operator_and_gateway_pods_run_in_their_images_from_the_registry(
    image_stack: LocalStack, published, release
):
    api, namespace = release["api"], release["namespace"]
    control = published["control-plane"]
    for component, name in (("operator", "operator"), ("gateway", "gateway")):
        pod = _wait_ready(api, namespace, component)
        (status,) = pod["status"]["containerStatuses"]
        assert status["image"] == control.reference(image_stack.registry.address, name)
        assert status["ready"] is True
        assert {"name": PULL_SECRET} in pod["spec"]["imagePullSecrets"]
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_write_to_the_root_filesystem_fails_inside_the_operator_pod(image_stack, release):
    pod = _wait_ready(release["api"], release["namespace"], "operator")
    probe = (
        "import os, pathlib\n"
        "print('uid', os.getuid())\n"
        "pathlib.Path('/tmp/probe').write_text('ok')\n"
        "try:\n"
        "    pathlib.Path('/opt/editflow/probe').write_text('no')\n"
        "except OSError as exc:\n"
        "    print('root', exc.strerror)\n"
    )
    ran = _exec(image_stack, pod, "operator", ["python", "-c", probe])
    assert ran.returncode == 0, ran.stderr
    assert "uid 10001" in ran.stdout
    assert "root " in ran.stdout  # refused
    assert "No module named" not in ran.stderr
    # The image's own files, read through the Pod's root: the control plane, without torch.
    torch = _exec(image_stack, pod, "operator", ["python", "-c", "import torch"])
    assert "No module named 'torch'" in torch.stderr


def test_an_approval_event_goes_through_to_succeeded_in_the_worker_image(
    image_stack: LocalStack, published, release, image_host
):
    if "worker" not in published:
        pytest.skip(f"{WORKER_ENV}=0 leaves the worker image out")
    api, namespace, tag = release["api"], release["namespace"], release["tag"]
    _wait_ready(api, namespace, "operator")
    events = {
        item["name"].removeprefix("EDITFLOW_EVENTS__").lower(): item["value"]
        for item in isolated_events(tag)
    }
    settings = Settings(
        nats=NatsSettings(url=image_stack.nats_url),
        events=EventsSettings(
            **events,
            approval_subject=f"ch{tag}.approvals.image-edit",
            withdraw_subject=f"ch{tag}.approvals.image-edit.withdraw",
        ),
    )

    async def submit() -> str:
        client = await OAClient.connect(settings, source="/oa/images-test")
        try:
            return await client.submit_approval(
                form_id=f"IMG-{tag}",
                approval_id="AP-1",
                applicant=Person(id="u-1", name="applicant"),
                approvers=[Person(id="m-1", name="manager")],
                instruction="make the red square blue",
                image_url=image_host.url("red.png"),
                generation={"steps": 2, "seed": 7},  # type: ignore[arg-type]
            )
        finally:
            await client.close()

    event_id = asyncio.run(submit())
    path = editjob_path(namespace, editjob_name(event_id))

    def phase() -> str:
        try:
            return (api.get(path).get("status") or {}).get("phase", "")
        except Exception:
            return ""

    try:
        wait_until(
            lambda: phase() in ("Succeeded", "Failed", "NeedsReview"),
            timeout=420,
            what="the approval's EditJob to finish with the worker in its image",
        )
    except TimeoutError as exc:
        pods = api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        states = {p["metadata"]["name"]: p["status"].get("containerStatuses") for p in pods}
        try:
            editjob = api.get(path).get("status")
        except Exception as missing:
            editjob = repr(missing)
        raise AssertionError(
            f"{exc}; EditJob status: {json.dumps(editjob)[:1500]}; "
            f"pods: {json.dumps(states)[:2500]}"
        ) from None
    status = api.get(path)["status"]
    assert status["phase"] == "Succeeded", status
    pods = api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    images_run = {s["image"] for p in pods for s in p["status"].get("containerStatuses", [])}
    assert published["worker"].reference(image_stack.registry.address) in images_run
