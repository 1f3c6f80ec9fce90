"""Helpers for the Helm chart tests: run the pinned helm, render the chart to objects.

The value sets in ``EDGE_VALUES`` are the installs a cluster operator is most likely to
get wrong; every rendering test runs on each of them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from editflow.devstack import installer

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "editflow"
RELEASE = "editflow"
NAMESPACE = "editflow"

EDGE_VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gateway-off": {"gateway": {"enabled": False}},
    "extra-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "existing-secrets": {
        "watchNamespaces": ["team-a"],
        "s3": {"existingSecret": "corp-s3", "endpoint": "s3.corp.example:443", "secure": True},
        "nats": {
            "url": "tls://nats.corp.example:4222",
            "auth": {"method": "userPassword", "existingSecret": "corp-nats"},
            "tls": {"enabled": True, "existingSecret": "corp-nats-tls", "clientCertificate": True},
        },
        "gateway": {"token": {"existingSecret": "corp-gateway-token"}},
        "events": {"signingKey": {"existingSecret": "corp-oa-signing"}},
        "callbacks": {"signingKeySecret": "corp-callback-key", "caConfigMap": "corp-ca"},
        "alerts": {"webhook": {"existingSecret": "corp-alert-webhook"}},
    },
    "pvc-models": {
        "watchNamespaces": ["team-a"],
        "models": {"pvc": {"enabled": True, "storageClassName": "nfs"}},
    },
    "existing-claim": {
        "models": {
            "pvc": {"enabled": True, "existingClaim": "weights"},
            "s3Prefix": "weights",
            "s3ReaderSecret": "weights-reader",
        },
    },
    "bundled": {
        "watchNamespaces": ["team-a"],
        "nats": {"bundled": {"enabled": True}},
        "s3": {"bundled": {"enabled": True}},
    },
    # One operator without a Lease (Recreate), one gateway: no disruption budget, no anti-affinity.
    "single-replicas": {
        "operator": {"replicas": 1, "leaderElection": {"enabled": False}},
        "gateway": {"replicas": 1},
    },
    # Images from a local registry (issue 12's tests), by prefix and by full repository.
    "local-registry": {
        "global": {"imageRegistry": "127.0.0.1:5000"},
        "imagePullSecrets": [{"name": "local-registry"}],
        "operator": {"image": {"tag": "dev", "pullPolicy": "Always"}},
        "gateway": {"image": {"repository": "127.0.0.1:5000/editflow/gateway", "tag": "dev"}},
        "worker": {"image": {"tag": "dev"}, "imagePullSecrets": [{"name": "local-registry"}]},
    },
    "crds-elsewhere": {"crds": {"install": False}},
    # Staged nodes: the prestage DaemonSet fills a per-node hostPath cache from S3.
    "staged-nodes": {
        "models": {"s3Prefix": "models", "nodeCache": {"hostPath": "/var/cache/editflow"}},
        "worker": {"prestage": {"enabled": True}},
    },
    # An open NATS on purpose (the local platform's), unsigned events, no NetworkPolicies.
    "insecure-on-purpose": {
        "nats": {"auth": {"method": "none", "insecure": True}},
        "events": {"signingKey": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
    # NetworkPolicy peers derived from every kind of address, plus the user's own rules.
    "network-peers": {
        "watchNamespaces": ["team-a"],
        "nats": {"url": "nats://nats.messaging.svc.cluster.local:4222,tls://10.20.0.7:4443"},
        "s3": {"endpoint": "10.30.0.9:9000"},
        "worker": {"allowCidrs": ["10.40.0.0/16"]},
        "networkPolicy": {
            "apiServerCidrs": ["192.168.10.0/24"],
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ],
            "extraEgress": [
                {"to": [{"ipBlock": {"cidr": "10.50.0.0/16"}}], "ports": [{"port": 443}]}
            ],
        },
    },
    "everything-on": {
        "watchNamespaces": ["team-a"],
        "priorityClass": {"create": True},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "prometheusRule": {"enabled": True},
        "nats": {"auth": {"method": "token", "token": "s3cr3t"}},
        "alerts": {"webhook": {"url": "https://chat.example/robot?key=abc"}},
        "worker": {
            # A shared token cannot give warm workers an identity per namespace: Job mode.
            "mode": "job",
            "gpusPerJob": 2,
            "resources": {"requests": {"cpu": 4, "memory": "24Gi"}},
            "allowCidrs": ["10.0.0.0/8"],
            "extraEnv": {"EDITFLOW_WORKER__COMPILE_REPEATED_BLOCKS": "true"},
        },
        "limits": {"retentionSeconds": 2592000, "sampleRate": 0.1},
        "gateway": {"corsOrigins": ["https://oa.example.com"], "rateLimitPerMinute": 20},
    },
}

# Objects the user brings (existingSecret, existingClaim, ...): referenced, never rendered.
USER_OBJECTS: dict[str, set[tuple[str, str]]] = {
    "existing-secrets": {
        ("Secret", "corp-s3"),
        ("Secret", "corp-nats"),
        ("Secret", "corp-nats-tls"),
        ("Secret", "corp-gateway-token"),
        ("Secret", "corp-oa-signing"),
        ("Secret", "corp-callback-key"),
        ("ConfigMap", "corp-ca"),
        ("Secret", "corp-alert-webhook"),
    },
    "existing-claim": {("PersistentVolumeClaim", "weights"), ("Secret", "weights-reader")},
}


def helm_binary() -> str:
    return str(installer.binary("helm"))


def helm(
    *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/editflow-helm/cache"}
    env["HELM_CONFIG_HOME"] = "/tmp/editflow-helm/config"
    env["HELM_DATA_HOME"] = "/tmp/editflow-helm/data"
    env["KUBECONFIG"] = str(kubeconfig) if kubeconfig else "/dev/null"
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def render_text(
    tmp_path: Path,
    values: dict[str, Any],
    *extra: str,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    check: bool = True,
) -> subprocess.CompletedProcess:
    path = values_file(tmp_path, values)
    return helm(
        "template", release, str(CHART), "-n", namespace, "-f", str(path), *extra, check=check
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def find(objs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> dict:
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
            return obj
    raise AssertionError(f"no {kind} {namespace}/{name} rendered")
