"""The servers of the local platform, one class each.

Each component knows its command line, how to tell it is healthy and how to
read its version. All listen on 127.0.0.1 on free ports and keep their state
in the stack's temp dir, so several stacks (parallel test sessions) never meet.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from editflow.devstack import installer
from editflow.devstack.kubeconfig import write_kubeconfig
from editflow.devstack.pki import LocalCA, write_service_account_keys
from editflow.devstack.procs import ManagedProcess, free_port, wait_until

if TYPE_CHECKING:
    from editflow.devstack.kubelet.netbridge import PortForward

#: The controllers the Job path needs (names from cmd/kube-controller-manager/names).
CONTROLLERS = (
    "serviceaccount-token-controller",
    "job-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    "ttl-after-finished-controller",
    # So `helm install` of the chart gets running operator and gateway Pods in local mode.
    "deployment-controller",
    "replicaset-controller",
    # The chart's prestage DaemonSet (worker.prestage: staged nodes, docs/warm-workers.md).
    "daemonset-controller",
)

SERVICE_CIDR = "10.0.0.0/24"


@dataclass(frozen=True)
class Health:
    """One row of the health table."""

    component: str
    endpoint: str
    version: str
    healthy: bool
    detail: str = ""


def _get(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
        return resp.read()


class Component:
    """A server process plus how to check it."""

    name: str = "component"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: ManagedProcess | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._argv, self._env = argv, env
        self.process = ManagedProcess(
            self.name, argv, log_path=self.workdir / "logs" / f"{self.name}.log", env=env
        )
        self.process.start()

    def _wait(self, check: object, timeout: float) -> None:
        assert self.process is not None
        self._ready = (check, timeout)

        def ready() -> bool:
            self.process.ensure_running()  # type: ignore[union-attr]
            return bool(check())  # type: ignore[operator]

        try:
            wait_until(ready, timeout=timeout, what=f"{self.name} to become healthy")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last log lines:\n{self.process.log_tail()}") from None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self) -> None:
        """Stop and start the same server again: same ports, certificates and data.

        Fault-injection tests restart NATS, the apiserver and MinIO under load.
        """
        self.stop()
        self._spawn(self._argv, self._env)
        self._wait(*self._ready)

    def health(self) -> Health:  # pragma: no cover - overridden
        raise NotImplementedError


class Etcd(Component):
    name = "etcd"

    def start(self) -> None:
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = self.workdir / "etcd"
        self._spawn(
            [
                str(installer.binary("etcd")),
                "--name=editflow",
                f"--data-dir={data}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=editflow=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]
        )
        self._wait(lambda: json.loads(_get(f"{self.url}/health"))["health"] == "true", 60)

    def health(self) -> Health:
        try:
            ok = json.loads(_get(f"{self.url}/health"))["health"] == "true"
            version = json.loads(_get(f"{self.url}/version"))["etcdserver"]
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(self.name, self.url, f"v{version}", ok)


class KubeAPIServer(Component):
    name = "kube-apiserver"

    def __init__(self, workdir: Path, etcd: Etcd) -> None:
        super().__init__(workdir)
        self.etcd = etcd
        self.pki_dir = workdir / "pki"

    def start(self) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = LocalCA(self.pki_dir)
        serving = self.ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", "10.0.0.1"),
            server=True,
        )
        self.admin = self.ca.issue(
            "admin", common_name="editflow-admin", organizations=("system:masters",)
        )
        self.sa_key, self.sa_pub = write_service_account_keys(self.pki_dir)
        # The apiserver's identity towards kubelets (kubectl logs/exec go through it).
        self.kubelet_client = self.ca.issue(
            "apiserver-kubelet-client",
            common_name="kube-apiserver-kubelet-client",
            organizations=("system:masters",),
        )
        self.kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig",
            server=self.url,
            ca_file=self.ca.cert_path,
            user="editflow-admin",
            client=self.admin,
        )
        self._spawn(
            [
                str(installer.binary("kube-apiserver")),
                f"--etcd-servers={self.etcd.url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.pki_dir}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.ca.cert_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self.url}",
                f"--service-account-key-file={self.sa_pub}",
                f"--service-account-signing-key-file={self.sa_key}",
                # Nothing routes to the loopback "kubernetes" Service endpoints here.
                "--endpoint-reconciler-type=none",
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                f"--kubelet-certificate-authority={self.ca.cert_path}",
                "--kubelet-preferred-address-types=InternalIP",
                "--v=1",
            ]
        )
        self.ssl_admin = ssl.create_default_context(cafile=str(self.ca.cert_path))
        self.ssl_admin.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        self._wait(lambda: _get(f"{self.url}/readyz", context=self.ssl_admin) == b"ok", 120)

    def get_json(self, path: str) -> dict[str, object]:
        return json.loads(_get(f"{self.url}{path}", context=self.ssl_admin))

    def health(self) -> Health:
        try:
            ok = _get(f"{self.url}/readyz", context=self.ssl_admin) == b"ok"
            version = str(self.get_json("/version")["gitVersion"])
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(self.name, self.url, version, ok)


class KubeControllerManager(Component):
    name = "kube-controller-manager"

    def __init__(self, workdir: Path, api: KubeAPIServer) -> None:
        super().__init__(workdir)
        self.api = api

    def start(self) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        ident = self.api.ca.issue(
            "controller-manager", common_name="system:kube-controller-manager"
        )
        kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            server=self.api.url,
            ca_file=self.api.ca.cert_path,
            user="system:kube-controller-manager",
            client=ident,
        )
        self._spawn(
            [
                str(installer.binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.workdir / 'controller-manager'}",
                f"--root-ca-file={self.api.ca.cert_path}",
                f"--service-account-private-key-file={self.api.sa_key}",
                # Each controller acts with its own service account, as kubeadm does,
                # so RBAC is exercised for the controllers too.
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                # The client-side limit (20 requests/s per controller by default) throttled
                # the Job controller at 10 Jobs/s (Pod create, status, tracking finalizers:
                # about five requests a Job), so Jobs whose Pods had succeeded stayed
                # unfinished for many seconds. One local apiserver needs no protection
                # from its own controllers; large clusters raise these too.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--concurrent-job-syncs=10",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ]
        )
        no_verify = ssl.create_default_context()
        no_verify.check_hostname = False
        no_verify.verify_mode = ssl.CERT_NONE  # self-signed serving cert of a local process
        self._ssl = no_verify
        self._wait(lambda: _get(f"{self.url}/healthz", context=no_verify) == b"ok", 90)

    def health(self) -> Health:
        try:
            ok = _get(f"{self.url}/healthz", context=self._ssl) == b"ok"
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(self.name, self.url, installer.KUBERNETES_VERSION, ok)


class Nats(Component):
    name = "nats-server"

    #: The configuration file with users (:meth:`require_users`); None: an open server.
    config: Path | None = None
    #: The users' passwords, as the environment variables the configuration names.
    config_env: dict[str, str] | None = None

    def start(self) -> None:
        self.port, self.monitor_port = free_port(), free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = self.workdir / "jetstream"
        self.start_process()

    def require_users(self, authorization: str, passwords: dict[str, str]) -> None:
        """Restart with ``authorization`` (a nats-server ``authorization {...}`` block, the
        chart's, with ``$VAR`` passwords) and ``passwords`` (``VAR`` -> password): from then
        on the server has the chart's per-role users, as a production NATS does.

        The platform starts its NATS before helm generates any password, so ``editflow dev
        up`` and ``make demo`` call this between rendering the chart and installing it (see
        :func:`editflow.devstack.release.install`). Same ports and store.
        """
        conf_dir = self.workdir / "nats-auth"
        conf_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (conf_dir / "authorization.conf").write_text(authorization)
        self.config = conf_dir / "nats.conf"
        self.config.write_text("include ./authorization.conf\n")
        self.config_env = dict(passwords)
        self.stop()
        self.start_process()

    def start_process(self) -> None:
        """(Re)start on the same ports and store: tests restart NATS mid-stream."""
        config = ["-c", str(self.config)] if self.config else []
        env = {**os.environ, **self.config_env} if self.config_env else None
        self._spawn(
            [
                str(installer.binary("nats-server")),
                *config,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-js",
                "-sd",
                str(self.store_dir),
                "--server_name",
                "editflow-local",
            ],
            env,
        )
        self._wait(
            lambda: (
                _get(f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true")
                is not None
            ),
            30,
        )

    def health(self) -> Health:
        try:
            varz = json.loads(_get(f"http://127.0.0.1:{self.monitor_port}/varz"))
            js = json.loads(_get(f"http://127.0.0.1:{self.monitor_port}/jsz"))
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(
            self.name,
            self.url,
            f"v{varz['version']}",
            True,
            f"JetStream store {js.get('config', {}).get('store_dir', '')}",
        )


class MinIO(Component):
    name = "minio"

    def __init__(self, workdir: Path, bucket: str) -> None:
        super().__init__(workdir)
        self.bucket = bucket
        self.access_key = "editflow-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)

    def start(self) -> None:
        self.port, console = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.endpoint}"
        env = dict(os.environ)
        env.update(
            MINIO_ROOT_USER=self.access_key,
            MINIO_ROOT_PASSWORD=self.secret_key,
            MINIO_BROWSER="off",
            MINIO_UPDATE="off",
            MINIO_CI_CD="1",
        )
        self._spawn(
            [
                str(installer.binary("minio")),
                "server",
                "--quiet",
                "--address",
                self.endpoint,
                "--console-address",
                f"127.0.0.1:{console}",
                str(self.workdir / "minio"),
            ],
            env=env,
        )
        self._wait(lambda: _get(f"{self.url}/minio/health/ready") is not None, 60)

    def version(self) -> str:
        out = subprocess.run(
            [str(installer.binary("minio")), "--version"], capture_output=True, text=True
        ).stdout.split()
        return out[2] if len(out) > 2 else "?"

    def health(self) -> Health:
        try:
            _get(f"{self.url}/minio/health/ready")
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(self.name, self.url, self.version(), True, f"bucket {self.bucket}")


class ProcessKubeletServer(Component):
    """The project's process kubelet, supervised like every other server."""

    name = "process-kubelet"

    def __init__(
        self,
        workdir: Path,
        api: KubeAPIServer,
        *,
        gpus: int = 1,
        host_images: bool = False,
        registry: Component | None = None,
        node_name: str = "editflow-local-node",
        shares_volumes_with: ProcessKubeletServer | None = None,
    ) -> None:
        super().__init__(workdir)
        self.api = api
        self.gpus = gpus
        self.host_images = host_images
        self.registry = registry
        #: Where the kubelet keeps pulled images (None: the shared cache); set before start.
        self.image_store: Path | None = None
        self.node_name = node_name
        suffix = "" if shares_volumes_with is None else f"-{node_name}"
        self.name = f"process-kubelet{suffix}"
        self.root = workdir / f"kubelet{suffix}"
        #: A second node reads the first one's PersistentVolumes (they stand for RWX claims).
        self.pvc_root = (
            shares_volumes_with.root / "pvc" if shares_volumes_with is not None else None
        )

    def start(self) -> None:
        from editflow.devstack.kubeapi import KubeClient, KubeError

        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        user = f"system:node:{self.node_name}"
        stem = self.root.name  # kubelet, kubelet-<node>: each node's own key pair
        ident = self.api.ca.issue(stem, common_name=user, organizations=("system:nodes",))
        serving = self.api.ca.issue(
            f"{stem}-serving",
            common_name=self.node_name,
            dns_names=(self.node_name,),
            ip_addresses=("127.0.0.1",),
            server=True,
        )
        kubeconfig = write_kubeconfig(
            self.workdir / f"{self.root.name}.kubeconfig",
            server=self.api.url,
            ca_file=self.api.ca.cert_path,
            user=user,
            client=ident,
        )
        # Least privilege: the bootstrap roles of a node and of a scheduler
        # (it binds Pods), not cluster-admin. RBAC stands in for the Node
        # authorizer, which would need the real kubelet's node identity flow.
        admin = KubeClient(self.api.kubeconfig)
        try:
            for role in ("system:node", "system:kube-scheduler"):
                binding = {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"editflow-{self.root.name}:{role.split(':')[1]}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                    ],
                }
                try:
                    admin.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
                except KubeError as exc:
                    if exc.status != 409:
                        raise
        finally:
            admin.close()
        self.start_process(kubeconfig, serving)

    def start_process(self, kubeconfig: Path | None = None, serving: object = None) -> None:
        """(Re)start the agent; tests restart it to prove adoption."""
        import sys

        if kubeconfig is not None:
            self._argv = [
                sys.executable,
                "-m",
                "editflow.cli.main",
                "dev",
                "kubelet",
                f"--kubeconfig={kubeconfig}",
                f"--root={self.root}",
                f"--port={self.port}",
                f"--cert={serving.cert}",
                f"--key={serving.key}",  # type: ignore[attr-defined]
                f"--client-ca={self.api.ca.cert_path}",
                f"--node-name={self.node_name}",
                f"--gpus={self.gpus}",
            ]
            if self.host_images:
                self._argv.append("--host-images")
            if self.registry is not None:
                self._argv.append(f"--default-registry={self.registry.address}")  # type: ignore[attr-defined]
            if self.image_store is not None:
                self._argv.append(f"--image-store={self.image_store}")
            self.root.mkdir(parents=True, exist_ok=True)
            config: dict[str, object] = {"host_paths": self.host_paths()}
            if self.pvc_root is not None:
                config["pvc_root"] = str(self.pvc_root)
            overrides = self.root.parent / f"{self.name}.json"
            overrides.write_text(json.dumps(config))
            self._argv.append(f"--config-file={overrides}")
        self._spawn(self._argv)
        self._ssl = ssl.create_default_context(cafile=str(self.api.ca.cert_path))
        self._wait(lambda: _get(f"{self.url}/healthz", context=self._ssl) == b"ok", 60)

    #: The hostPath prefix a node offers (the chart's models.nodeCache.hostPath lives under it).
    HOST_PATH_PREFIX = "/var/cache/editflow"

    def host_paths(self) -> dict[str, str]:
        """hostPath prefix -> this node's directory: each node its own, as on a real cluster.

        The directory exists and belongs to uid 10001 (the chart's Pods), as the chart README
        asks of a real node's ``models.nodeCache.hostPath``.
        """
        target = self.root / "hostpath" / self.HOST_PATH_PREFIX.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(target, 10001, 10001)
        return {self.HOST_PATH_PREFIX: str(target)}

    def publish_host_ports(self, ports: list[int]) -> None:
        """Make these host loopback ports reachable from inside every Pod's network namespace."""
        from editflow.devstack.kubelet import netbridge

        netbridge.publish_host_ports(self.root, ports)

    def port_forward(self, pod: dict, port: int, host_port: int = 0) -> PortForward:
        """Reach ``port`` of a Pod that runs in its own network namespace from the host's
        loopback: returns a :class:`~editflow.devstack.kubelet.netbridge.PortForward`."""
        from editflow.devstack.kubelet import netbridge
        from editflow.devstack.kubelet.podspec import pod_dir_for

        netns = netbridge.netns_path(pod_dir_for(self.root, pod))
        if not netns.exists():
            raise RuntimeError(
                f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']} has no network "
                "namespace here (not running in its image on this kubelet)"
            )
        return netbridge.PortForward(netns, port, host_port)

    def stop(self) -> None:
        from editflow.devstack.kubelet import runtime

        super().stop()
        runtime.sweep(self.root)  # whatever the agent could not stop itself

    def health(self) -> Health:
        try:
            ok = _get(f"{self.url}/healthz", context=self._ssl) == b"ok"
        except Exception as exc:
            return Health(self.name, self.url, "?", False, str(exc))
        return Health(
            self.name,
            self.url,
            installer.KUBERNETES_VERSION,
            ok,
            f"node {self.node_name}, {self.gpus} GPU",
        )
