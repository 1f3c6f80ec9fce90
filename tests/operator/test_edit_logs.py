"""`editflow edits logs`: one attempt's worker log, found by its labels, on the real platform.

No operator runs here: the EditJob and its attempts' Jobs are created as the operator
creates them (the labels of ``jobspec.labels_for``, a container named ``worker``), the
process kubelet runs them, and the command reads their logs through the apiserver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from editflow.operator.crd import editjob_path
from editflow.operator.jobspec import WORKER_CONTAINER, labels_for

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def _attempt_job(editjob: dict, attempt: int) -> dict:
    labels = labels_for(editjob, attempt)
    line = f"worker line of attempt {attempt}"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{editjob['metadata']['name']}-a{attempt}", "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": WORKER_CONTAINER,
                            "image": "busybox",
                            "command": ["sh", "-c", f"echo '{line}'"],
                        }
                    ],
                },
            },
        },
    }


def _logs(stack: LocalStack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "editflow.cli.main", "edits", "logs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_logs_show_one_attempt_and_say_why_when_there_is_none(stack: LocalStack) -> None:
    api = KubeClient(stack.kubeconfig)
    namespace = f"logs-{uuid.uuid4().hex[:6]}"
    try:
        localmode.install_crd(api)
        api.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
        wait_until(
            lambda: bool(api.get(f"/api/v1/namespaces/{namespace}/serviceaccounts")["items"]),
            timeout=30,
            what="the namespace's default service account",
        )
        name = "poster"
        body = {
            "apiVersion": "editflow.io/v1alpha1",
            "kind": "EditJob",
            "metadata": {"name": name},
            "spec": {"source": {"url": "https://example.com/a.png"}, "prompt": "make it blue"},
        }
        editjob = api.post(f"/apis/editflow.io/v1alpha1/namespaces/{namespace}/editjobs", body)
        path = editjob_path(namespace, name)
        missing = _logs(stack, name, "-n", namespace)
        assert missing.returncode == 1 and "has not started an attempt" in missing.stderr

        api.patch(f"{path}/status", {"status": {"attempts": 2, "phase": "Running"}})
        for attempt in (1, 2):
            api.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", _attempt_job(editjob, attempt))

        def both_logged() -> bool:
            pods = api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
            done = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
            return len(done) == 2

        wait_until(both_logged, timeout=60, what="both attempts' Pods to finish")
        latest = _logs(stack, name, "-n", namespace)
        assert latest.returncode == 0, latest.stderr
        assert latest.stdout.strip() == "worker line of attempt 2"
        first = _logs(stack, name, "-n", namespace, "--attempt", "1")
        assert first.stdout.strip() == "worker line of attempt 1", first.stderr

        beyond = _logs(stack, name, "-n", namespace, "--attempt", "3")
        assert beyond.returncode == 1 and "attempts 1 to 2, not 3" in beyond.stderr
        api.delete(
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}-a1?propagationPolicy=Background"
        )
        wait_until(
            lambda: (
                not api.get(
                    f"/api/v1/namespaces/{namespace}/pods",
                    labelSelector="editflow.io/attempt=1",
                )["items"]
            ),
            timeout=60,
            what="attempt 1's Pod to go with its Job",
        )
        gone = _logs(stack, name, "-n", namespace, "--attempt", "1")
        assert gone.returncode == 1 and "has no Pod left" in gone.stderr, gone.stderr
        absent = _logs(stack, "no-such-edit", "-n", namespace)
        assert absent.returncode == 1 and "not found" in absent.stderr
    finally:
        api.delete(f"/api/v1/namespaces/{namespace}")
        api.close()
