"""`helm install` that just works, locally: the chart's operator *Pod* (not a test process)
runs on the process kubelet with only its in-cluster service account and the chart's RBAC,
and drives a `kubectl apply`-ed EditJob to Succeeded."""

from __future__ import annotations

import uuid

import pytest
import yaml

from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.operator.crd import editjob_path
from tests.chart.test_install import ensure_namespaces, install, local_values, uninstall

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def test_the_charts_operator_pod_runs_an_edit(stack, kubectl, image_host) -> None:
    tag = uuid.uuid4().hex[:6]
    release, namespace = f"pod{tag}", f"ef-pod-{tag}"
    ensure_namespaces(kubectl, namespace)
    localmode.build_tiny_model(localmode.models_dir(stack, namespace, f"{release}-editflow-models"))
    values = local_values(stack, tag, stack.nats_url)
    install(stack, stack.workdir, release, namespace, values)
    api = KubeClient(stack.kubeconfig)
    try:
        selector = "app.kubernetes.io/component=operator"

        def operator_running() -> bool:
            pods = api.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
            return bool(pods) and pods[0]["status"].get("phase") == "Running"

        wait_until(operator_running, timeout=90, what="the chart's operator Pod to run")
        editjob = {
            "apiVersion": "editflow.io/v1alpha1",
            "kind": "EditJob",
            "metadata": {"name": f"pod-edit-{tag}", "namespace": namespace},
            "spec": {
                "source": {"url": image_host.url("red.png")},
                "prompt": "make the red square blue",
                "parameters": {"steps": 2, "seed": 5},
            },
        }
        kubectl("apply", "-f", "-", input=yaml.safe_dump(editjob))

        def phase() -> str:
            path = editjob_path(namespace, f"pod-edit-{tag}")
            return (api.get(path).get("status") or {}).get("phase", "")

        wait_until(
            lambda: phase() in ("Succeeded", "Failed", "NeedsReview"),
            timeout=180,
            what="the EditJob to finish under the chart's operator Pod",
        )
        assert phase() == "Succeeded"
        # The only credential it had: its service account (RBAC may still be settling in its
        # first seconds, which kopf retries; the finished edit is what counts).
        (pod,) = api.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
        env = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert "KUBECONFIG" not in env
        assert pod["spec"]["serviceAccountName"].endswith("operator")
        # It acted as the elected leader: the chart's Lease names it (POD_NAME, Lease RBAC).
        lease = api.get(
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{release}-editflow-operator"
        )
        assert lease["spec"]["holderIdentity"] == pod["metadata"]["name"]
    finally:
        api.close()
        uninstall(stack, release, namespace)
