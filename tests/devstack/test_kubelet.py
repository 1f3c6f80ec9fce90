"""The process kubelet on the real control plane: Jobs run, fail, time out and clean up
exactly as the Job controller expects."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack

pytestmark = [pytest.mark.platform, pytest.mark.slow]


@pytest.fixture
def ns(kubectl) -> Iterator[str]:
    """A namespace per test, deleted afterwards: a Pod a test leaves (one kept Pending by a
    missing Secret, say) would otherwise hold a slot on the shared node for the session."""
    name = f"kl-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    wait_until(
        lambda: (
            kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0
        ),
        timeout=30,
        what="the default service account",
    )
    yield name
    # Jobs first (so none makes a new Pod), then the Pods at once: one that never started has
    # nothing to stop, and waiting for the namespace controller took longer than a module.
    kubectl("-n", name, "delete", "jobs", "--all", "--wait=false", check=False)
    kubectl("-n", name, "delete", "pods", "--all", "--grace-period=0", "--force", check=False)
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api(stack: LocalStack):
    client = KubeClient(stack.kubeconfig)
    yield client
    client.close()


def job(name: str, command: str, **spec: object) -> str:
    container: dict[str, object] = {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", command],
    }
    container.update(spec.pop("container", {}))  # type: ignore[arg-type]
    pod_spec: dict[str, object] = {"restartPolicy": "Never", "containers": [container]}
    pod_spec.update(spec.pop("pod", {}))  # type: ignore[arg-type]
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod_spec}, **spec},
    }
    return yaml.safe_dump(manifest)


def job_condition(api: KubeClient, ns: str, name: str) -> dict | None:
    status = api.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}").get("status", {})
    for cond in status.get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return cond
    return None


def wait_for_job(api: KubeClient, ns: str, name: str, timeout: float = 60) -> dict:
    found: dict = {}

    def done() -> bool:
        cond = job_condition(api, ns, name)
        if cond:
            found.update(cond)
        return cond is not None

    wait_until(done, timeout=timeout, what=f"job {ns}/{name} to finish")
    return found


def pods_of(api: KubeClient, ns: str, job_name: str) -> list[dict]:
    return api.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"job-name={job_name}")["items"]


def container_pid(stack: LocalStack, pod: dict) -> int:
    meta = pod["metadata"]
    started = (
        stack.kubelet.root
        / "pods"
        / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        / "containers"
        / "main"
        / "started.json"
    )
    wait_until(started.exists, timeout=30, what="the container process to start")
    return int(json.loads(started.read_text())["pid"])


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_node_is_ready_untainted_and_offers_a_gpu(api: KubeClient) -> None:
    node = api.get("/api/v1/nodes/editflow-local-node")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    pressure = [c for c in node["status"]["conditions"] if c["type"].endswith("Pressure")]
    assert pressure and all(c["status"] == "False" for c in pressure)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert not node["spec"].get("taints")


def test_a_job_completes_with_logs_and_termination_message(kubectl, api, ns) -> None:
    kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=job("ok", "echo hello from a process; printf 'all good' > /dev/termination-log"),
    )
    assert wait_for_job(api, ns, "ok")["type"] == "Complete"
    (pod,) = pods_of(api, ns, "ok")
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    assert state["message"] == "all good"
    assert pod["status"]["phase"] == "Succeeded"
    assert kubectl("-n", ns, "logs", "job/ok").stdout == "hello from a process\n"


def test_a_failing_job_fails_with_the_exit_code(kubectl, api, ns) -> None:
    kubectl("-n", ns, "apply", "-f", "-", input=job("bad", "echo oops >&2; exit 9"))
    cond = wait_for_job(api, ns, "bad")
    assert cond["type"] == "Failed" and cond["reason"] == "BackoffLimitExceeded"
    (pod,) = pods_of(api, ns, "bad")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 9


def test_pod_failure_policy_fails_the_job_at_once_on_a_permanent_exit_code(kubectl, api, ns):
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}}]}
    kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=job("permanent", "exit 3", backoffLimit=5, podFailurePolicy=policy),
    )
    cond = wait_for_job(api, ns, "permanent")
    assert cond["type"] == "Failed" and cond["reason"] == "PodFailurePolicy"
    assert len(pods_of(api, ns, "permanent")) == 1  # no retry despite backoffLimit 5


def test_an_active_deadline_kills_a_long_pod(stack, kubectl, api, ns) -> None:
    kubectl("-n", ns, "apply", "-f", "-", input=job("slow", "sleep 300", activeDeadlineSeconds=3))
    wait_until(lambda: pods_of(api, ns, "slow"), timeout=30, what="the pod")
    pid = container_pid(stack, pods_of(api, ns, "slow")[0])
    cond = wait_for_job(api, ns, "slow")
    assert cond["type"] == "Failed" and cond["reason"] == "DeadlineExceeded"
    wait_until(lambda: process_gone(pid), timeout=45, what="the sleeping process to be killed")


def test_a_pod_wanting_more_gpus_than_free_waits_with_a_reason_then_runs(
    stack, kubectl, api, ns, tmp_path
) -> None:
    gate = tmp_path / "release"
    gpu = {"container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=job("holder", f"while [ ! -e {gate} ]; do sleep 0.1; done", **gpu),
    )
    wait_until(lambda: pods_of(api, ns, "holder"), timeout=30, what="holder pod")
    container_pid(stack, pods_of(api, ns, "holder")[0])
    kubectl("-n", ns, "apply", "-f", "-", input=job("waiter", "echo got the gpu", **gpu))

    def unschedulable() -> bool:
        pods = pods_of(api, ns, "waiter")
        conds = pods[0]["status"].get("conditions") or [] if pods else []
        return any(
            c["type"] == "PodScheduled"
            and c["status"] == "False"
            and c["reason"] == "Unschedulable"
            and "Insufficient nvidia.com/gpu" in c["message"]
            for c in conds
        )

    wait_until(unschedulable, timeout=30, what="the waiting pod to be marked Unschedulable")
    assert pods_of(api, ns, "waiter")[0]["status"]["phase"] == "Pending"
    gate.touch()
    assert wait_for_job(api, ns, "holder")["type"] == "Complete"
    assert wait_for_job(api, ns, "waiter")["type"] == "Complete"


def test_deleting_a_job_kills_its_process_and_removes_the_pod(stack, kubectl, api, ns) -> None:
    kubectl("-n", ns, "apply", "-f", "-", input=job("doomed", "sleep 300"))
    wait_until(lambda: pods_of(api, ns, "doomed"), timeout=30, what="the pod")
    pid = container_pid(stack, pods_of(api, ns, "doomed")[0])
    kubectl("-n", ns, "delete", "job", "doomed", "--cascade=foreground", "--wait=false")
    wait_until(lambda: process_gone(pid), timeout=45, what="the process to be killed")
    wait_until(lambda: not pods_of(api, ns, "doomed"), timeout=45, what="the pod to be deleted")


def test_graceful_deletion_gives_the_process_its_sigterm(stack, kubectl, api, ns, tmp_path):
    marker = tmp_path / "got-sigterm"
    script = f"trap 'echo graceful > {marker}; exit 0' TERM; while true; do sleep 0.1; done"
    kubectl("-n", ns, "apply", "-f", "-", input=job("polite", script))
    wait_until(lambda: pods_of(api, ns, "polite"), timeout=30, what="the pod")
    pod = pods_of(api, ns, "polite")[0]
    pid = container_pid(stack, pod)
    kubectl("-n", ns, "delete", "pod", pod["metadata"]["name"], "--grace-period=60", "--wait=false")
    wait_until(lambda: process_gone(pid), timeout=30, what="the process to stop on SIGTERM")
    assert marker.read_text() == "graceful\n"  # SIGTERM arrived, not a SIGKILL

    def deleted() -> bool:
        return all(
            p["metadata"]["uid"] != pod["metadata"]["uid"] for p in pods_of(api, ns, "polite")
        )

    wait_until(deleted, timeout=30, what="the pod to be deleted after its process ended")


def test_secret_and_configmap_env_and_volumes_reach_the_process(kubectl, api, ns) -> None:
    kubectl("-n", ns, "create", "secret", "generic", "creds", "--from-literal=token=s3cr3t")
    kubectl("-n", ns, "create", "configmap", "cfg", "--from-literal=mode=fast")
    spec = {
        "container": {
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "GREETING", "value": "token=$(TOKEN)"},
            ],
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "volumeMounts": [{"name": "secret", "mountPath": "/etc/creds"}],
        },
        "pod": {"volumes": [{"name": "secret", "secret": {"secretName": "creds"}}]},
    }
    cmd = (
        'printf "%s|%s|%s|%s" "$GREETING" "$CFG_mode" "$(cat /etc/creds/token)" "$POD"'
        " > /dev/termination-log"
    )
    kubectl("-n", ns, "apply", "-f", "-", input=job("env", cmd, **spec))
    assert wait_for_job(api, ns, "env")["type"] == "Complete"
    (pod,) = pods_of(api, ns, "env")
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert message == f"token=s3cr3t|fast|s3cr3t|{pod['metadata']['name']}"


def test_a_missing_secret_keeps_the_pod_pending_with_a_config_error(kubectl, api, ns) -> None:
    spec = {
        "container": {
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
        }
    }
    kubectl("-n", ns, "apply", "-f", "-", input=job("cfgerr", "true", **spec))

    def config_error() -> bool:
        pods = pods_of(api, ns, "cfgerr")
        statuses = pods[0]["status"].get("containerStatuses") or [] if pods else []
        return any(
            s["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError"
            and 'secret "absent" not found' in s["state"]["waiting"].get("message", "")
            for s in statuses
        )

    wait_until(config_error, timeout=30, what="CreateContainerConfigError")
    assert pods_of(api, ns, "cfgerr")[0]["status"]["phase"] == "Pending"


def test_an_unknown_image_fails_the_pod_with_a_clear_reason(kubectl, api, ns) -> None:
    kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=job("noimage", "true", container={"image": "registry.example/unknown:1"}),
    )
    assert wait_for_job(api, ns, "noimage")["type"] == "Failed"
    (pod,) = pods_of(api, ns, "noimage")
    assert pod["status"]["reason"] == "ErrImagePull"
    assert "registry.example/unknown:1" in pod["status"]["message"]


def test_ttl_after_finished_removes_a_finished_job(kubectl, api, ns) -> None:
    kubectl("-n", ns, "apply", "-f", "-", input=job("short", "true", ttlSecondsAfterFinished=0))
    wait_until(
        lambda: kubectl("-n", ns, "get", "job", "short", check=False).returncode != 0,
        timeout=60,
        what="the TTL controller to delete the job",
    )


def test_a_restarted_kubelet_adopts_a_running_pod(stack, kubectl, api, ns, tmp_path) -> None:
    gate = tmp_path / "go"
    kubectl(
        "-n",
        ns,
        "apply",
        "-f",
        "-",
        input=job(
            "survivor",
            f"while [ ! -e {gate} ]; do sleep 0.1; done; echo adopted > /dev/termination-log",
        ),
    )
    wait_until(lambda: pods_of(api, ns, "survivor"), timeout=30, what="the pod")
    pid = container_pid(stack, pods_of(api, ns, "survivor")[0])
    agent = stack.kubelet.process
    os.kill(agent.pid, signal.SIGKILL)  # a crash, not a clean stop
    agent.proc.wait()
    assert not process_gone(pid), "the pod's process must outlive its kubelet"
    stack.kubelet.start_process()
    gate.touch()
    assert wait_for_job(api, ns, "survivor")["type"] == "Complete"
    (pod,) = pods_of(api, ns, "survivor")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "adopted\n"


def test_restart_policy_always_restarts_a_crashed_container(kubectl, api, ns, tmp_path) -> None:
    marker = tmp_path / "crashed-once"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crashy"},
        "spec": {
            "restartPolicy": "Always",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": [
                        "sh",
                        "-c",
                        f"if [ -e {marker} ]; then sleep 300; else touch {marker}; exit 1; fi",
                    ],
                }
            ],
        },
    }
    kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump(pod))

    def restarted_and_running() -> bool:
        status = api.get(f"/api/v1/namespaces/{ns}/pods/crashy")["status"]
        cs = (status.get("containerStatuses") or [{}])[0]
        return cs.get("restartCount") == 1 and "running" in cs.get("state", {})

    wait_until(restarted_and_running, timeout=60, what="one restart, then Running")
    assert api.get(f"/api/v1/namespaces/{ns}/pods/crashy")["status"]["phase"] == "Running"
    kubectl("-n", ns, "delete", "pod", "crashy", "--grace-period=1", "--wait=false")
