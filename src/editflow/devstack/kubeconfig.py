"""Kubeconfig files for the local control plane (one per identity)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from editflow.devstack.pki import CertPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    client: CertPair | None = None,
    token: str | None = None,
) -> Path:
    """Write a self-contained kubeconfig (certificates inlined) for ``user``."""
    user_entry: dict[str, str] = {}
    if client is not None:
        user_entry["client-certificate-data"] = _b64(client.cert)
        user_entry["client-key-data"] = _b64(client.key)
    if token is not None:
        user_entry["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "editflow-local",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)},
            }
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [
            {
                "name": "editflow-local",
                "context": {"cluster": "editflow-local", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "editflow-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
