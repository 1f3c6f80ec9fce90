"""The process kubelet's control loops.

Threads, each with one job:

- ``node``: registers the Node, clears the ``not-ready`` taint admission put
  on it, and posts a Ready heartbeat;
- ``watch``: list+watch of all Pods with a bounded timeout, feeding a cache
  and a work queue (a 410 Gone or a dropped stream means: list again);
- ``monitor``: polls container exit records and deadlines, and re-queues
  Pods that need another look (this is also how a Pending Pod gets bound
  once a GPU frees up);
- ``worker``: the only thread that acts: it reconciles one Pod at a time
  from the cache (level-triggered: what to do depends only on the Pod and
  the on-disk container state, never on which event arrived);
- ``prober``: runs the containers' startup, liveness and readiness probes
  (:mod:`.probes`) and re-queues a Pod when a verdict changes.

Containers run in their images (pulled by :mod:`.images` in background
threads, planned by :mod:`.imageplan`, run with runc, one network namespace
per Pod bridged to the platform by :mod:`.netbridge`), or, only when the
configuration asks for ``host_images``, as host processes (:mod:`.podspec`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from editflow.core.kube_events import event_body
from editflow.devstack.kubeapi import KubeClient, KubeError
from editflow.devstack.kubelet import netbridge, probes, runtime
from editflow.devstack.kubelet import status as st
from editflow.devstack.kubelet.config import KubeletConfig
from editflow.devstack.kubelet.imageplan import plan_image_container
from editflow.devstack.kubelet.images import (
    ImageInfo,
    ImagePuller,
    ImageStore,
    Waiting,
    credentials_for,
    qualify,
)
from editflow.devstack.kubelet.podspec import (
    ContainerConfigError,
    ContainerPlan,
    ImageNotMapped,
    materialize_volumes,
    plan_container,
    pod_dir_for,
    service_env,
)
from editflow.devstack.kubelet.scheduling import TERMINAL_PHASES, fits, host_ports

log = logging.getLogger("editflow.kubelet")

Pod = dict[str, Any]


def _parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass
class LocalPod:
    """What this agent knows about a Pod it runs (rebuilt from disk after a restart)."""

    uid: str
    pod_dir: Path
    init: list[ContainerPlan] = field(default_factory=list)
    main: list[ContainerPlan] = field(default_factory=list)
    started_init: int = 0
    main_started: bool = False
    term_sent_at: float | None = None
    kill_at: float | None = None
    deadline_exceeded: bool = False
    last_status: str = ""
    restarts: dict[str, int] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)
    netns: Path | None = None
    #: Probe state per running container instance: (started_at, tracker).
    probes: dict[str, tuple[str, probes.ProbeTracker]] = field(default_factory=dict)
    #: How each restarted container's previous instance ended (``lastState``).
    last_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Containers being stopped for a failed probe: name -> when to SIGKILL.
    probe_kill_at: dict[str, float] = field(default_factory=dict)


class ImagesNotReady(Exception):
    """Some image of the Pod is not pulled yet (or cannot be): per-container waiting states."""

    def __init__(self, waiting: dict[str, Waiting]) -> None:
        super().__init__(", ".join(f"{k}: {v.reason}" for k, v in waiting.items()))
        self.waiting = waiting


class ProcessKubelet:
    """Runs Pods bound to one Node as local processes."""

    def __init__(
        self, client: KubeClient, config: KubeletConfig, *, api_port: int | None, kubelet_port: int
    ) -> None:
        self.client = client
        self.config = config
        self.api_port = api_port
        self.kubelet_port = kubelet_port
        self.version = "v1.34.4-process"
        self.cache: dict[str, Pod] = {}
        self.assumed: dict[str, Pod] = {}
        self.local: dict[str, LocalPod] = {}
        self.lock = threading.Lock()
        self.probe_lock = threading.Lock()
        self.queue: queue.Queue[str] = queue.Queue()
        self.queued: set[str] = set()
        #: Pods a worker reconciles now, and those that changed meanwhile: a Pod is never
        #: reconciled by two workers at once (controller-runtime's work queue rule).
        self.active: set[str] = set()
        self.dirty: set[str] = set()
        #: Binding decides on the node's free GPUs and Pod slots: one decision at a time.
        self.schedule_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.shims: list[Any] = []
        self.node: dict[str, Any] | None = None
        self.last_watch = time.monotonic()
        self.threads: list[threading.Thread] = []
        self.puller = ImagePuller(ImageStore(config.store_dir(), skopeo=config.skopeo))
        #: Bound Pods that could not start yet (images, config): uid -> when to look again.
        self.retry_at: dict[str, float] = {}
        self.waiting_key: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self.config.root.mkdir(parents=True, exist_ok=True)
        if self.api_port:  # in-cluster clients in a Pod's namespace reach the apiserver
            netbridge.publish_host_ports(self.config.root, [self.api_port])
        self.register_node()
        self.relist()
        workers = max(1, self.config.workers)
        for name, target in (
            ("node", self._node_loop),
            ("watch", self._watch_loop),
            ("monitor", self._monitor_loop),
            *((f"worker-{i}" if i else "worker", self._worker_loop) for i in range(workers)),
            ("prober", self._probe_loop),
        ):
            thread = threading.Thread(target=target, name=f"kubelet-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def shutdown(self, kill_pods: bool = True) -> None:
        """Stop the loops; with ``kill_pods`` (local-mode teardown) no process survives."""
        self.stop_event.set()
        self.puller.shutdown()
        if kill_pods:
            runtime.sweep(self.config.root)
        for thread in self.threads:
            thread.join(timeout=5)

    def healthy(self) -> bool:
        return self.node is not None and all(t.is_alive() for t in self.threads)

    # -- node ------------------------------------------------------------------
    def register_node(self) -> None:
        manifest = st.node_manifest(self.config)
        name = self.config.node_name
        try:
            self.client.post("/api/v1/nodes", manifest)
        except KubeError as exc:
            if exc.status != 409:
                raise
        # Admission adds node.kubernetes.io/not-ready at creation; no node
        # lifecycle controller runs to clear it, so the agent sets its own taints.
        self.client.patch(
            f"/api/v1/nodes/{name}",
            {
                "metadata": {"labels": manifest["metadata"]["labels"]},
                "spec": {"taints": self.config.taints or None},
            },
        )
        self.post_node_status()

    def post_node_status(self) -> None:
        body = {"status": st.node_status(self.config, self.kubelet_port, self.version)}
        self.node = self.client.patch(f"/api/v1/nodes/{self.config.node_name}/status", body)

    def _node_loop(self) -> None:
        while not self.stop_event.wait(self.config.heartbeat_seconds):
            try:
                self.post_node_status()
            except Exception:
                log.exception("node heartbeat failed")

    # -- pod cache -------------------------------------------------------------
    def enqueue(self, uid: str) -> None:
        with self.lock:
            if uid in self.queued:
                return
            self.queued.add(uid)
        self.queue.put(uid)

    def relist(self) -> str:
        listing = self.client.get("/api/v1/pods")
        fresh = {p["metadata"]["uid"]: p for p in listing.get("items", [])}
        with self.lock:
            gone = set(self.cache) - set(fresh)
            self.cache = fresh
        for uid in [*fresh, *gone, *list(self.local)]:
            self.enqueue(uid)
        self.last_watch = time.monotonic()
        return str(listing["metadata"]["resourceVersion"])

    def _watch_loop(self) -> None:
        version = ""
        while not self.stop_event.is_set():
            try:
                if not version:
                    version = self.relist()
                for event in self.client.watch(
                    "/api/v1/pods", resource_version=version, timeout_seconds=30
                ):
                    self.last_watch = time.monotonic()
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""  # 410 Gone: our version is too old, list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.cache.pop(uid, None)
                        else:
                            self.cache[uid] = obj
                        if obj["spec"].get("nodeName"):
                            self.assumed.pop(uid, None)
                    self.enqueue(uid)
                    if self.stop_event.is_set():
                        return
            except Exception as exc:
                if self.stop_event.is_set():
                    return
                log.warning("pod watch failed, relisting: %s", exc)
                version = ""
                self.stop_event.wait(1)

    def _monitor_loop(self) -> None:
        last_resync = 0.0
        while not self.stop_event.wait(0.2):
            with self.lock:  # workers append while this reaps
                self.shims = [s for s in self.shims if s.poll() is None]  # reap finished shims
            for uid in list(self.local):
                self.enqueue(uid)
            now = time.monotonic()
            for uid, due in list(self.retry_at.items()):
                if now >= due:
                    self.enqueue(uid)
            if time.monotonic() - last_resync >= self.config.resync_seconds:
                last_resync = time.monotonic()
                with self.lock:
                    pending = [
                        uid
                        for uid, pod in self.cache.items()
                        if not pod["spec"].get("nodeName")
                        and pod.get("status", {}).get("phase") == "Pending"
                    ]
                for uid in pending:
                    self.enqueue(uid)

    def _worker_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                uid = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with self.lock:
                self.queued.discard(uid)
                if uid in self.active:  # another worker has it: look again after it
                    self.dirty.add(uid)
                    continue
                self.active.add(uid)
            try:
                self.reconcile(uid)
            except Exception:
                log.exception("reconciling pod %s failed; will retry", uid)
            finally:
                with self.lock:
                    self.active.discard(uid)
                    again = uid in self.dirty
                    self.dirty.discard(uid)
                if again:
                    self.enqueue(uid)

    # -- reconcile -------------------------------------------------------------
    def reconcile(self, uid: str) -> None:
        with self.lock:
            pod = self.cache.get(uid)
        if pod is None:
            self._forget(uid, kill=True)
            return
        node_name = pod["spec"].get("nodeName")
        if not node_name:
            with self.schedule_lock:
                self._schedule(pod)
        elif node_name == self.config.node_name:
            self._sync_pod(pod)

    def _forget(self, uid: str, *, kill: bool) -> None:
        self.retry_at.pop(uid, None)
        self.waiting_key.pop(uid, None)
        self.puller.forget_pod(uid)
        local = self.local.pop(uid, None)
        if local is None:
            return
        plans = [*local.init, *local.main]
        if kill:
            for plan in plans:
                runtime.send(local.pod_dir, plan.name, signal.SIGKILL)
        for plan in plans:
            if plan.runc is not None:
                self._wait_exited(local, plan)
                runtime.remove(local.pod_dir, plan.name)
        if local.netns is not None:
            netbridge.stop_bridge(local.pod_dir)
        # Never delete through a mount: a bind-mounted PVC would lose its data.
        if runtime.unmount_all(local.pod_dir):
            shutil.rmtree(local.pod_dir, ignore_errors=True)
        else:
            log.warning("pod dir %s still has mounts; left in place", local.pod_dir)

    @staticmethod
    def _wait_exited(local: LocalPod, plan: ContainerPlan, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while isinstance(runtime.observe(local.pod_dir, plan.name), runtime.Running):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    # -- scheduling --------------------------------------------------------------
    def _bound_here(self) -> list[Pod]:
        with self.lock:
            bound = [
                p for p in self.cache.values() if p["spec"].get("nodeName") == self.config.node_name
            ]
            return bound + list(self.assumed.values())

    def _schedule(self, pod: Pod) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or pod["spec"].get("schedulingGates"):
            return
        if pod["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        if pod.get("status", {}).get("phase") in TERMINAL_PHASES:
            return
        # Read the Node now: a `kubectl cordon` a moment ago must already count.
        with contextlib.suppress(KubeError):
            self.node = self.client.get(f"/api/v1/nodes/{self.config.node_name}")
        node = self.node or {}
        fit = fits(pod, node, self._bound_here()) if node else None
        if fit is None:
            return
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        if fit.ok:
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
            }
            try:
                self.client.post(f"{path}/binding", binding)
            except KubeError as exc:
                if exc.status in (404, 409):
                    return
                raise
            with self.lock:
                # Assume until the watch shows the binding, so the next Pod in
                # the queue cannot take the same GPU.
                self.assumed[meta["uid"]] = {
                    **pod,
                    "spec": {**pod["spec"], "nodeName": self.config.node_name},
                }
            self._event(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {meta['namespace']}/{meta['name']} "
                f"to {self.config.node_name}",
            )
            return
        current = next(
            (
                c
                for c in pod.get("status", {}).get("conditions") or []
                if c["type"] == "PodScheduled"
            ),
            None,
        )
        if current and current.get("status") == "False" and current.get("message") == fit.message:
            return
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": fit.message,
            "lastTransitionTime": st.now(),
        }
        with contextlib.suppress(KubeError):
            self.client.patch(
                f"{path}/status", {"status": {"conditions": [condition]}}, kind="strategic"
            )
        self._event(pod, "Warning", "FailedScheduling", fit.message)

    # -- running -----------------------------------------------------------------
    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        try:
            return self.client.get(f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def _token(self, pod: Pod, audience: str | None, expiry: int) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName", "default")
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": max(expiry, 600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        result = self.client.post(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body
        )
        return str(result["status"]["token"])

    def _images(self, pod: Pod) -> dict[str, ImageInfo]:
        """Every image of the Pod, pulled; raises :class:`ImagesNotReady` until they all are."""
        uid = pod["metadata"]["uid"]
        found: dict[str, ImageInfo] = {}
        waiting: dict[str, Waiting] = {}
        configs = self._pull_secrets(pod)
        for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]:
            reference = qualify(c["image"], self.config.default_registry)
            always = c.get("imagePullPolicy") == "Always" or (
                "imagePullPolicy" not in c and reference.endswith(":latest")
            )
            key = f"{reference}#{uid}"  # the kubelet's back-off is per Pod and image
            creds = credentials_for(reference, configs)
            got = self.puller.get(key, reference, always=always, creds=creds)
            if isinstance(got, Waiting):
                waiting[c["name"]] = got
            else:
                found[c["name"]] = got
        if waiting:
            raise ImagesNotReady(waiting)
        return found

    def _pull_secrets(self, pod: Pod) -> list[dict[str, Any]]:
        """The docker configs of the Pod's ``imagePullSecrets`` (a missing one is skipped,
        as the kubelet does: the pull may still work without it)."""
        configs = []
        for ref in pod["spec"].get("imagePullSecrets") or []:
            secret = self._lookup("Secret", pod["metadata"]["namespace"], ref.get("name", ""))
            data = (secret or {}).get("data") or {}
            raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
            if raw:
                with contextlib.suppress(ValueError):
                    configs.append(json.loads(base64.b64decode(raw)))
        return configs

    def _prepare(self, pod: Pod) -> LocalPod:
        pod_dir = pod_dir_for(self.config.root, pod)
        images = None if self.config.host_images else self._images(pod)
        volumes = materialize_volumes(pod, pod_dir, self.config, self._lookup, self._token)
        alloc = (self.node or {}).get("status", {}).get("allocatable", {})
        netns = None
        if images is not None and not pod["spec"].get("hostNetwork"):
            netns = netbridge.netns_path(pod_dir)
            published = sorted(
                (port, self._container_port(pod, port)) for _proto, port in host_ports(pod)
            )
            started = netbridge.ensure_bridge(pod_dir, self.config.root, published)
            if started is not None:
                with self.lock:
                    self.shims.append(started)  # reaped by the monitor loop

        def plans(containers: list[dict[str, Any]]) -> list[ContainerPlan]:
            common = {
                "pod_dir": pod_dir,
                "volumes": volumes,
                "config": self.config,
                "lookup": self._lookup,
                "node_alloc": alloc,
                "service_env": service_env(self.api_port),
            }
            if images is None:
                return [plan_container(pod, c, **common) for c in containers]  # type: ignore[arg-type]
            return [
                plan_image_container(pod, c, image=images[c["name"]], netns=netns, **common)  # type: ignore[arg-type]
                for c in containers
            ]

        return LocalPod(
            uid=pod["metadata"]["uid"],
            pod_dir=pod_dir,
            init=plans(pod["spec"].get("initContainers") or []),
            main=plans(pod["spec"]["containers"]),
            netns=netns,
        )

    @staticmethod
    def _container_port(pod: Pod, host_port: int) -> int:
        for c in pod["spec"]["containers"]:
            for port in c.get("ports") or []:
                if port.get("hostPort") == host_port:
                    return int(port["containerPort"])
        return host_port

    def _not_started(self, pod: Pod, waiting: dict[str, Waiting], *, retry: float) -> None:
        """A bound Pod whose containers cannot start yet: Pending, waiting reasons, events."""
        uid = pod["metadata"]["uid"]
        self.retry_at[uid] = time.monotonic() + retry
        states = [
            st.ContainerState(
                c["name"],
                c["image"],
                st.waiting(
                    waiting.get(c["name"], Waiting("ContainerCreating")).reason,
                    waiting.get(c["name"], Waiting("")).message,
                ),
            )
            for c in pod["spec"]["containers"]
        ]
        init = [
            st.ContainerState(c["name"], c["image"], st.waiting("PodInitializing"))
            for c in pod["spec"].get("initContainers") or []
        ]
        key = "|".join(f"{k}:{w.reason}:{w.message}" for k, w in sorted(waiting.items()))
        if self.waiting_key.get(uid) == key:
            return
        self.waiting_key[uid] = key
        for name, why in waiting.items():
            image = next(
                c["image"]
                for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
                if c["name"] == name
            )
            if why.reason == "ErrImagePull":
                failed = f'Failed to pull image "{image}": {why.message}'
                self._event(pod, "Warning", "Failed", failed)
                self._event(pod, "Warning", "Failed", "Error: ErrImagePull")
            elif why.reason == "ImagePullBackOff":
                self._event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"')
                self._event(pod, "Warning", "Failed", "Error: ImagePullBackOff")
            elif why.reason == "ContainerCreating":
                self._event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
            elif why.reason == "CreateContainerConfigError":
                self._event(pod, "Warning", "Failed", f"Error: {why.message}")
        body = st.pod_status(pod, states, phase="Pending", init_containers=init or None)
        self._patch_status(pod, body, key=f"wait:{key}")

    def _sync_pod(self, pod: Pod) -> None:
        uid = pod["metadata"]["uid"]
        phase = pod.get("status", {}).get("phase")
        local = self.local.get(uid)
        if phase in TERMINAL_PHASES:
            if pod["metadata"].get("deletionTimestamp"):
                self._final_delete(pod)
            return
        if local is None:
            local = self._adopt_or_start(pod)
            if local is None:
                if pod["metadata"].get("deletionTimestamp"):
                    # Never started (image or config missing): nothing to stop, so the
                    # kubelet removes it at once instead of leaving it Terminating.
                    self._forget(uid, kill=False)
                    self._final_delete(pod)
                return
        if pod["metadata"].get("deletionTimestamp"):
            self._terminate(pod, local)
            return
        self._enforce_deadline(pod, local)
        self._advance(pod, local)

    def _adopt_or_start(self, pod: Pod) -> LocalPod | None:
        meta = pod["metadata"]
        try:
            local = self._prepare(pod)
        except ImageNotMapped as exc:
            self._write_terminal_error(pod, "ErrImagePull", str(exc))
            self._event(pod, "Warning", "Failed", str(exc))
            return None
        except ImagesNotReady as exc:
            pulling = all(w.reason == "ContainerCreating" for w in exc.waiting.values())
            self._not_started(pod, exc.waiting, retry=0.2 if pulling else 1.0)
            return None
        except ContainerConfigError as exc:
            waiting = {
                c["name"]: Waiting("CreateContainerConfigError", str(exc))
                for c in pod["spec"]["containers"]
            }
            self._not_started(pod, waiting, retry=2.0)
            return None
        self.retry_at.pop(meta["uid"], None)
        self.waiting_key.pop(meta["uid"], None)
        if not self.config.host_images:
            for plan in [*local.init, *local.main]:
                self._event(pod, "Normal", "Pulled", f'Container image "{plan.image}" is present')
        # Adoption: an earlier agent may have started these containers already.
        for index, plan in enumerate(local.init):
            if runtime.observe(local.pod_dir, plan.name) is not None:
                local.started_init = index + 1
        if any(runtime.observe(local.pod_dir, p.name) is not None for p in local.main):
            local.main_started = True
            local.started_init = len(local.init)
            log.info("adopted pod %s/%s", meta["namespace"], meta["name"])
        self.local[meta["uid"]] = local
        return local

    def _start(self, pod: Pod, local: LocalPod, plan: ContainerPlan) -> None:
        try:
            started = runtime.start(plan, local.pod_dir)
            with self.lock:
                self.shims.append(started)
        except OSError as exc:
            # The shim records a start error like a failed exec; the status shows it.
            sdir = runtime.state_dir(local.pod_dir, plan.name)
            (sdir / "exit.json").write_text(
                json.dumps(
                    {
                        "exit_code": 128,
                        "started_at": st.now(),
                        "finished_at": st.now(),
                        "reason": "StartError",
                        "message": str(exc),
                    }
                )
            )
            self._event(pod, "Warning", "Failed", f"Error: {exc}")
            return
        local.probes.pop(plan.name, None)
        what = (
            " ".join(plan.runc.spec["process"]["args"][:3])
            if plan.runc
            else " ".join(plan.argv[:3])
        )
        self._event(pod, "Normal", "Started", f"Started container {plan.name} ({what} ...)")

    def _tracker(
        self, local: LocalPod, plan: ContainerPlan, started_at: str
    ) -> probes.ProbeTracker:
        """The probe state of this container instance (a restart gets a fresh one)."""
        with self.probe_lock:  # the prober and the worker both ask
            current = local.probes.get(plan.name)
            if current is None or current[0] != started_at:
                current = (started_at, probes.ProbeTracker(plan.spec))
                local.probes[plan.name] = current
            return current[1]

    def _states(
        self, local: LocalPod, plans: list[ContainerPlan], *, started: bool
    ) -> list[st.ContainerState]:
        states = []
        for plan in plans:
            seen = runtime.observe(local.pod_dir, plan.name) if started else None
            cid = (
                f"runc://{plan.runc.container_id}"
                if plan.runc
                else f"process://{local.uid}/{plan.name}"
            )
            restarts = local.restarts.get(plan.name, 0)
            if plan.name in local.restart_at:
                message = f"back-off restarting failed container {plan.name}"
                states.append(
                    st.ContainerState(
                        plan.name,
                        plan.image,
                        st.waiting("CrashLoopBackOff", message),
                        restart_count=restarts,
                        container_id=cid,
                        image_id=plan.image_id or None,
                        last_state=local.last_state.get(plan.name),
                    )
                )
                continue
            if isinstance(seen, runtime.Exited):
                message = seen.message or runtime.termination_message(
                    plan.termination_path,
                    plan.log_path,
                    plan.termination_policy,
                    seen.exit_code != 0,
                )
                state = st.terminated(
                    seen.exit_code, seen.started_at, seen.finished_at, message, seen.reason
                )
                states.append(
                    st.ContainerState(
                        plan.name,
                        plan.image,
                        state,
                        container_id=cid,
                        image_id=plan.image_id or None,
                    )
                )
            elif isinstance(seen, runtime.Running):
                tracker = self._tracker(local, plan, seen.started_at)
                states.append(
                    st.ContainerState(
                        plan.name,
                        plan.image,
                        st.running(seen.started_at),
                        ready=tracker.ready and plan.name not in local.probe_kill_at,
                        restart_count=restarts,
                        container_id=cid,
                        started=tracker.started,
                        image_id=plan.image_id or None,
                        last_state=local.last_state.get(plan.name),
                    )
                )
            elif isinstance(seen, runtime.Lost):
                state = st.terminated(
                    137,
                    st.now(),
                    st.now(),
                    "The container could not be located when the kubelet looked for it",
                    "ContainerStatusUnknown",
                )
                states.append(
                    st.ContainerState(
                        plan.name,
                        plan.image,
                        state,
                        container_id=cid,
                        image_id=plan.image_id or None,
                    )
                )
            else:
                reason = "ContainerCreating" if started else "PodInitializing"
                states.append(st.ContainerState(plan.name, plan.image, st.waiting(reason)))
        return states

    def _advance(self, pod: Pod, local: LocalPod) -> None:
        # Init containers one after another, each must succeed.
        while local.started_init <= len(local.init) and local.init:
            index = local.started_init - 1
            if index >= 0:
                seen = runtime.observe(local.pod_dir, local.init[index].name)
                if not isinstance(seen, runtime.Exited):
                    break
                if seen.exit_code != 0:
                    self._finish(pod, local)
                    return
            if local.started_init == len(local.init):
                break
            self._start(pod, local, local.init[local.started_init])
            local.started_init += 1
            break
        init_done = local.started_init == len(local.init) and all(
            isinstance(s := runtime.observe(local.pod_dir, p.name), runtime.Exited)
            and s.exit_code == 0
            for p in local.init
        )
        if init_done and not local.main_started:
            for plan in local.main:
                self._start(pod, local, plan)
            local.main_started = True
        if local.main_started and not local.deadline_exceeded:
            self._kill_failed_probes(pod, local)
            self._restart_exited(pod, local)
        self._finish(pod, local)

    def _kill_failed_probes(self, pod: Pod, local: LocalPod) -> None:
        """A failed startup/liveness probe: stop the container (grace, then SIGKILL); the
        restart policy brings it back, as the kubelet does."""
        now = time.monotonic()
        for plan in local.main:
            seen = runtime.observe(local.pod_dir, plan.name)
            if not isinstance(seen, runtime.Running):
                local.probe_kill_at.pop(plan.name, None)
                continue
            due = local.probe_kill_at.get(plan.name)
            if due is not None:
                if now >= due:
                    runtime.send(local.pod_dir, plan.name, signal.SIGKILL)
                continue
            tracker = self._tracker(local, plan, seen.started_at)
            why = tracker.kill_reason()
            if why is None:
                continue
            grace = pod["spec"].get("terminationGracePeriodSeconds")
            local.probe_kill_at[plan.name] = now + (30 if grace is None else int(grace))
            self._event(pod, "Normal", "Killing", f"Container {plan.name} {why}")
            runtime.send(local.pod_dir, plan.name, signal.SIGTERM)

    # -- probes --------------------------------------------------------------------
    def _probe_loop(self) -> None:
        while not self.stop_event.wait(0.2):
            for uid, local in list(self.local.items()):
                try:
                    self._probe_pod(uid, local)
                except Exception:
                    log.exception("probing pod %s failed", uid)

    def _probe_pod(self, uid: str, local: LocalPod) -> None:
        with self.lock:
            pod = self.cache.get(uid)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        connect = probes.connector(local.netns)
        changed = False
        for plan in local.main:
            if not any(plan.spec.get(kind) for kind in probes.KINDS):
                continue
            seen = runtime.observe(local.pod_dir, plan.name)
            if not isinstance(seen, runtime.Running):
                continue
            tracker = self._tracker(local, plan, seen.started_at)
            for kind in tracker.due(time.monotonic()):
                ok, message = probes.check(
                    plan.spec[kind],
                    plan.spec,
                    connect,
                    lambda cmd, timeout, plan=plan: runtime.exec_in(plan, cmd, timeout),
                )
                changed |= tracker.record(kind, ok, message, time.monotonic())
                failures = tracker.counters[kind].failures
                threshold = int(plan.spec[kind].get("failureThreshold", 3))
                # One event when a streak of failures starts and one when it counts, not one
                # per period: the kubelet's recorder aggregates what we would repeat.
                if not ok and failures in (1, threshold):
                    what = kind.removesuffix("Probe").capitalize()
                    self._event(pod, "Warning", "Unhealthy", f"{what} probe failed: {message}")
        if changed:
            self.enqueue(uid)

    def _restart_exited(self, pod: Pod, local: LocalPod) -> None:
        """restartPolicy Always / OnFailure: restart with the kubelet's doubling back-off."""
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Never":
            return
        now = time.monotonic()
        for plan in local.main:
            seen = runtime.observe(local.pod_dir, plan.name)
            if isinstance(seen, runtime.Exited) and policy == "OnFailure" and seen.exit_code == 0:
                continue
            if not isinstance(seen, runtime.Exited | runtime.Lost):
                continue
            due = local.restart_at.get(plan.name)
            if due is None:
                if isinstance(seen, runtime.Exited):  # `kubectl describe`'s Last State
                    message = runtime.termination_message(
                        plan.termination_path,
                        plan.log_path,
                        plan.termination_policy,
                        seen.exit_code != 0,
                    )
                    local.last_state[plan.name] = st.terminated(
                        seen.exit_code, seen.started_at, seen.finished_at, message, seen.reason
                    )
                count = local.restarts.get(plan.name, 0)
                local.restart_at[plan.name] = now + min(300.0, 10.0 * 2**count if count else 1.0)
            elif now >= due:
                del local.restart_at[plan.name]
                local.restarts[plan.name] = local.restarts.get(plan.name, 0) + 1
                self._start(pod, local, plan)

    def _finish(self, pod: Pod, local: LocalPod) -> None:
        init_states = self._states(local, local.init, started=True) if local.init else None
        states = self._states(local, local.main, started=local.main_started)
        init_failed = bool(init_states) and any(
            s.terminated and s.terminated["exitCode"] != 0 for s in init_states or []
        )
        phase = "Failed" if init_failed else None
        if phase is None and local.restart_at:
            phase = "Running"  # a container in back-off keeps its Pod Running, as on a node
        policy = pod["spec"].get("restartPolicy", "Always")
        ended = st.pod_phase(states)
        # A container that exited after _restart_exited looked is restarted on the next
        # pass: under Always (and OnFailure, after a failure) its Pod has not ended.
        restarts = policy == "Always" or (policy == "OnFailure" and ended == "Failed")
        if phase is None and ended in TERMINAL_PHASES and restarts:
            phase = "Running"
        reason = message = None
        if local.deadline_exceeded:
            phase, reason = "Failed", "DeadlineExceeded"
            message = "Pod was active on the node longer than the specified deadline"
            if not all(s.terminated for s in states):
                return  # wait for the killed processes to be recorded
        body = st.pod_status(
            pod, states, phase=phase, reason=reason, message=message, init_containers=init_states
        )
        self._patch_status(pod, body, key=_status_key(body))
        if body["phase"] in TERMINAL_PHASES:
            local.last_status = _status_key(body)

    def _enforce_deadline(self, pod: Pod, local: LocalPod) -> None:
        deadline = pod["spec"].get("activeDeadlineSeconds")
        start = pod.get("status", {}).get("startTime")
        if not deadline or not start or local.deadline_exceeded:
            return
        if time.time() - _parse_time(start) > int(deadline):
            local.deadline_exceeded = True
            self._event(
                pod,
                "Normal",
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline",
            )
            for plan in [*local.init, *local.main]:
                runtime.send(local.pod_dir, plan.name, signal.SIGKILL)

    # -- deletion ----------------------------------------------------------------
    def _terminate(self, pod: Pod, local: LocalPod) -> None:
        """Graceful deletion: SIGTERM, grace period, SIGKILL, terminal status, final delete."""
        plans = [*local.init, *local.main]
        alive = [
            p for p in plans if isinstance(runtime.observe(local.pod_dir, p.name), runtime.Running)
        ]
        now = time.monotonic()
        if alive and local.term_sent_at is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            grace = 30 if grace is None else int(grace)
            local.term_sent_at = now
            local.kill_at = now + grace
            for plan in alive:
                runtime.send(local.pod_dir, plan.name, signal.SIGTERM)
            self._event(
                pod,
                "Normal",
                "Killing",
                f"Stopping container(s) {', '.join(p.name for p in alive)} (grace {grace}s)",
            )
            return
        if alive and local.kill_at is not None and now >= local.kill_at:
            for plan in alive:
                runtime.send(local.pod_dir, plan.name, signal.SIGKILL)
            return
        if alive:
            return
        states = self._states(local, local.main, started=local.main_started)
        if not local.main_started:
            states = [
                st.ContainerState(
                    p.name,
                    p.image,
                    st.terminated(137, st.now(), st.now(), "", "ContainerStatusUnknown"),
                )
                for p in local.main
            ]
        body = st.pod_status(pod, states)
        if body["phase"] not in TERMINAL_PHASES:
            body["phase"] = "Failed"
        self._patch_status(pod, body, key=_status_key(body))
        self._final_delete(pod)

    def _final_delete(self, pod: Pod) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(KubeError):
            self.client.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    # -- writing -----------------------------------------------------------------
    def _write_terminal_error(self, pod: Pod, reason: str, message: str) -> None:
        states = [
            st.ContainerState(
                c["name"], c["image"], st.terminated(128, st.now(), st.now(), message, reason)
            )
            for c in pod["spec"]["containers"]
        ]
        body = st.pod_status(pod, states, phase="Failed", reason=reason, message=message)
        self._patch_status(pod, body, key=f"err:{reason}")

    def _patch_status(self, pod: Pod, body: dict[str, Any], *, key: str) -> None:
        uid = pod["metadata"]["uid"]
        local = self.local.get(uid)
        if local is not None and local.last_status == key:
            return
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        try:
            self.client.patch(path, {"metadata": {"uid": uid}, "status": body}, kind="strategic")
        except KubeError as exc:
            if exc.status in (404, 409):
                return
            raise
        if local is not None:
            local.last_status = key

    def _event(self, pod: Pod, kind: str, reason: str, message: str) -> None:
        event = event_body(
            pod,
            api_version="v1",
            kind="Pod",
            event_type=kind,
            reason=reason,
            message=message,
            component="process-kubelet",
            instance=self.config.node_name,
            host=self.config.node_name,
        )
        with contextlib.suppress(Exception):
            self.client.post(f"/api/v1/namespaces/{pod['metadata']['namespace']}/events", event)


def _status_key(body: dict[str, Any]) -> str:
    """What makes two status writes different (timestamps excluded)."""
    parts = [body["phase"], body.get("reason", "")]
    for c in body.get("initContainerStatuses", []) + body["containerStatuses"]:
        state = c["state"]
        kind = next(iter(state))
        parts.append(
            f"{c['name']}:{kind}:{state[kind].get('exitCode', '')}:{state[kind].get('reason', '')}"
            f":{c.get('restartCount', 0)}:{c.get('ready')}:{c.get('started')}"
        )
    return "|".join(parts)
