"""Process kubelet figures for Pods that run in their images: pull, start, Ready.

For each image: a *cold* Pod (an empty kubelet image store: skopeo pulls from the local
registry and every layer is unpacked) and *warm* Pods (the store has the image: no
registry round trip). Each Pod runs its image's quick command under the chart's
security settings (read-only root, no privilege escalation, all capabilities dropped)
and is timed from create to Running (the container started), to Ready (a readiness
probe passed; busybox only, which serves HTTP) and to Succeeded.

    .venv/bin/python benchmarks/bench_kubelet_images.py [--worker] [--repeats 3]

Images: the test busybox (always), editflow's control-plane image when ``make images``
has built it, and with ``--worker`` the multi-GB worker image. Prints a table and writes
``benchmarks/results/bench_kubelet_images-<utc>.json``. Run as root (runc, overlay).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.devstack.testimage builds the busybox image

from editflow.devstack import images  # noqa: E402
from editflow.devstack.kubeapi import KubeClient  # noqa: E402
from editflow.devstack.stack import LocalStack  # noqa: E402
from tests.devstack.testimage import push_busybox  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LOCKED = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def pod(name: str, image: str, command: list[str], *, probe: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "command": command,
        "securityContext": LOCKED,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - in the Pod
    }
    if probe:
        container["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def timed_pod(api: KubeClient, manifest: dict[str, Any], *, until_ready: bool) -> dict[str, float]:
    """Seconds from create to Running, Ready (if asked) and the end."""
    name = manifest["metadata"]["name"]
    began = time.monotonic()
    api.post("/api/v1/namespaces/default/pods", manifest)
    marks: dict[str, float] = {}
    while time.monotonic() - began < 900:
        status = api.get(f"/api/v1/namespaces/default/pods/{name}").get("status") or {}
        states = [c.get("state", {}) for c in status.get("containerStatuses") or []]
        now = round(time.monotonic() - began, 2)
        if "running_s" not in marks and any("running" in s or "terminated" in s for s in states):
            marks["running_s"] = now
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
        )
        if until_ready and ready:
            marks["ready_s"] = now
            break
        if status.get("phase") in ("Succeeded", "Failed"):
            marks["finished_s"] = now
            if status["phase"] == "Failed":
                raise RuntimeError(f"pod {name} failed: {json.dumps(status)[:800]}")
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"pod {name} did not finish")
    api.delete(f"/api/v1/namespaces/default/pods/{name}", {"gracePeriodSeconds": 0})
    return marks


def measure(
    api: KubeClient, label: str, image: str, command: list[str], repeats: int, probe: bool
) -> list[dict[str, Any]]:
    rows = []
    for run in range(repeats + 1):
        phase = "cold" if run == 0 else "warm"
        manifest = pod(f"{label}-{run}", image, command, probe=probe)
        marks = timed_pod(api, manifest, until_ready=probe)
        rows.append({"image": label, "phase": phase, **marks})
        print(f"  {label:14} {phase:5} {marks}", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for label in dict.fromkeys(r["image"] for r in rows):
        for phase in ("cold", "warm"):
            chosen = [r for r in rows if r["image"] == label and r["phase"] == phase]
            line: dict[str, Any] = {"image": label, "phase": phase, "runs": len(chosen)}
            for key in ("running_s", "ready_s", "finished_s"):
                values = [r[key] for r in chosen if key in r]
                if values:
                    line[key] = round(statistics.median(values), 2)
            table.append(line)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="also the multi-GB worker image")
    parser.add_argument("--repeats", type=int, default=3, help="warm Pods per image")
    args = parser.parse_args()
    built = images.recorded()
    with tempfile.TemporaryDirectory(prefix="bench-kubelet-store-") as store:
        stack = LocalStack(registry=True, nats=False, minio=False)
        stack.kubelet.image_store = Path(store)  # type: ignore[union-attr]  # cold on purpose
        with stack:
            assert stack.registry is not None
            api = KubeClient(stack.kubeconfig)
            rows: list[dict[str, Any]] = []
            busybox = push_busybox(stack.registry.address, stack.workdir)
            serve = ["sh", "-c", "exec httpd -f -p 8080 -h /tmp"]
            rows += measure(api, "busybox", busybox, serve, args.repeats, probe=True)
            if "control-plane" in built:
                image = built["control-plane"].reference(stack.registry.address, "operator")
                rows += measure(
                    api, "control-plane", image, ["editflow", "--help"], args.repeats, False
                )
            if args.worker and "worker" in built:
                image = built["worker"].reference(stack.registry.address, "worker")
                command = ["python", "-c", "import torch, diffusers"]
                rows += measure(api, "worker", image, command, args.repeats, probe=False)
            api.close()
    table = summarise(rows)
    print(f"\n{'image':14} {'phase':5} {'runs':>4} {'Running s':>10} {'Ready s':>8} {'done s':>7}")
    for line in table:
        print(
            f"{line['image']:14} {line['phase']:5} {line['runs']:>4} "
            f"{line.get('running_s', '-'):>10} {line.get('ready_s', '-'):>8} "
            f"{line.get('finished_s', '-'):>7}"
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench_kubelet_images-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "load_average": os.getloadavg(),
                "table": table,
                "runs": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
