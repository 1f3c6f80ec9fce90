"""KEDA, the peer: its operator on the same local apiserver, a ScaledJob on the same NATS.

KEDA (v2.21.0, built from the Go module proxy through the wrapper module in
``src/editflow/devstack/gomods/keda``, only when asked for) creates Jobs
from a ScaledJob by *polling* its scaler every ``pollingInterval`` seconds;
its ``nats-jetstream`` scaler reads a consumer's lag from the server's
monitoring endpoint (``/jsz``). Each ScaledJob here gets a durable consumer
of its own on the approvals stream (deliver new, filtered to approvals), so
it sees exactly the events editflow sees, and each of its Jobs takes one
message (:mod:`controlplane.keda_consumer`).

Out of cluster, KEDA's operator needs a namespace for its cluster objects,
a certificate directory (``ca.crt``, ``tls.crt``, ``tls.key``; it refuses to
start without one) and loopback addresses for its metrics, probes and gRPC
metrics service. It runs here with the admin kubeconfig.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from controlplane.localplatform import HERE, PEER_IMAGE
from editflow.devstack import installer
from editflow.devstack.kubeapi import KubeClient, KubeError
from editflow.devstack.pki import LocalCA
from editflow.devstack.procs import ManagedProcess, free_port, wait_until

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_NAMESPACE = "keda"
SCALEDJOB_NAMESPACE = "keda-bench"
SCALEDJOBS = "/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledjobs"


def ensure_built(progress: installer.Progress | None = None) -> Path:
    """Build the KEDA operator once (minutes, cold) or verify the cached one (< 1 s)."""
    installer.install_all(only={"keda"}, progress=progress)
    return installer.binary("keda-operator")


def module_dir() -> Path:
    """KEDA's module source in the Go module cache (its CRDs live in config/crd/bases)."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{KEDA_MODULE}@{installer.KEDA_VERSION}"],
        cwd=installer.GOMODS / "keda",
        env=installer.go_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def apply_crds(api: KubeClient, kubeconfig: Path) -> None:
    """Server-side apply (the CRDs are too large for client-side apply's annotation)."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    crds = module_dir() / "config" / "crd" / "bases"
    out = subprocess.run(
        [str(installer.binary("kubectl")), "apply", "--server-side", "--force-conflicts",
         "-f", str(crds)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"applying KEDA's CRDs from {crds} failed: {out.stderr[-2000:]}")

    def established(name: str) -> bool:
        crd = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for name in ("scaledjobs.keda.sh", "scaledobjects.keda.sh"):
        wait_until(lambda n=name: established(n), timeout=60, what=f"CRD {name} established")


def _namespace(api: KubeClient, name: str) -> None:
    try:
        api.post("/api/v1/namespaces", {"metadata": {"name": name}})
    except KubeError as exc:
        if exc.status != 409:
            raise
    # Job Pods are refused at admission until the namespace's default service account exists.
    wait_until(
        lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default") is not None,
        timeout=60,
        what=f"the default service account of {name}",
    )


class KedaOperator:
    """``keda-operator`` as a supervised local process."""

    def __init__(self, binary: Path, kubeconfig: Path, workdir: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.process: ManagedProcess | None = None
        self.probe_port = 0

    def start(self, api: KubeClient) -> KedaOperator:
        _namespace(api, KEDA_NAMESPACE)
        _namespace(api, SCALEDJOB_NAMESPACE)
        certs = self.workdir / "keda-certs"
        LocalCA(certs).issue(
            "tls",
            common_name="keda-operator",
            dns_names=("keda-operator", f"keda-operator.{KEDA_NAMESPACE}.svc"),
            ip_addresses=("127.0.0.1",),
            server=True,
        )
        self.probe_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
            "POD_NAMESPACE": KEDA_NAMESPACE,
            "WATCH_NAMESPACE": "",
        }
        self.process = ManagedProcess(
            "keda-operator",
            [
                str(self.binary),
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
                f"--metrics-service-bind-address=127.0.0.1:{free_port()}",
                "--enable-cert-rotation=false",
                f"--cert-dir={certs}",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
                "--leader-elect=false",
            ],
            log_path=self.workdir / "logs" / "keda-operator.log",
            env=env,
        )
        self.process.start()

        def healthy() -> bool:
            self.process.ensure_running()  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{self.probe_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200

        wait_until(healthy, timeout=90, what="the KEDA operator's readiness probe")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log_tail(self) -> str:
        return self.process.log_tail(40) if self.process else ""


async def add_consumer(js: JetStreamContext, stream: str, name: str, subject: str) -> None:
    """A durable pull consumer of the ScaledJob's own, starting at the next event."""
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=name,
            description="benchmark: the KEDA ScaledJob's own view of the approvals",
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=120,
            filter_subject=subject,
        ),
    )


def scaled_job(
    name: str,
    *,
    polling_seconds: int,
    monitor_endpoint: str,
    nats_url: str,
    stream: str,
    consumer: str,
    max_jobs: int,
) -> dict[str, Any]:
    """One Job per pending message (``lagThreshold: 1``), KEDA's default scaling strategy."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledJob",
        "metadata": {"name": name, "namespace": SCALEDJOB_NAMESPACE},
        "spec": {
            "pollingInterval": polling_seconds,
            "maxReplicaCount": max_jobs,
            "successfulJobsHistoryLimit": max_jobs,
            "failedJobsHistoryLimit": max_jobs,
            "jobTargetRef": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "consumer",
                                "image": PEER_IMAGE,
                                "command": ["python", str(HERE / "keda_consumer.py")],
                                "env": [
                                    {"name": "NATS_URL", "value": nats_url},
                                    {"name": "STREAM", "value": stream},
                                    {"name": "CONSUMER", "value": consumer},
                                ],
                            }
                        ],
                    }
                },
            },
            "triggers": [jetstream_trigger(monitor_endpoint, stream, consumer)],
        },
    }


def jetstream_trigger(monitor_endpoint: str, stream: str, consumer: str) -> dict[str, Any]:
    """KEDA's ``nats-jetstream`` scaler on ``consumer``'s lag, one unit of work per message."""
    return {
        "type": "nats-jetstream",
        "metadata": {
            "natsServerMonitoringEndpoint": monitor_endpoint,
            "account": "$G",
            "stream": stream,
            "consumer": consumer,
            "lagThreshold": "1",
        },
    }


def _ready(api: KubeClient, path: str) -> bool:
    conditions = (api.get(path).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def scaled_job_ready(api: KubeClient, name: str) -> bool:
    return _ready(api, SCALEDJOBS.format(namespace=SCALEDJOB_NAMESPACE) + f"/{name}")


# -- warm mode: a ScaledObject over a Deployment of long-lived consumers -------------------------
SCALEDOBJECTS = "/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects"
DEPLOYMENTS = "/apis/apps/v1/namespaces/{namespace}/deployments"


def warm_deployment(
    name: str, *, nats_url: str, stream: str, consumer: str, handed_subject: str
) -> dict[str, Any]:
    """The peer's warm workers (:mod:`controlplane.keda_warm_consumer`), at zero replicas:
    KEDA brings them up."""
    labels = {"app.kubernetes.io/name": name}
    env = {
        "NATS_URL": nats_url,
        "STREAM": stream,
        "CONSUMER": consumer,
        "HANDED_SUBJECT": handed_subject,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": SCALEDJOB_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "consumer",
                            "image": PEER_IMAGE,
                            "command": ["python", str(HERE / "keda_warm_consumer.py")],
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ],
                },
            },
        },
    }


def scaled_object(
    name: str,
    *,
    polling_seconds: int,
    monitor_endpoint: str,
    stream: str,
    consumer: str,
    max_replicas: int,
) -> dict[str, Any]:
    """Scale ``name`` (a Deployment) from zero on its consumer's lag, as editflow's pool does.

    KEDA's operator itself takes the Deployment from 0 to 1 when the lag shows (each
    ``pollingInterval``); from 1 to ``max_replicas`` it hands over to an HPA reading KEDA's
    metrics adapter, which the local platform does not run: one stub consumer takes 50/s.
    """
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": SCALEDJOB_NAMESPACE},
        "spec": {
            "scaleTargetRef": {"name": name},
            "pollingInterval": polling_seconds,
            "cooldownPeriod": 3600,  # the pool stays up for the whole phase, as editflow's does
            "minReplicaCount": 0,
            "maxReplicaCount": max_replicas,
            "triggers": [jetstream_trigger(monitor_endpoint, stream, consumer)],
        },
    }


def scaled_object_ready(api: KubeClient, name: str) -> bool:
    return _ready(api, SCALEDOBJECTS.format(namespace=SCALEDJOB_NAMESPACE) + f"/{name}")
