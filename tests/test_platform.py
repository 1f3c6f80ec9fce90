"""The local control plane is real: each test proves one property a mock would not have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from datetime import timedelta

import nats
import pytest

from editflow.core.s3 import s3_client
from editflow.devstack import installer
from editflow.devstack.procs import port_is_open, wait_until
from editflow.devstack.stack import LocalStack

pytestmark = [pytest.mark.platform, pytest.mark.slow]

WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata:
      name: widgets.test.editflow.io
    spec:
      group: test.editflow.io
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  required: [size]
                  properties:
                    size: {type: integer, minimum: 1, maximum: 10}
    """
)


def test_kubectl_reports_the_pinned_kubernetes_version(kubectl) -> None:
    version = json.loads(kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == installer.KUBERNETES_VERSION
    assert version["major"] == "1" and version["minor"] == "34"


def test_crd_schema_refuses_an_invalid_object(kubectl) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.test.editflow.io")
    ok = "apiVersion: test.editflow.io/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"
    wait_until(
        lambda: kubectl("apply", "-f", "-", input=ok, check=False).returncode == 0,
        timeout=30,
        what="the Widget kind to be served",
    )
    bad = ok.replace("w1", "w2").replace("size: 3", "size: 42")
    refused = kubectl("apply", "-f", "-", input=bad, check=False)
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr and "less than or equal to 10" in refused.stderr


def test_rbac_denies_a_service_account_until_a_rolebinding_allows_it(kubectl) -> None:
    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    kubectl("-n", ns, "create", "serviceaccount", "reader")
    token = kubectl("-n", ns, "create", "token", "reader").stdout.strip()
    denied = kubectl("-n", ns, "get", "configmaps", token=token, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{ns}:reader" in denied.stderr
    kubectl("-n", ns, "create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps")
    kubectl(
        "-n",
        ns,
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={ns}:reader",
    )
    wait_until(
        lambda: kubectl("-n", ns, "get", "configmaps", token=token, check=False).returncode == 0,
        timeout=30,
        what="RBAC to allow the service account",
    )
    still_denied = kubectl("-n", ns, "get", "secrets", token=token, check=False)
    assert still_denied.returncode != 0


def test_deleting_an_owner_cascades_through_the_garbage_collector(kubectl) -> None:
    ns = f"gc-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    kubectl("-n", ns, "create", "configmap", "owner")
    uid = kubectl("-n", ns, "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(dependent))
    kubectl("-n", ns, "delete", "configmap", "owner", "--cascade=background")
    wait_until(
        lambda: kubectl("-n", ns, "get", "configmap", "dependent", check=False).returncode != 0,
        timeout=60,
        what="the garbage collector to delete the dependent",
    )


async def test_jetstream_drops_a_repeated_msg_id(stack: LocalStack) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        stream = f"DEDUPE_{uuid.uuid4().hex[:6]}"
        await js.add_stream(name=stream, subjects=[f"{stream}.>"], duplicate_window=60)
        first = await js.publish(f"{stream}.x", b"one", headers={"Nats-Msg-Id": "evt-1"})
        again = await js.publish(f"{stream}.x", b"one", headers={"Nats-Msg-Id": "evt-1"})
        other = await js.publish(f"{stream}.x", b"two", headers={"Nats-Msg-Id": "evt-2"})
        assert not first.duplicate and again.duplicate and not other.duplicate
        info = await js.stream_info(stream)
        assert info.state.messages == 2
    finally:
        await nc.close()


def test_minio_serves_a_presigned_get_over_http(stack: LocalStack) -> None:
    settings = stack.s3_settings()
    client = s3_client(settings)
    payload = os.urandom(4096)
    import io

    client.put_object(settings.bucket, "probe/blob.bin", io.BytesIO(payload), len(payload))
    url = client.presigned_get_object(settings.bucket, "probe/blob.bin", timedelta(minutes=5))
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback MinIO
        assert resp.read() == payload
    tampered = url.replace("X-Amz-Expires=300", "X-Amz-Expires=301")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(tampered, timeout=10)  # noqa: S310
    assert err.value.code == 403


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone once its parent reaped it.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_stopping_the_stack_leaves_no_process_and_no_port_even_after_a_failure() -> None:
    seen: dict[str, list[int]] = {}
    with pytest.raises(RuntimeError, match="boom"), LocalStack() as running:
        seen["pids"] = running.pids()
        seen["ports"] = running.ports()
        assert len(seen["pids"]) == 6 and all(port_is_open(p) for p in running.ports())
        workdir = running.workdir
        raise RuntimeError("boom")
    assert all(_gone(pid) for pid in seen["pids"])
    assert not any(port_is_open(p) for p in seen["ports"])
    assert not workdir.exists()


def test_a_killed_launcher_takes_its_servers_with_it(tmp_path) -> None:
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\nfrom editflow.devstack.stack import LocalStack\n"
        "s = LocalStack(Path(sys.argv[1]), kube=False).start()\n"
        "print(json.dumps({'pids': s.pids(), 'ports': s.ports()}), flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "stack")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        info = json.loads(launcher.stdout.readline())
        assert info["pids"] and all(port_is_open(p) for p in info["ports"])
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    wait_until(
        lambda: all(_gone(p) for p in info["pids"]),
        timeout=15,
        what="servers to die with their launcher",
    )
    time.sleep(0.2)
    assert not any(port_is_open(p) for p in info["ports"])


def test_a_second_install_is_all_cache_hits_with_matching_checksums() -> None:
    results = installer.install_all()
    assert results and all(r.cached for r in results)
    for result in results:
        for record in result.binaries:
            path = installer.binary(record.name)
            assert installer.sha256_file(path) == record.sha256


def test_helm_and_minio_report_their_pinned_versions() -> None:
    helm = subprocess.run(
        [str(installer.binary("helm")), "version", "--short"], capture_output=True, text=True
    )
    assert helm.stdout.startswith(installer.HELM_VERSION)
    minio = subprocess.run(
        [str(installer.binary("minio")), "--version"], capture_output=True, text=True
    )
    assert minio.returncode == 0 and "minio version" in minio.stdout
