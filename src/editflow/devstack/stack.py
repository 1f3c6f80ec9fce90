"""The local platform as one object: start it, use it, stop it, leave nothing behind.

``LocalStack`` is what pytest fixtures, the demo, the benchmarks and
``editflow dev up`` share::

    with LocalStack() as stack:
        stack.kubeconfig        # admin kubeconfig for kubectl and the Python clients
        stack.nats_url          # nats://127.0.0.1:<port>, JetStream enabled
        stack.s3_settings()     # MinIO endpoint, keys and bucket
        stack.registry.address  # 127.0.0.1:<port> image registry (with registry=True)

Pods run in their images (pulled from a registry, run with runc); a caller that
wants the project's images mapped to host commands instead (fast, no image
build) asks for it with ``host_images=True``.

Start order follows the dependencies (etcd -> kube-apiserver ->
kube-controller-manager; NATS and MinIO are independent). If any server
fails to come up, everything already started is stopped before the error
(which carries the failing server's log tail) propagates.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from types import TracebackType

from editflow.core.s3 import s3_client
from editflow.core.settings import S3Settings
from editflow.devstack.components import (
    Component,
    Etcd,
    Health,
    KubeAPIServer,
    KubeControllerManager,
    MinIO,
    Nats,
    ProcessKubeletServer,
)
from editflow.devstack.procs import wait_until
from editflow.devstack.registry import LocalRegistry


class LocalStack:
    """etcd, kube-apiserver, kube-controller-manager, the process kubelet, NATS, MinIO,
    and on request the image registry."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        kube: bool = True,
        nats: bool = True,
        minio: bool = True,
        bucket: str = "editflow",
        kubelet: bool = True,
        gpus: int = 1,
        nodes: int = 1,
        keep_workdir: bool = False,
        registry: bool = False,
        host_images: bool = False,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="editflow-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_workdir = keep_workdir
        self.registry = LocalRegistry(self.workdir) if registry else None
        self.etcd = Etcd(self.workdir) if kube else None
        self.apiserver = KubeAPIServer(self.workdir, self.etcd) if self.etcd else None
        self.controller_manager = (
            KubeControllerManager(self.workdir, self.apiserver) if self.apiserver else None
        )
        #: Every node's kubelet; the first is ``self.kubelet``. More nodes share its volumes
        #: (a PVC stands for a ReadWriteMany claim), each has its own GPUs and Pods.
        self.kubelets: list[ProcessKubeletServer] = []
        for index in range(1, nodes + 1 if self.apiserver and kubelet else 1):
            assert self.apiserver is not None
            self.kubelets.append(
                ProcessKubeletServer(
                    self.workdir,
                    self.apiserver,
                    gpus=gpus,
                    host_images=host_images,
                    registry=self.registry,
                    **(
                        {}
                        if index == 1
                        else {
                            "node_name": f"editflow-local-node-{index}",
                            "shares_volumes_with": self.kubelets[0],
                        }
                    ),
                )
            )
        self.nats = Nats(self.workdir) if nats else None
        self.minio = MinIO(self.workdir, bucket) if minio else None
        self.started: list[Component] = []
        self.timings: dict[str, float] = {}

    @property
    def kubelet(self) -> ProcessKubeletServer | None:
        """The first node's kubelet (the only one unless ``nodes`` > 1)."""
        return self.kubelets[0] if self.kubelets else None

    @kubelet.setter
    def kubelet(self, kubelet: ProcessKubeletServer) -> None:
        """Swap the first node's kubelet before start (a benchmark brings its own config)."""
        if self.kubelets:
            self.kubelets[0] = kubelet
        else:
            self.kubelets.append(kubelet)

    # -- lifecycle ---------------------------------------------------------
    def components(self) -> Iterator[Component]:
        for comp in (
            self.registry,  # first: the kubelet resolves unqualified images against it
            self.etcd,
            self.apiserver,
            self.controller_manager,
            *self.kubelets,
            self.nats,
            self.minio,
        ):
            if comp is not None:
                yield comp

    def start(self) -> LocalStack:
        try:
            for comp in self.components():
                began = time.monotonic()
                self.started.append(comp)
                comp.start()  # type: ignore[attr-defined]
                self.timings[comp.name] = round(time.monotonic() - began, 2)
                if comp is self.controller_manager:
                    self._wait_for_default_service_account()
            if self.minio is not None:
                self._create_bucket()
            for kubelet in self.kubelets:
                # Pods in their own network namespaces reach these loopback ports.
                kubelet.publish_host_ports(self.ports())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop in reverse order; safe to call twice and after a failed start."""
        for comp in reversed(self.started):
            with suppress(Exception):
                comp.stop()
        self.started.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what clients need ---------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        if self.apiserver is None:
            raise RuntimeError("this stack was started without Kubernetes (kube=False)")
        return self.apiserver.kubeconfig

    @property
    def nats_url(self) -> str:
        if self.nats is None:
            raise RuntimeError("this stack was started without NATS (nats=False)")
        return self.nats.url

    def s3_settings(self) -> S3Settings:
        if self.minio is None:
            raise RuntimeError("this stack was started without MinIO (minio=False)")
        from pydantic import SecretStr

        return S3Settings(
            endpoint=self.minio.endpoint,
            secure=False,
            access_key=SecretStr(self.minio.access_key),
            secret_key=SecretStr(self.minio.secret_key),
            bucket=self.minio.bucket,
        )

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.started if c.process and c.process.pid]

    def ports(self) -> list[int]:
        found: list[int] = []
        for comp in self.components():
            for attr in ("port", "monitor_port"):
                if isinstance(getattr(comp, attr, None), int):
                    found.append(getattr(comp, attr))
        return found

    def health(self) -> list[Health]:
        return [comp.health() for comp in self.components() if comp in self.started]

    def endpoints(self) -> dict[str, object]:
        """What a person (or ``editflow dev`` commands) needs to reach the stack."""
        data: dict[str, object] = {"workdir": str(self.workdir)}
        if self.apiserver:
            data["kubeconfig"] = str(self.kubeconfig)
            data["kube_apiserver"] = self.apiserver.url
        if self.nats:
            data["nats_url"] = self.nats.url
        if self.registry:
            data["registry"] = self.registry.address
        if self.minio:
            s3 = self.s3_settings()
            data["s3"] = {
                "endpoint": s3.endpoint,
                "bucket": s3.bucket,
                "access_key": s3.access_key.get_secret_value(),
                "secret_key": s3.secret_key.get_secret_value(),
            }
        data["health"] = [asdict(h) for h in self.health()]
        return data

    # -- readiness details -------------------------------------------------
    def _wait_for_default_service_account(self) -> None:
        # Pods are refused at admission until the serviceaccount controller has
        # created `default`; waiting here keeps that race out of every caller.
        assert self.apiserver is not None
        wait_until(
            lambda: (
                self.apiserver.get_json(  # type: ignore[union-attr]
                    "/api/v1/namespaces/default/serviceaccounts/default"
                )["metadata"]
                is not None
            ),
            timeout=60,
            what="the default service account (serviceaccount controller)",
        )

    def _create_bucket(self) -> None:
        settings = self.s3_settings()
        client = s3_client(settings)
        if not client.bucket_exists(settings.bucket):
            client.make_bucket(settings.bucket)
