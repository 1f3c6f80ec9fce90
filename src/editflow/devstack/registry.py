"""The local image registry: CNCF distribution on a loopback port, storage in the cache.

``make images`` pushes editflow's images here (skopeo) and the process kubelet
pulls them from here, so the chart runs the images it names without a remote
registry. It serves plain HTTP on ``127.0.0.1:<free port>``: clients say
``--tls-verify=false`` (skopeo) or list it as an insecure registry.

Storage lives in ``paths.cache_root()/registry`` and outlives every stack, so an
image pushed once serves every later stack and test session.

Two registries on one storage directory (two stacks, or ``make images`` beside a
test session) both run **read-write**. This is distribution's own multi-instance
shape (several registries over shared storage): v3.1.2's filesystem driver
writes every file under a temporary name and renames it into place, blobs are
content-addressed (two pushes of one layer write the same bytes), and a tag is a
small link file replaced atomically, so the last push of a tag wins and a reader
never sees half a file. The one operation that is unsafe beside a running
instance, ``registry garbage-collect``, is never run by the project; upload
purging is off, so one instance never removes another's upload in progress.
A read-only second instance was the alternative, but it would make ``make
images`` fail whenever any test session happened to hold the writer role.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
from pathlib import Path

from editflow.devstack import installer, paths
from editflow.devstack.components import Component, Health, _get
from editflow.devstack.procs import free_port


def storage_dir() -> Path:
    """Where every local registry keeps its blobs and repositories."""
    return paths.cache_root() / "registry"


def registry_config(address: str, storage: Path, secret: str, htpasswd: Path | None = None) -> str:
    """distribution's configuration (YAML is a superset of JSON, so JSON it is)."""
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": address,
            "secret": secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "editflow-local", "path": str(htpasswd)}}
    return json.dumps(config, indent=2)


class LocalRegistry(Component):
    """``registry serve`` on 127.0.0.1, plain HTTP, persistent storage under the cache."""

    name = "registry"

    def __init__(
        self,
        workdir: Path,
        storage: Path | None = None,
        port: int = 0,
        *,
        htpasswd: Path | None = None,
    ) -> None:
        super().__init__(workdir)
        self.storage = storage or storage_dir()
        #: An htpasswd file (bcrypt entries) makes the registry ask for credentials, as a
        #: private registry does: tests of ``imagePullSecrets``. None: open, as the stack's.
        self.htpasswd = htpasswd
        # A fixed port (0: a free one) lets `make images` push to one address every time,
        # which is what skopeo's blob cache keys on (editflow.devstack.images.push).
        self.requested_port = port
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the host part of image references: ``ADDRESS/editflow/worker:1``."""
        if not self.port:
            raise RuntimeError("the registry has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        self.port = self.requested_port or free_port()
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "registry" / "config.yml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            registry_config(self.address, self.storage, secrets.token_hex(16), self.htpasswd)
        )
        env = dict(os.environ)
        # distribution exports traces over OTLP by default; nothing listens for them here.
        env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
        self._spawn([str(installer.binary("registry")), "serve", str(config)], env=env)
        self._wait(self._answers, 30)

    def _answers(self) -> bool:
        try:
            _get(f"{self.url}/v2/")
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for credentials
        return True

    def repositories(self) -> list[str]:
        """The repositories this registry serves (``GET /v2/_catalog``)."""
        return list(json.loads(_get(f"{self.url}/v2/_catalog?n=1000"))["repositories"])

    def health(self) -> Health:
        try:
            if not self._answers():
                raise RuntimeError("no answer")
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(
            self.name, self.url, installer.REGISTRY_VERSION, True, f"storage {self.storage}"
        )
