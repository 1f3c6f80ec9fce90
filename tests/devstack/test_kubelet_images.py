"""The process kubelet runs Pods in their images: pulled from the local registry, run with
runc on an overlay of the image's layers, each Pod in its own network namespace.

One stack for the module, started without the host-command mapping, with a real
registry; the test image is Debian's static busybox, pushed there by the fixture.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from editflow.devstack import installer
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import free_port, wait_until
from editflow.devstack.registry import LocalRegistry
from editflow.devstack.stack import LocalStack
from tests.devstack.testimage import push_busybox

pytestmark = [pytest.mark.platform, pytest.mark.slow]

NODE = "editflow-local-node"


@pytest.fixture(scope="module")
def image_stack(tmp_path_factory) -> Iterator[LocalStack]:
    with LocalStack(registry=True, nats=False, minio=False) as running:
        yield running


@pytest.fixture(scope="module")
def busybox(image_stack: LocalStack, tmp_path_factory) -> str:
    return push_busybox(image_stack.registry.address, tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def api(image_stack: LocalStack) -> Iterator[KubeClient]:
    client = KubeClient(image_stack.kubeconfig)
    yield client
    client.close()


@pytest.fixture
def ns(api: KubeClient) -> str:
    name = f"img-{uuid.uuid4().hex[:8]}"
    api.post(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    wait_until(
        lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default") is not None,
        timeout=30,
        what="the default service account",
    )
    return name


def kubectl(stack: LocalStack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(installer.binary("kubectl")), f"--kubeconfig={stack.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": "/dev/null"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def pod_manifest(
    name: str, image: str, script: str | None, *, container: dict | None = None, **spec: Any
) -> dict[str, Any]:
    main: dict[str, Any] = {"name": "main", "image": image}
    if script is not None:
        main["command"] = ["sh", "-c", script]
    main.update(container or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [main], **spec},
    }


def create(api: KubeClient, ns: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return api.post(f"/api/v1/namespaces/{ns}/pods", manifest)


def wait_pod(
    api: KubeClient,
    ns: str,
    name: str,
    check: Callable[[dict], bool],
    what: str,
    timeout: float = 90,
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.clear()
        seen.update(api.get(f"/api/v1/namespaces/{ns}/pods/{name}"))
        return check(seen)

    try:
        wait_until(reached, timeout=timeout, what=f"pod {ns}/{name}: {what}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; status: {json.dumps(seen.get('status'))}") from None
    return seen


def main_status(pod: dict[str, Any]) -> dict[str, Any]:
    return ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]


def finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return cond["status"]
    return None


def events(api: KubeClient, ns: str, name: str) -> list[str]:
    items = api.get(f"/api/v1/namespaces/{ns}/events", fieldSelector=f"involvedObject.name={name}")[
        "items"
    ]
    return [f"{e['reason']}: {e['message']}" for e in items]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def pod_dir(stack: LocalStack, pod: dict[str, Any]) -> Path:
    meta = pod["metadata"]
    return stack.kubelet.root / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def test_a_pod_runs_in_its_image_with_its_command_env_and_working_dir(
    image_stack, api, ns, busybox
) -> None:
    script = (
        'echo "$GREETING from $(pwd)"; '
        "[ -e /work ] && echo host-root-visible; "  # /work exists on the host, not in the image
        "wget -q -O - http://127.0.0.1:$REGISTRY_PORT/v2/ > /dev/termination-log"
    )
    container = {
        "env": [
            {"name": "WHO", "value": "busybox"},
            {"name": "GREETING", "value": "hello $(WHO)"},
            {"name": "REGISTRY_PORT", "value": str(image_stack.registry.port)},
        ],
        "workingDir": "/tmp",
    }
    create(api, ns, pod_manifest("hello", busybox, script, container=container))
    pod = wait_pod(api, ns, "hello", finished, "finish")
    state = main_status(pod)["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded", state
    # The platform's loopback services are reachable from the Pod's own namespace.
    assert state["message"] == "{}"
    assert "@sha256:" in main_status(pod)["imageID"]
    logs = kubectl(image_stack, "-n", ns, "logs", "hello").stdout
    assert logs == "hello busybox from /tmp\n"


def test_volumes_are_bind_mounts_where_the_pod_says(image_stack, api, ns, busybox) -> None:
    kubectl(
        image_stack, "-n", ns, "create", "configmap", "cfg", "--from-literal=app.conf=mode=fast"
    )
    kubectl(
        image_stack, "-n", ns, "create", "secret", "generic", "creds", "--from-literal=token=s3"
    )
    script = (
        "cat /etc/app/app.conf; echo; cat /secrets/token; echo; "
        "if touch /secrets/new 2>/dev/null; then echo secret-writable; else echo secret-ro; fi; "
        "touch /scratch/ok && echo scratch-writable; "
        "echo kept > /data/note"
    )
    container = {
        # Not root and no fsGroup: emptyDir and a new claim are writable all the same.
        "securityContext": {"runAsUser": 10001},
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "cfg", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
            {"name": "creds", "mountPath": "/secrets", "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }
    volumes = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    create(api, ns, pod_manifest("mounts", busybox, script, container=container, volumes=volumes))
    pod = wait_pod(api, ns, "mounts", finished, "finish")
    assert pod["status"]["phase"] == "Succeeded", main_status(pod)
    assert (
        kubectl(image_stack, "-n", ns, "logs", "mounts").stdout
        == "mode=fast\ns3\nsecret-ro\nscratch-writable\n"
    )
    # The claim outlives the Pod: a second Pod reads what the first wrote.
    reader = pod_manifest(
        "reader",
        busybox,
        "cat /data/note > /dev/termination-log",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[volumes[2]],
    )
    create(api, ns, reader)
    pod = wait_pod(api, ns, "reader", finished, "finish")
    assert main_status(pod)["state"]["terminated"]["message"] == "kept\n"


def test_security_context_read_only_root_non_root_user_no_new_privileges_dropped_caps(
    api, ns, busybox
) -> None:
    script = (
        "if touch /oops 2>/dev/null; then echo root-writable; else echo root-read-only; fi; "
        "touch /scratch/ok && stat -c 'scratch-group=%g' /scratch/ok; "
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); "
        "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status"
    )
    container = {
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "terminationMessagePath": "/scratch-log/message",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    manifest = pod_manifest(
        "locked",
        busybox,
        "{ " + script + "; } > /scratch-log/message",
        container=container,
        securityContext={"fsGroup": 2000, "runAsNonRoot": True},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    create(api, ns, manifest)
    pod = wait_pod(api, ns, "locked", finished, "finish")
    message = main_status(pod)["state"]["terminated"]["message"]
    assert pod["status"]["phase"] == "Succeeded", message
    assert "root-read-only" in message
    assert "scratch-group=2000" in message  # fsGroup owns the volume
    assert "uid=10001 gid=10001 groups=10001 2000" in message
    assert "NoNewPrivs:\t1" in message
    assert "CapEff:\t0000000000000000" in message


def test_run_as_non_root_on_a_root_image_is_refused_with_the_kubelets_message(
    api, ns, busybox
) -> None:
    manifest = pod_manifest("rooty", busybox, "true", securityContext={"runAsNonRoot": True})
    created = create(api, ns, manifest)

    def refused(pod: dict) -> bool:
        waiting = main_status(pod).get("state", {}).get("waiting", {})
        return waiting.get("reason") == "CreateContainerConfigError"

    pod = wait_pod(api, ns, "rooty", refused, "CreateContainerConfigError")
    uid = created["metadata"]["uid"]
    assert main_status(pod)["state"]["waiting"]["message"] == (
        f'container has runAsNonRoot and image will run as root (pod: "rooty_{ns}({uid})", '
        "container: main)"
    )
    assert pod["status"]["phase"] == "Pending"


def test_a_missing_image_ends_in_image_pull_back_off_with_the_reason(image_stack, api, ns) -> None:
    image = f"{image_stack.registry.address}/editflow-test/absent:1"
    create(api, ns, pod_manifest("ghost", image, "true"))

    def backing_off(pod: dict) -> bool:
        waiting = main_status(pod).get("state", {}).get("waiting", {})
        return waiting.get("reason") == "ImagePullBackOff"

    pod = wait_pod(api, ns, "ghost", backing_off, "ImagePullBackOff")
    message = main_status(pod)["state"]["waiting"]["message"]
    assert message.startswith(f'Back-off pulling image "{image}": ErrImagePull: ')
    assert "manifest unknown" in message
    assert pod["status"]["phase"] == "Pending"
    seen = events(api, ns, "ghost")
    assert "Failed: Error: ErrImagePull" in seen  # first the pull error, then the back-off
    assert any(e.startswith("BackOff: Back-off pulling image") for e in seen)
    # A Pod that never started is removed at once when deleted, not left Terminating.
    kubectl(image_stack, "-n", ns, "delete", "pod", "ghost", "--wait=false")
    wait_until(
        lambda: not api.get(f"/api/v1/namespaces/{ns}/pods")["items"],
        timeout=30,
        what="the never-started pod to be deleted",
    )


def test_image_pull_secrets_give_the_kubelet_the_registrys_credentials(
    image_stack, api, ns, busybox, tmp_path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt: bcrypt for htpasswd
        import crypt
    htpasswd = tmp_path / "htpasswd"
    bcrypt = crypt.mksalt(crypt.METHOD_BLOWFISH)  # noqa: S324 - bcrypt, what htpasswd wants
    htpasswd.write_text(f"puller:{crypt.crypt('s3cret', bcrypt)}\n")
    # A registry that wants credentials, on the same storage: the image is already there.
    private = LocalRegistry(tmp_path / "private", htpasswd=htpasswd)
    private.start()
    try:
        image = busybox.replace(image_stack.registry.address, private.address)
        create(api, ns, pod_manifest("anonymous", image, "true"))

        def refused(pod: dict) -> bool:
            waiting = main_status(pod).get("state", {}).get("waiting", {})
            return waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff")

        pod = wait_pod(api, ns, "anonymous", refused, "the pull to be refused")
        assert "authentication required" in main_status(pod)["state"]["waiting"]["message"]
        auth = base64.b64encode(b"puller:s3cret").decode()
        config = json.dumps({"auths": {private.address: {"auth": auth}}})
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
        }
        api.post(f"/api/v1/namespaces/{ns}/secrets", secret)
        authed = pod_manifest("authed", image, "true", imagePullSecrets=[{"name": "regcred"}])
        create(api, ns, authed)
        pod = wait_pod(api, ns, "authed", finished, "finish")
        assert pod["status"]["phase"] == "Succeeded", main_status(pod)
    finally:
        private.stop()


def test_a_failing_readiness_probe_keeps_the_pod_unready_until_it_passes(
    image_stack, api, ns, busybox
) -> None:
    container = {
        "readinessProbe": {
            "exec": {"command": ["test", "-e", "/flags/ready"]},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
        "volumeMounts": [{"name": "flags", "mountPath": "/flags"}],
    }
    manifest = pod_manifest(
        "shy",
        busybox,
        "sleep 300",
        container=container,
        volumes=[{"name": "flags", "emptyDir": {}}],
        terminationGracePeriodSeconds=1,
    )
    create(api, ns, manifest)

    def running_and_probed(pod: dict) -> bool:
        return "running" in main_status(pod).get("state", {}) and any(
            e.startswith("Unhealthy: Readiness probe failed") for e in events(api, ns, "shy")
        )

    pod = wait_pod(api, ns, "shy", running_and_probed, "running with a failed readiness probe")
    assert condition(pod, "Ready") == "False"
    assert main_status(pod)["ready"] is False
    (pod_dir(image_stack, pod) / "volumes" / "flags" / "ready").touch()
    pod = wait_pod(api, ns, "shy", lambda p: condition(p, "Ready") == "True", "Ready")
    assert main_status(pod)["ready"] is True
    assert main_status(pod)["restartCount"] == 0


def test_a_failing_liveness_probe_restarts_the_container(api, ns, busybox) -> None:
    container = {
        "livenessProbe": {
            "tcpSocket": {"port": 8080},  # nothing listens there
            "periodSeconds": 1,
            "failureThreshold": 2,
        }
    }
    manifest = pod_manifest(
        "sickly",
        busybox,
        "sleep 300",
        container=container,
        restartPolicy="Always",
        terminationGracePeriodSeconds=1,
    )
    create(api, ns, manifest)
    pod = wait_pod(
        api,
        ns,
        "sickly",
        lambda p: main_status(p).get("restartCount", 0) >= 1,
        "a restart after the liveness probe failed",
    )
    assert pod["status"]["phase"] == "Running"
    assert any("failed liveness probe, will be restarted" in e for e in events(api, ns, "sickly"))
    # `sleep` as PID 1 ignores SIGTERM: the grace period ends in SIGKILL, as on a node.
    assert main_status(pod)["lastState"]["terminated"]["exitCode"] == 137


def test_two_replicas_listening_on_one_port_on_one_node_both_become_ready(
    image_stack, api, ns, busybox
) -> None:
    script = (
        "mkdir -p /tmp/www && echo $HOSTNAME > /tmp/www/index.html && "
        "exec httpd -f -p 8080 -h /tmp/www"
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "web",
                            "image": busybox,
                            "command": ["sh", "-c", script],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }
    api.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)

    def both_ready() -> bool:
        got = api.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web")
        return (got.get("status") or {}).get("readyReplicas") == 2

    wait_until(both_ready, timeout=120, what="both replicas Ready")
    pods = api.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="app=web")["items"]
    assert len(pods) == 2 and all(p["spec"]["nodeName"] == NODE for p in pods)
    # Each Pod's 8080 is its own: through a port-forward each answers with its own name.
    for pod in pods:
        with image_stack.kubelet.port_forward(pod, 8080) as forward:
            reply = urllib.request.urlopen(f"http://127.0.0.1:{forward.host_port}/", timeout=10)
            assert reply.read().decode().strip() == pod["metadata"]["name"]


def test_a_host_port_publishes_the_pods_port_on_the_hosts_loopback(api, ns, busybox) -> None:
    host_port = free_port()
    script = "mkdir -p /tmp/www && echo served-from-pod > /tmp/www/index.html && "
    script += "exec httpd -f -p 8080 -h /tmp/www"
    container = {
        "ports": [{"containerPort": 8080, "hostPort": host_port}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    manifest = pod_manifest(
        "published",
        busybox,
        script,
        container=container,
        terminationGracePeriodSeconds=1,
    )
    create(api, ns, manifest)
    wait_pod(api, ns, "published", lambda p: condition(p, "Ready") == "True", "Ready")
    with socket.create_connection(("127.0.0.1", host_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.rstrip().endswith(b"served-from-pod")


def test_a_host_network_pod_after_its_init_container_reaches_any_host_port(
    image_stack, api, ns, busybox
) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from-the-host")

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]  # published nowhere: only the host network reaches it
        shared = {"volumeMounts": [{"name": "work", "mountPath": "/work"}]}
        manifest = pod_manifest(
            "hostnet",
            busybox,
            f"cat /work/init; wget -q -O - http://127.0.0.1:{port}/",
            container=shared,
            hostNetwork=True,
            volumes=[{"name": "work", "emptyDir": {}}],
            initContainers=[
                {
                    "name": "prepare",
                    "image": busybox,
                    "command": ["sh", "-c", "echo init-ran > /work/init"],
                    **shared,
                }
            ],
        )
        create(api, ns, manifest)
        pod = wait_pod(api, ns, "hostnet", finished, "finish")
    finally:
        server.shutdown()
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    init = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert init["exitCode"] == 0
    logs = kubectl(image_stack, "-n", ns, "logs", "hostnet").stdout
    assert logs == "init-ran\nfrom-the-host"


def test_a_cordoned_node_gets_no_new_pods(image_stack, api, ns, busybox) -> None:
    kubectl(image_stack, "cordon", NODE)
    try:
        create(api, ns, pod_manifest("late", busybox, "true"))

        def unschedulable(pod: dict) -> bool:
            return any(
                c["type"] == "PodScheduled"
                and c["status"] == "False"
                and c.get("reason") == "Unschedulable"
                for c in (pod.get("status") or {}).get("conditions") or []
            )

        pod = wait_pod(api, ns, "late", unschedulable, "Unschedulable")
        cond = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
        assert cond["message"] == "0/1 nodes are available: 1 node(s) were unschedulable."
        assert not pod["spec"].get("nodeName")
    finally:
        kubectl(image_stack, "uncordon", NODE)
    pod = wait_pod(api, ns, "late", finished, "run once uncordoned")
    assert pod["status"]["phase"] == "Succeeded"


def test_deleting_a_runc_pod_sends_sigterm_and_leaves_no_container_mount_or_bridge(
    image_stack, api, ns, busybox
) -> None:
    script = "trap 'echo graceful > /flags/term; exit 0' TERM; while true; do sleep 0.1; done"
    manifest = pod_manifest(
        "polite",
        busybox,
        script,
        container={"volumeMounts": [{"name": "flags", "mountPath": "/flags"}]},
        volumes=[{"name": "flags", "emptyDir": {}}],
    )
    created = create(api, ns, manifest)
    pod = wait_pod(
        api, ns, "polite", lambda p: "running" in main_status(p).get("state", {}), "Running"
    )
    where = pod_dir(image_stack, pod)
    flags = where / "volumes" / "flags"
    kubectl(image_stack, "-n", ns, "delete", "pod", "polite", "--grace-period=30", "--wait=false")
    wait_until(lambda: (flags / "term").exists(), timeout=60, what="the trap to see SIGTERM")
    assert (flags / "term").read_text() == "graceful\n"  # SIGTERM, not the grace's SIGKILL

    def gone() -> bool:
        items = api.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        return not items and not where.exists()

    wait_until(gone, timeout=60, what="the pod and its directory to be removed")
    runc_root = image_stack.kubelet.root / "runc"
    listed = subprocess.run(
        ["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True
    ).stdout
    assert created["metadata"]["uid"] not in listed
    assert str(where) not in Path("/proc/self/mountinfo").read_text()  # root and netns unmounted
    # No shim, runc or network bridge left (a SIGKILLed one may take a moment to go).
    wait_until(lambda: not processes_mentioning(str(where)), timeout=30, what="no processes")


def test_a_restarted_kubelet_adopts_a_running_runc_container(image_stack, api, ns, busybox) -> None:
    script = "while [ ! -e /flags/go ]; do sleep 0.1; done; echo adopted > /dev/termination-log"
    manifest = pod_manifest(
        "survivor",
        busybox,
        script,
        container={"volumeMounts": [{"name": "flags", "mountPath": "/flags"}]},
        volumes=[{"name": "flags", "emptyDir": {}}],
    )
    create(api, ns, manifest)
    pod = wait_pod(
        api, ns, "survivor", lambda p: "running" in main_status(p).get("state", {}), "Running"
    )
    agent = image_stack.kubelet.process
    os.kill(agent.pid, signal.SIGKILL)  # a crash, not a clean stop
    agent.proc.wait()
    runc_root = image_stack.kubelet.root / "runc"

    def listed_by_runc() -> bool:
        listed = subprocess.run(
            ["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True
        ).stdout.split()
        return any(pod["metadata"]["uid"] in cid for cid in listed)

    # "running" is reported once the shim has started `runc run`; under load runc may still
    # be creating the container when the kubelet dies. The shim carries on without it.
    wait_until(listed_by_runc, timeout=30, what="the container to outlive its kubelet")
    image_stack.kubelet.start_process()
    (pod_dir(image_stack, pod) / "volumes" / "flags" / "go").touch()
    pod = wait_pod(api, ns, "survivor", finished, "finish after adoption")
    assert pod["status"]["phase"] == "Succeeded"
    assert main_status(pod)["state"]["terminated"]["message"] == "adopted\n"


def test_stopping_a_stack_leaves_no_container_mount_or_process_behind(image_stack, busybox) -> None:
    stack = LocalStack(registry=True, nats=False, minio=False, keep_workdir=True)
    stack.start()
    # The second registry serves what was pushed through the first: one storage.
    image = busybox.replace(image_stack.registry.address, stack.registry.address)
    try:
        client = KubeClient(stack.kubeconfig)
        try:
            client.post(
                "/api/v1/namespaces/default/pods",
                pod_manifest("lingerer", image, "sleep 300", restartPolicy="Always"),
            )
            wait_pod(
                client,
                "default",
                "lingerer",
                lambda p: "running" in main_status(p).get("state", {}),
                "Running",
            )
        finally:
            client.close()
    finally:
        stack.stop()
    workdir = str(stack.workdir)
    try:
        assert workdir not in Path("/proc/self/mountinfo").read_text()
        wait_until(lambda: not processes_mentioning(workdir), timeout=30, what="no processes")
        listed = subprocess.run(
            ["runc", "--root", f"{workdir}/kubelet/runc", "list", "-q"],
            capture_output=True,
            text=True,
        ).stdout
        assert not listed.strip()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
