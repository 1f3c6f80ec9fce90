"""Pods in editflow's images on the local platform: operator start to Ready, worker start to edit.

``helm install`` of the chart with the images from the local registry (as
tests/images/test_chart_in_images.py does), on a fresh stack whose process kubelet runs
each container in its image with runc. Then one approval event. Times come from the
Kubernetes objects (second resolution) and the worker's own cost split:

- operator: Pod created -> container started -> Ready (its startup/readiness probes passed);
- worker: Pod created (by the Job the operator made) -> container started -> exited with
  the edit uploaded; the worker's cost split says how much of that was the model.

The kubelet's image store is shared by every stack on the machine, so a second run finds the
images already pulled ("warm"); the first run after a new worker layer pulls it ("cold").

    .venv/bin/python benchmarks/bench_image_pods.py

Prints a table and writes ``benchmarks/results/bench_image_pods-<utc>.json``. Run as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from editflow.core.settings import EventsSettings, NatsSettings, Settings  # noqa: E402
from editflow.devstack import images, localmode  # noqa: E402
from editflow.devstack.kubeapi import KubeClient  # noqa: E402
from editflow.devstack.procs import wait_until  # noqa: E402
from editflow.devstack.stack import LocalStack  # noqa: E402
from editflow.events.sdk import OAClient, Person  # noqa: E402
from editflow.operator.crd import editjob_path  # noqa: E402
from editflow.operator.names import editjob_name  # noqa: E402
from tests.chart.test_install import install, isolated_events, local_values  # noqa: E402
from tests.harness import ImageHost  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def condition_time(pod: dict[str, Any], kind: str) -> float:
    for cond in pod["status"].get("conditions", []):
        if cond["type"] == kind and cond["status"] == "True":
            return stamp(cond["lastTransitionTime"])
    raise LookupError(f"{pod['metadata']['name']} has no {kind}=True condition")


def main() -> None:
    began = time.monotonic()
    published = images.publish(["control-plane", "worker"], report=lambda line: None)
    publish_s = time.monotonic() - began
    host = ImageHost()
    figures: dict[str, float] = {"publish_s": round(publish_s, 1)}
    with LocalStack(registry=True) as stack, tempfile.TemporaryDirectory() as scratch:
        api = KubeClient(stack.kubeconfig)
        tag = uuid.uuid4().hex[:6]
        name, namespace = f"bench{tag}", f"ef-bench-{tag}"
        api.post("/api/v1/namespaces", {"metadata": {"name": namespace}})
        localmode.build_tiny_model(
            localmode.models_dir(stack, namespace, f"{name}-editflow-models")
        )
        stack.kubelet.publish_host_ports([host.server.server_address[1]])
        values = local_values(stack, tag, stack.nats_url)
        for key, image in images.chart_values(stack.registry.address, published).items():
            values.setdefault(key, {}).update(image)
        install(stack, Path(scratch), name, namespace, values)

        def operator_pod() -> dict[str, Any] | None:
            pods = api.get(
                f"/api/v1/namespaces/{namespace}/pods",
                labelSelector="app.kubernetes.io/component=operator",
            )["items"]
            return pods[0] if pods else None

        wait_until(
            lambda: condition_time(operator_pod(), "Ready") > 0,  # type: ignore[arg-type]
            timeout=300,
            what="the operator Pod to be Ready",
        )
        pod = operator_pod()
        assert pod is not None
        created = stamp(pod["metadata"]["creationTimestamp"])
        started = stamp(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
        figures["operator_created_to_started_s"] = started - created
        figures["operator_started_to_ready_s"] = condition_time(pod, "Ready") - started

        events = {
            item["name"].removeprefix("EDITFLOW_EVENTS__").lower(): item["value"]
            for item in isolated_events(tag)
        }
        settings = Settings(
            nats=NatsSettings(url=stack.nats_url),
            events=EventsSettings(
                **events,
                approval_subject=f"ch{tag}.approvals.image-edit",
                withdraw_subject=f"ch{tag}.approvals.image-edit.withdraw",
            ),
        )

        async def submit() -> str:
            client = await OAClient.connect(settings, source="/oa/bench")
            try:
                return await client.submit_approval(
                    form_id=f"BENCH-{tag}",
                    approval_id="AP-1",
                    applicant=Person(id="u-1", name="applicant"),
                    approvers=[Person(id="m-1", name="manager")],
                    instruction="make the red square blue",
                    image_url=host.url("red.png"),
                    generation={"steps": 2, "seed": 7},  # type: ignore[arg-type]
                )
            finally:
                await client.close()

        submitted = time.time()
        event_id = asyncio.run(submit())
        path = editjob_path(namespace, editjob_name(event_id))
        wait_until(
            lambda: (api.get(path).get("status") or {}).get("phase") == "Succeeded",
            timeout=900,
            what="the EditJob to succeed",
        )
        figures["approval_to_succeeded_s"] = round(time.time() - submitted, 1)
        pods = api.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
        worker = next(
            p
            for p in pods
            if any(
                "editflow/worker" in s["image"] for s in p["status"].get("containerStatuses", [])
            )
        )
        state = worker["status"]["containerStatuses"][0]["state"]["terminated"]
        created = stamp(worker["metadata"]["creationTimestamp"])
        figures["worker_created_to_started_s"] = stamp(state["startedAt"]) - created
        figures["worker_started_to_edit_done_s"] = stamp(state["finishedAt"]) - stamp(
            state["startedAt"]
        )
        result = json.loads(state["message"])
        figures["worker_model_load_s"] = result["cost"]["load"]
        figures["worker_infer_s"] = result["cost"]["infer"]
        api.close()
    host.close()
    for key, value in figures.items():
        print(f"{key:<34} {value:8.1f}")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "when": datetime.now(UTC).isoformat(),
        "load_average": os.getloadavg(),
        "images": {image.target: image.tag for image in published},
        "figures": figures,
    }
    out = RESULTS / f"bench_image_pods-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
