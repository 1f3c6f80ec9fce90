"""Job mode: the worker runs on its attempt's own short-lived keys, from a Secret the Job owns."""

from __future__ import annotations

import base64
import urllib.request
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from editflow.devstack.kubeapi import KubeError
from editflow.devstack.procs import wait_until
from editflow.operator.caches import job_path
from tests.harness import NAMESPACE

pytestmark = [pytest.mark.platform, pytest.mark.slow]


def test_an_attempt_gets_its_own_secret_owned_by_its_job(operator, kubectl, image_host, stack):
    name = f"creds-{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "editflow.io/v1alpha1",
        "kind": "EditJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "source": {"url": image_host.url("red.png")},
            "prompt": "make the red square blue",
            "parameters": {"steps": 2, "seed": 1},
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    status = operator.wait_completed(name)["status"]
    assert status["phase"] == "Succeeded", status  # the worker wrote with its session keys
    # The URL OA gets is signed by the operator's key, not the worker's session (which expires).
    query = parse_qs(urlsplit(status["resultUrl"]).query)
    assert query["X-Amz-Credential"][0].startswith(stack.minio.access_key + "/"), query
    assert "X-Amz-Security-Token" not in query
    with urllib.request.urlopen(status["resultUrl"], timeout=30) as resp:  # noqa: S310 - MinIO
        assert resp.status == 200 and resp.read(8) == b"\x89PNG\r\n\x1a\n"

    job_name = f"{name}-a1"
    job = operator.api.get(job_path(NAMESPACE, job_name))
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    for var in ("EDITFLOW_S3__ACCESS_KEY", "EDITFLOW_S3__SECRET_KEY", "EDITFLOW_S3__SESSION_TOKEN"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == f"{job_name}-s3", env[var]

    secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{job_name}-s3"
    secret = operator.api.get(secret_path)
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", job_name, job["metadata"]["uid"])
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert keys["session-token"] and keys["access-key"] != stack.minio.access_key
    assert secret["metadata"]["annotations"]["editflow.io/output-prefix"].endswith(
        f"/{name}/attempt-1/"
    )

    # The Secret goes with its Job (garbage collection): no orphaned keys.
    kubectl("-n", NAMESPACE, "delete", "job", job_name, "--cascade=background")

    def collected() -> bool:
        try:
            operator.api.get(secret_path)
        except KubeError as exc:
            return exc.status == 404
        return False

    wait_until(
        collected,
        timeout=120,
        what=f"Secret {job_name}-s3 to be collected with its Job",
    )
