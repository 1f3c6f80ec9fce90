"""`helm test` for editflow: an EditJob round trip through the operator and NATS, no GPU.

Creates an EditJob already marked cancelled, waits until the operator has moved it to
Cancelled and recorded the id of the completion event it published to NATS, deletes it,
and (when TEST_GATEWAY_URL is set) checks the gateway's /readyz and that it refuses an
unauthenticated edit. Standard library only; every failure says what did not happen.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import NoReturn

SA_DIR = os.environ.get("TEST_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = float(os.environ.get("TEST_TIMEOUT_SECONDS", "120"))
GATEWAY = os.environ.get("TEST_GATEWAY_URL", "")


def read(name: str) -> str:
    with open(os.path.join(SA_DIR, name), encoding="utf-8") as handle:
        return handle.read().strip()


NAMESPACE = read("namespace")
API = "https://{}:{}".format(
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
)
TLS = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
EDITJOBS = f"{API}/apis/editflow.io/v1alpha1/namespaces/{NAMESPACE}/editjobs"


def call(
    method: str,
    url: str,
    body: dict | None = None,
    *,
    kube: bool = True,
    headers: dict[str, str] | None = None,
) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) only
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if kube:
        request.add_header("Authorization", "Bearer " + read("token"))
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        # The apiserver (KUBERNETES_SERVICE_*) or the chart's gateway: both http(s) by construction.
        with urllib.request.urlopen(request, timeout=30, context=TLS if kube else None) as resp:  # noqa: S310
            text = resp.read().decode()
            return resp.status, json.loads(text) if text.startswith("{") else text
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        return exc.code, text


def fail(message: str) -> NoReturn:
    print("FAIL: " + message, flush=True)
    sys.exit(1)


def editjob_round_trip() -> None:
    name = os.environ.get("TEST_NAME_PREFIX", "editflow-helm-test-") + uuid.uuid4().hex[:8]
    manifest = {
        "apiVersion": "editflow.io/v1alpha1",
        "kind": "EditJob",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/component": "test"},
            # Cancelled before it starts: the operator never creates a GPU Job for it.
            "annotations": {"editflow.io/cancel": "helm test round trip"},
        },
        "spec": {
            "source": {"url": "https://example.invalid/helm-test.png"},
            "prompt": "helm test: no edit is run",
        },
    }
    status, body = call("POST", EDITJOBS, manifest)
    if status != 201:
        fail(f"creating EditJob {name} answered {status}: {body}")
    print(f"created EditJob {NAMESPACE}/{name}", flush=True)
    deadline = time.monotonic() + TIMEOUT
    seen = {}
    try:
        while time.monotonic() < deadline:
            status, body = call("GET", f"{EDITJOBS}/{name}")
            if status == 200:
                seen = body.get("status") or {}
                if seen.get("phase") == "Cancelled" and seen.get("completionEventId"):
                    print(
                        "operator moved it to Cancelled and published completion "
                        + seen["completionEventId"],
                        flush=True,
                    )
                    return
            time.sleep(1)
        fail(
            f"the operator did not finish EditJob {name} within {TIMEOUT:.0f}s "
            f"(status: {json.dumps(seen)}); check `kubectl logs` of the operator, "
            "its RBAC and its NATS connection"
        )
    finally:
        call("DELETE", f"{EDITJOBS}/{name}")


def gateway_checks() -> None:
    deadline = time.monotonic() + TIMEOUT
    status, body = 0, ""
    while time.monotonic() < deadline:
        try:
            status, body = call("GET", GATEWAY + "/readyz", kube=False)
        except OSError as exc:  # not listening yet, or no endpoints behind the Service
            status, body = 0, repr(exc)
        if status == 200:
            break
        time.sleep(2)
    if status != 200:
        fail(f"gateway /readyz did not answer 200 within {TIMEOUT:.0f}s (last: {status} {body})")
    print("gateway /readyz: 200", flush=True)
    status, _ = call(
        "POST",
        GATEWAY + "/edit",
        {"image_url": "https://example.invalid/x.png", "prompt": "x"},
        kube=False,
    )
    if status != 401:
        fail(f"gateway accepted an edit without a token (answered {status})")
    print("gateway refuses edits without a token: 401", flush=True)


if __name__ == "__main__":
    editjob_round_trip()
    if GATEWAY:
        gateway_checks()
    print("PASS", flush=True)
