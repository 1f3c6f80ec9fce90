"""Warm dispatch on the real platform (issue 13): the operator runs a pool of warm workers
(``editflow worker serve`` with the tiny model, in Pods of the process kubelet) and hands
each attempt to one of them over the JetStream work queue.

One namespace and operator (``worker.mode: warm``) for the module; every guarantee of an
EditJob is checked with real workers: the model loads once per worker, idle workers exit
(scale to zero) and come back, cancel discards the result, a worker SIGKILLed mid-edit
loses nothing and runs the edit to one result, a model no worker can load ends in review,
and a stuck attempt times out and its worker is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from editflow.core.s3 import s3_client
from editflow.devstack import localmode
from editflow.devstack.kubeapi import KubeClient
from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from editflow.operator.crd import editjob_path
from editflow.operator.names import ANNOTATION_CANCEL, LABEL_POOL
from tests.harness import stored_completions
from tests.operator.test_scale import events_settings, isolated_events

pytestmark = [pytest.mark.platform, pytest.mark.slow]

MODEL = "longcat-image-edit"


class WarmNamespace:
    def __init__(
        self, stack: LocalStack, tiny_model_root: Path, workdir: Path, **operator: str
    ) -> None:
        self.stack = stack
        self.api = KubeClient(stack.kubeconfig)
        tag = uuid.uuid4().hex[:6]
        self.namespace = f"warm-{tag}"
        localmode.install_crd(self.api)
        localmode.install_namespace(self.api, stack, self.namespace)
        models = localmode.models_dir(stack, self.namespace)
        if not (models / MODEL).exists():
            shutil.copytree(tiny_model_root / MODEL, models / MODEL)
        settings = {
            "worker_mode": "warm",
            "max_warm_workers": "2",
            "max_running_per_namespace": "2",
            "warm_idle_seconds": "12",
            "warm_ack_wait_seconds": "6",
            "warm_max_deliveries": "2",
            "warm_stuck_grace_seconds": "3",
            "resync_seconds": "2",
            # These tests watch an edit's worker in status (wait_running_in_worker): shown
            # within seconds, not the production minute (progress events carry it at once).
            "queue_status_refresh_seconds": "1",
            "backoff_seconds": "1",
            "max_attempts": "2",
            "gpus_per_job": "0",
            **operator,
        }
        self.env = localmode.operator_env(stack, self.namespace, **settings)
        self.env.update(isolated_events(tag))
        self.workdir = workdir
        self.operator = localmode.OperatorProcess(self.env, workdir).start()

    def restart_operator(self, **changed: str) -> None:
        """SIGKILL the operator and start it again, with ``changed`` settings."""
        self.operator.kill()
        self.env.update({f"EDITFLOW_OPERATOR__{k.upper()}": v for k, v in changed.items()})
        self.operator = localmode.OperatorProcess(self.env, self.workdir).start()

    # -- reads ---------------------------------------------------------------------
    def editjob(self, name: str) -> dict:
        return self.api.get(editjob_path(self.namespace, name))

    def status(self, name: str) -> dict:
        return self.editjob(name).get("status") or {}

    def warm_jobs(self, *, running_only: bool = True) -> list[dict]:
        items = self.api.get(
            f"/apis/batch/v1/namespaces/{self.namespace}/jobs", labelSelector=LABEL_POOL
        )["items"]
        if not running_only:
            return items
        return [j for j in items if not _finished(j) and not j["metadata"].get("deletionTimestamp")]

    def worker_logs(self, tail: int = 15) -> str:
        """The last lines of every warm worker Pod (for a failure's message)."""
        pods = self.api.get(f"/api/v1/namespaces/{self.namespace}/pods", labelSelector=LABEL_POOL)
        out = []
        for pod in pods["items"]:
            name = pod["metadata"]["name"]
            try:
                text = self.api._http.get(
                    f"/api/v1/namespaces/{self.namespace}/pods/{name}/log",
                    params={"tailLines": tail},
                ).text
            except Exception as exc:  # the log is a diagnostic only
                text = repr(exc)
            out.append(f"--- {name} ({(pod.get('status') or {}).get('phase')})\n{text}")
        return "\n".join(out)

    def completions(self, name: str) -> list[str]:
        events = stored_completions(self.stack.nats_url, events_settings(self.env))
        return [
            e["data"]["status"]
            for e in events
            if (e["data"].get("editjob") or {}).get("name") == name
        ]

    def result_json(self, name: str, attempt: int = 1) -> dict:
        s3 = self.stack.s3_settings()
        key = f"results/{self.namespace}/{name}/attempt-{attempt}/result.json"
        response = s3_client(s3).get_object(s3.bucket, key)
        try:
            return json.loads(response.read())
        finally:
            response.close()
            response.release_conn()

    # -- writes --------------------------------------------------------------------
    def submit(self, name: str, url: str, **spec: object) -> None:
        body = {
            "apiVersion": "editflow.io/v1alpha1",
            "kind": "EditJob",
            "metadata": {"name": name},
            "spec": {
                "source": {"url": url},
                "prompt": "make the red square blue",
                "parameters": {"steps": 2, "seed": 3},
                **spec,
            },
        }
        self.api.post(editjob_path(self.namespace), body)

    def wait_phase(self, name: str, *phases: str, timeout: float = 180) -> dict:
        seen: dict = {}

        def reached() -> bool:
            seen.clear()
            seen.update(self.status(name))
            return seen.get("phase") in phases

        try:
            wait_until(reached, timeout=timeout, interval=1, what=f"{name} to reach {phases}")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status={seen}\noperator log:\n{self.operator.log_tail()}"
            ) from None
        return seen

    def wait_running_in_worker(self, name: str, timeout: float = 120) -> str:
        def running() -> bool:
            status = self.status(name)
            return status.get("phase") == "Running" and bool(status.get("workerPod"))

        try:
            wait_until(running, timeout=timeout, interval=0.5, what=f"{name} in a warm worker")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}; status={self.status(name)}\n{self.operator.log_tail()}"
            ) from None
        return self.status(name)["workerPod"]

    def close(self) -> None:
        self.operator.stop()
        self.api.delete(f"/api/v1/namespaces/{self.namespace}")
        self.api.close()


def _finished(job: dict) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def worker_pid(pod: str) -> int | None:
    """The warm worker process of ``pod`` (the process kubelet runs it on this machine)."""
    wanted = f"POD_NAME={pod}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and b"serve" in cmdline:
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def warm(stack: LocalStack, tiny_model_root: Path, tmp_path_factory) -> Iterator[WarmNamespace]:
    ns = WarmNamespace(stack, tiny_model_root, tmp_path_factory.mktemp("warm"))
    yield ns
    ns.close()


def test_the_pool_runs_edits_with_one_model_load_per_worker(warm, image_host) -> None:
    names = [f"w-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
    for name in names:
        warm.submit(name, image_host.url("red.png"))
    for name in names:
        status = warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=300)
        assert status["phase"] == "Succeeded", status
        assert status["workerPod"].startswith(f"editflow-warm-{MODEL}-"), status
    workers = {warm.status(n)["workerPod"] for n in names}
    started = warm.warm_jobs(running_only=False)
    assert 1 <= len(started) <= 2, f"the pool is bounded by max_warm_workers\n{warm.worker_logs()}"
    loads = [warm.result_json(n)["cost"].get("load_detail") for n in names]
    assert sum(1 for d in loads if d) <= len(workers), "the model loads once per worker"
    assert sum(1 for d in loads if not d) >= len(names) - len(workers)
    for name in names:
        assert warm.completions(name) == ["success"]
    # `editflow edits logs` picks one attempt's lines out of the worker that served many.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "editflow.cli.main",
            "edits",
            "logs",
            names[1],
            "-n",
            warm.namespace,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(warm.stack.kubeconfig)},
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
    assert records and {r["edit_id"] for r in records} == {names[1]}, shown.stdout
    assert any(r["msg"] == "edit done" for r in records), shown.stdout


def test_idle_workers_exit_and_the_pool_comes_back_from_zero(warm, image_host) -> None:
    first = f"w-first-{uuid.uuid4().hex[:4]}"
    warm.submit(first, image_host.url("red.png"))
    assert warm.wait_phase(first, "Succeeded", "Failed", "NeedsReview")["phase"] == "Succeeded"
    wait_until(lambda: not warm.warm_jobs(), timeout=90, interval=2, what="the pool to drain")
    done = [j for j in warm.warm_jobs(running_only=False) if _finished(j)]
    failed = [
        j["metadata"]["name"]
        for j in done
        if any(c["type"] == "Failed" and c["status"] == "True" for c in j["status"]["conditions"])
    ]
    assert done and not failed, "an idle worker exits 0: its Job completes, it does not fail"
    name = f"w-again-{uuid.uuid4().hex[:4]}"
    warm.submit(name, image_host.url("red.png"))
    assert warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview")["phase"] == "Succeeded"


def test_cancelling_an_edit_in_a_warm_worker_discards_its_result(warm, image_host) -> None:
    url, gate = image_host.gate()
    name = f"w-cancel-{uuid.uuid4().hex[:4]}"
    warm.submit(name, url)
    warm.wait_running_in_worker(name)
    warm.api.patch(
        editjob_path(warm.namespace, name),
        {"metadata": {"annotations": {ANNOTATION_CANCEL: "withdrawn by the applicant"}}},
    )
    assert warm.wait_phase(name, "Cancelled")["phase"] == "Cancelled"
    gate.released.set()
    time.sleep(8)  # the worker finishes the edit it was on; nobody may take its result
    status = warm.status(name)
    assert status["phase"] == "Cancelled" and not status.get("resultKey"), status
    assert warm.completions(name) == ["cancelled"]


def test_a_worker_sigkilled_mid_edit_loses_nothing_and_yields_one_result(warm, image_host) -> None:
    url, gate = image_host.gate()
    name = f"w-kill-{uuid.uuid4().hex[:4]}"
    warm.submit(name, url)
    pod = warm.wait_running_in_worker(name)
    pid = worker_pid(pod)
    assert pid is not None, f"no process of {pod}"
    os.kill(pid, signal.SIGKILL)
    gate.released.set()
    status = warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=240)
    assert status["phase"] == "Succeeded", status
    assert warm.completions(name) == ["success"], "exactly one completion"
    assert warm.result_json(name, status["attempts"])["worker"] != pod


def test_deleting_an_editjob_in_a_warm_worker_publishes_only_cancelled(warm, image_host) -> None:
    url, gate = image_host.gate()
    name = f"w-delete-{uuid.uuid4().hex[:4]}"
    warm.submit(name, url)
    warm.wait_running_in_worker(name)
    warm.api.delete(editjob_path(warm.namespace, name))
    wait_until(
        lambda: warm.completions(name) == ["cancelled"],
        timeout=60,
        what="the cancelled completion of the deleted EditJob",
    )
    gate.released.set()
    time.sleep(8)  # the worker finishes the edit it was on: nobody takes its result
    assert warm.completions(name) == ["cancelled"]


def test_an_edit_that_kills_every_worker_it_reaches_ends_in_review(warm, image_host) -> None:
    """max_deliveries is 2 here: two workers die holding it, the third delivery is refused."""
    url, gate = image_host.gate()
    name = f"w-poison-{uuid.uuid4().hex[:4]}"
    warm.submit(name, url, retry={"maxAttempts": 1})
    killed: list[str] = []
    try:
        for _ in range(2):

            def taken_by_a_new_worker() -> bool:
                status = warm.status(name)
                pod = status.get("workerPod")
                return status.get("phase") == "Running" and bool(pod) and pod not in killed

            wait_until(taken_by_a_new_worker, timeout=120, interval=0.5, what="a worker")
            pod = warm.status(name)["workerPod"]
            pid = worker_pid(pod)
            assert pid is not None, pod
            os.kill(pid, signal.SIGKILL)
            killed.append(pod)
        status = warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=180)
    finally:
        gate.released.set()
    assert status["phase"] == "NeedsReview" and status["errorCode"] == "poison_edit", status
    assert "delivered 2 times" in status["message"], status
    assert warm.completions(name) == ["needs_review"]


def test_a_model_no_worker_can_load_ends_in_review_with_the_reason(warm, image_host) -> None:
    name = f"w-noload-{uuid.uuid4().hex[:4]}"
    warm.submit(name, image_host.url("red.png"), model="instruct-pix2pix")
    status = warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=300)
    assert status["phase"] == "NeedsReview", status
    assert status["errorCode"] == "model_load_failed", status
    assert "instruct-pix2pix" in status["message"], status
    assert warm.completions(name) == ["needs_review"]


def test_a_stuck_attempt_times_out_and_its_worker_is_replaced(warm, image_host) -> None:
    url, gate = image_host.gate()  # never released: the worker hangs in the fetch
    name = f"w-stuck-{uuid.uuid4().hex[:4]}"
    warm.submit(name, url, deadlineSeconds=30, retry={"maxAttempts": 1})
    pod = warm.wait_running_in_worker(name)
    status = warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=120)
    assert status["phase"] == "NeedsReview" and status["errorCode"] == "timeout", status
    wait_until(
        lambda: not any(pod.startswith(j["metadata"]["name"]) for j in warm.warm_jobs()),
        timeout=60,
        interval=1,
        what="the stuck worker's Job to be deleted",
    )
    gate.released.set()


def test_no_warm_worker_can_get_a_gpu_the_pending_timeout_ends_the_attempt(
    stack, tiny_model_root, image_host, tmp_path
) -> None:
    nowhere = WarmNamespace(
        stack, tiny_model_root, tmp_path, node_selector='{"editflow.io/no-such-node": "x"}'
    )
    try:
        name = f"w-nogpu-{uuid.uuid4().hex[:4]}"
        nowhere.submit(
            name, image_host.url("red.png"), pendingTimeoutSeconds=10, retry={"maxAttempts": 1}
        )
        status = nowhere.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=120)
        assert status["phase"] == "NeedsReview" and status["errorCode"] == "no_gpu", status
        assert "no GPU node available after 10s" in status["message"], status
        # Nothing waits for that worker any more: it does not stay queued for a GPU.
        wait_until(lambda: not nowhere.warm_jobs(), timeout=30, what="the unstarted worker to go")
    finally:
        nowhere.close()


def test_an_operator_restart_with_a_new_configuration_never_kills_the_edit_in_flight(
    warm, image_host
) -> None:
    url, gate = image_host.gate()
    name = f"w-upgrade-{uuid.uuid4().hex[:4]}"
    warm.submit(name, url)
    old_worker = warm.wait_running_in_worker(name)
    # A new configuration (as after `helm upgrade`): a new hash for every warm worker.
    warm.restart_operator(warm_idle_seconds="13")
    time.sleep(3)
    gate.released.set()
    status = warm.wait_phase(name, "Succeeded", "Failed", "NeedsReview", timeout=120)
    assert status["phase"] == "Succeeded" and status["workerPod"] == old_worker, status
    assert warm.completions(name) == ["success"], "exactly one completion across the restart"
    # The outdated worker retires after its edit (its Job completes) and a fresh one serves.
    wait_until(
        lambda: not any(old_worker.startswith(j["metadata"]["name"]) for j in warm.warm_jobs()),
        timeout=60,
        what="the outdated worker to retire",
    )
    after = f"w-after-{uuid.uuid4().hex[:4]}"
    warm.submit(after, image_host.url("red.png"))
    status = warm.wait_phase(after, "Succeeded", "Failed", "NeedsReview")
    assert status["phase"] == "Succeeded" and status["workerPod"] != old_worker, status


def test_warm_workers_spread_over_two_gpu_nodes(tiny_model_root, image_host, tmp_path) -> None:
    """Two process-kubelet nodes with one GPU each: two warm workers, one per node."""
    with LocalStack(host_images=True, nodes=2, gpus=1) as two:
        ns = WarmNamespace(two, tiny_model_root, tmp_path, gpus_per_job="1")
        try:
            gates = [image_host.gate() for _ in range(2)]
            names = [f"w-node-{i}-{uuid.uuid4().hex[:4]}" for i in range(2)]
            for name, (url, _) in zip(names, gates, strict=True):
                ns.submit(name, url)
            pods = [ns.wait_running_in_worker(name, timeout=180) for name in names]
            assert len(set(pods)) == 2, pods
            nodes = {
                ns.api.get(f"/api/v1/namespaces/{ns.namespace}/pods/{pod}")["spec"]["nodeName"]
                for pod in pods
            }
            assert nodes == {"editflow-local-node", "editflow-local-node-2"}, nodes
            for _, gate in gates:
                gate.released.set()
            for name in names:
                assert ns.wait_phase(name, "Succeeded", "Failed", "NeedsReview")["phase"] == (
                    "Succeeded"
                )
        finally:
            for _, gate in gates:
                gate.released.set()
            ns.close()
