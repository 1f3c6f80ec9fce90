"""Staged nodes (worker.prestage): the chart's DaemonSet, what it renders, and a real run.

The rendering tests need only helm. The platform test installs the chart with prestage on the
session's platform (the DaemonSet controller, the process kubelet, MinIO with the tiny model
under a models prefix) and checks that the DaemonSet's Pod runs the worker image's
``editflow worker prestage``, fills the node's hostPath cache and labels the node.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from editflow.core.settings import Settings
from editflow.core.staging import STAGED_DIR, staged_label
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.inference.weights import publish_to_s3
from editflow.operator.jobspec import worker_pod_spec
from editflow.operator.warmjobs import warm_job_manifest
from tests.chart.chartkit import find, render_text
from tests.chart.test_install import install, local_values, uninstall

MODEL = "longcat-image-edit"
HOST_CACHE = {"models": {"s3Prefix": "models", "nodeCache": {"hostPath": "/var/cache/editflow"}}}
CLAIM_CACHE = {"models": {"s3Prefix": "models", "nodeCache": {"existingClaim": "weights-cache"}}}


def _with_prestage(values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "worker": {"prestage": {"enabled": True}}}


def _operator_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    deploy = find(objs, "Deployment", "editflow-operator", "editflow")
    env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", "") for e in env}


@pytest.mark.parametrize("cache", [HOST_CACHE, CLAIM_CACHE], ids=["hostPath", "claim"])
def test_prestage_renders_a_non_root_daemonset_without_a_gpu_on_the_cache(render, cache) -> None:
    objs = render(_with_prestage(cache))
    ds = find(objs, "DaemonSet", "editflow-prestage", "editflow")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("editflow/worker:")
    assert container["args"][:2] == ["worker", "prestage"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "weights-cache"]
    if cache is HOST_CACHE:
        assert volume["hostPath"] == {"path": "/var/cache/editflow", "type": "Directory"}
    else:
        assert volume["persistentVolumeClaim"] == {"claimName": "weights-cache"}
    env = {e["name"]: e for e in container["env"]}
    assert env["EDITFLOW_WORKER__CACHE_DIR"]["value"] == "/var/cache/editflow/models"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Least privilege: its own node's labels, nothing else.
    role = find(objs, "ClusterRole", "editflow-prestage-editflow")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    assert _operator_env(objs)["EDITFLOW_OPERATOR__WEIGHTS_CACHE_STAGED"] == "true"
    # Nothing connects to it; it reaches DNS, the API server and S3 only.
    policy = find(objs, "NetworkPolicy", "editflow-prestage", "editflow")
    assert policy["spec"]["podSelector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert "ingress" not in policy["spec"] and "Ingress" in policy["spec"]["policyTypes"]


def test_prestage_off_renders_nothing_of_it(render) -> None:
    objs = render(HOST_CACHE)
    assert not [o for o in objs if "prestage" in o["metadata"]["name"]]
    assert "EDITFLOW_OPERATOR__WEIGHTS_CACHE_STAGED" not in _operator_env(objs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"models": {"nodeCache": {"hostPath": "/c"}}}, "needs models.s3Prefix"),
        ({"models": {"s3Prefix": "m"}}, "needs models.nodeCache.hostPath"),
        (
            {
                "models": {
                    "s3Prefix": "m",
                    "pvc": {"enabled": True},
                    "nodeCache": {"hostPath": "/c"},
                }
            },
            "nothing to stage",
        ),
    ],
)
def test_prestage_without_what_it_needs_is_refused_naming_it(tmp_path, values, message) -> None:
    result = render_text(tmp_path, _with_prestage(values), check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("prestage", "field"),
    [
        ({"intervalSeconds": 5}, "/worker/prestage/intervalSeconds"),
        ({"resources": {"limits": {"nvidia.com/gpu": 1}}}, "/worker/prestage/resources/limits"),
        ({"enabeld": True}, "enabeld"),
    ],
)
def test_prestage_schema_names_the_bad_value(tmp_path, prestage, field) -> None:
    result = render_text(tmp_path, {"worker": {"prestage": prestage}}, check=False)
    assert result.returncode != 0
    assert field in result.stderr


def test_staged_workers_read_the_cache_read_only_and_warm_ones_prefer_staged_nodes() -> None:
    settings = Settings(
        operator={"weights_cache_host_path": "/var/cache/editflow", "weights_cache_staged": True}
    ).operator
    spec = worker_pod_spec(settings, command=["editflow"], args=[], env=[])
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "weights-cache"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert "EDITFLOW_WORKER__CACHE_DIR" not in env  # the Pod's /tmp, from the ConfigMap
    assert env["EDITFLOW_WORKER__MODELS_ROOT"] == f"/var/cache/editflow/models/{STAGED_DIR}"
    affinity = warm_job_manifest(settings, "edits", MODEL)["spec"]["template"]["spec"]["affinity"]
    (preferred,) = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["preference"]["matchExpressions"] == [
        {"key": staged_label(MODEL), "operator": "Exists"}
    ]


# -- on the local platform -------------------------------------------------------------


@pytest.mark.platform
def test_prestage_fills_the_node_cache_and_labels_the_node(
    stack, kubectl, tiny_model_root, tmp_path
) -> None:
    tag = uuid.uuid4().hex[:6]
    release, namespace = f"pre{tag}", f"ef-pre-{tag}"
    s3 = stack.s3_settings()
    publish_to_s3(tiny_model_root / MODEL, s3, f"prestage-{tag}/{MODEL}")
    node = stack.kubelet.node_name
    cache = Path(stack.kubelet.host_paths()["/var/cache/editflow"]) / tag
    api = KubeClient(stack.kubeconfig)
    try:
        kubectl("create", "namespace", namespace)
        # hostPath volumes: the privileged Pod Security level (docs/warm-workers.md).
        kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
        keys = {
            "access-key": s3.access_key.get_secret_value(),
            "secret-key": s3.secret_key.get_secret_value(),
        }
        api.post(
            f"/api/v1/namespaces/{namespace}/secrets",
            {
                "metadata": {"name": "weights-reader"},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
            },
        )
        values = local_values(stack, tag, stack.nats_url)
        values["operator"]["replicas"] = 0  # only the DaemonSet is under test
        values["models"] = {
            "s3Prefix": f"prestage-{tag}",
            "s3ReaderSecret": "weights-reader",
            "nodeCache": {"hostPath": f"/var/cache/editflow/{tag}"},
        }
        values["worker"]["prestage"] = {"enabled": True, "intervalSeconds": 60}
        install(stack, tmp_path, release, namespace, values)

        def labelled() -> bool:
            labels = api.get(f"/api/v1/nodes/{node}")["metadata"].get("labels", {})
            return staged_label(MODEL) in labels

        try:
            wait_until(labelled, timeout=60, what=f"node {node} to be labelled as staged")
        except TimeoutError as exc:
            pods = kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
            logs = kubectl(
                "-n", namespace, "logs", "-l", "app.kubernetes.io/component=prestage", check=False
            )
            raise AssertionError(f"{exc}\n{pods}\n{logs.stdout[-3000:]}{logs.stderr}") from None
        (pod,) = api.get(
            f"/api/v1/namespaces/{namespace}/pods",
            labelSelector="app.kubernetes.io/component=prestage",
        )["items"]
        assert pod["spec"]["nodeName"] == node
        assert pod["status"]["phase"] == "Running"  # it stays, as a DaemonSet's Pod must
        staged = cache / STAGED_DIR / MODEL
        assert (staged / "model_index.json").is_file()
        version = api.get(f"/api/v1/nodes/{node}")["metadata"]["labels"][staged_label(MODEL)]
        assert staged.resolve().name == version
    finally:
        uninstall(stack, release, namespace)
        kubectl("label", "node", node, f"{staged_label(MODEL)}-", check=False)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        api.close()
        shutil.rmtree(cache, ignore_errors=True)
