"""The warm-mode KEDA peer of the control-plane benchmark: its consumer hands out every message
exactly once against a real NATS, and its manifests scale that consumer from zero on its own
consumer's lag. (KEDA itself is built only when the benchmark asks for it: ~8 min cold.)"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from editflow.devstack.stack import LocalStack

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the benchmark's modules import each other as ``controlplane``

from controlplane import keda, localplatform, warmreport  # noqa: E402

STREAM, SUBJECT, CONSUMER, HANDED = "bench-approvals", "bench.approvals.x", "peer", "bench.handed"


async def _hand_out(nats_url: str, ids: list[str]) -> tuple[list[str], int]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["bench.approvals.>"]))
    await js.publish(SUBJECT, b"before the consumer", headers={"Nats-Msg-Id": "old"})
    await keda.add_consumer(js, STREAM, CONSUMER, SUBJECT)  # from the next event on
    handed: asyncio.Queue[str] = asyncio.Queue()

    async def on_handed(msg) -> None:
        await handed.put(msg.data.decode())

    await nc.subscribe(HANDED, cb=on_handed)
    env = {**os.environ, "NATS_URL": nats_url, "STREAM": STREAM, "CONSUMER": CONSUMER}
    worker = subprocess.Popen(
        [sys.executable, str(BENCH / "controlplane" / "keda_warm_consumer.py")],
        env={**env, "HANDED_SUBJECT": HANDED},
    )
    try:
        for event_id in ids:
            await js.publish(SUBJECT, b"{}", headers={"Nats-Msg-Id": event_id})
        seen = [await asyncio.wait_for(handed.get(), timeout=20) for _ in ids]
        await asyncio.sleep(1.5)  # a second hand-out of any message would show by now
        assert handed.empty(), f"handed out twice: {handed.get_nowait()}"
        info = await js.consumer_info(STREAM, CONSUMER)
        assert info.num_pending == 0 and info.num_ack_pending == 0, info  # each one acked
    finally:
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 20)
        await nc.close()
    return seen, code


def test_the_peer_consumer_hands_out_each_new_message_once_and_stops_on_sigterm() -> None:
    ids = [f"event-{i}" for i in range(5)]
    with LocalStack(kube=False, minio=False) as stack:
        seen, code = asyncio.run(_hand_out(stack.nats_url, ids))
    assert seen == ids and code == 0


def test_the_scaled_object_scales_the_peer_deployment_from_zero_on_its_own_lag() -> None:
    deployment = keda.warm_deployment(
        "peer", nats_url="nats://127.0.0.1:4222", stream=STREAM, consumer=CONSUMER,
        handed_subject=HANDED,
    )  # fmt: skip
    scaled = keda.scaled_object(
        "peer", polling_seconds=1, monitor_endpoint="127.0.0.1:8222", stream=STREAM,
        consumer=CONSUMER, max_replicas=6,
    )  # fmt: skip
    assert deployment["spec"]["replicas"] == 0
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The process kubelet runs the peer image as the benchmark's own Python.
    assert container["image"].startswith("editflow-bench/keda-consumer")
    assert Path(container["command"][1]).is_file()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "NATS_URL": "nats://127.0.0.1:4222", "STREAM": STREAM, "CONSUMER": CONSUMER,
        "HANDED_SUBJECT": HANDED,
    }  # fmt: skip
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "peer"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["pollingInterval"]) == (0, 6, 1)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert (trigger["metadata"]["stream"], trigger["metadata"]["consumer"]) == (STREAM, CONSUMER)
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert container["image"] == localplatform.PEER_IMAGE


def test_the_peer_table_puts_editflow_and_keda_side_by_side_or_says_why_not() -> None:
    hand = {"count": 10, "p50": 0.012, "p99": 0.05, "max": 0.06}
    operator = {
        "warmup": {"from_zero_to_handed_out": 1.2},
        "steps": [{"rate": 10.0, "event_to_handed_out": hand, "lost": {"handed": 0}}],
    }
    peer = {
        "polling_interval_s": 1,
        "from_zero": {"event_to_handed_out": {**hand, "max": 2.5}, "lost": 0},
        "steps": [{"rate": 10.0, "event_to_handed_out": hand, "lost": 0}],
    }
    table = warmreport.keda_table([{"background": 0, "operator": operator, "keda": peer}])
    assert table is not None and table.row_count == 2
    failed = warmreport.keda_table(
        [{"background": 0, "operator": operator, "keda": {"error": "x"}}]
    )
    assert failed is not None and failed.row_count == 1
    assert warmreport.keda_table([{"background": 0, "operator": operator}]) is None


def test_the_cpu_table_splits_each_phases_machine_cpu_per_event_by_process() -> None:
    from controlplane.warmrun import cpu_per_event

    used = {"kube-apiserver": 9.0, "operator": 5.0, "other": 2.0}
    machine = {"machine_busy": 20.0, "machine_busy_cores": 1.9, "wall_seconds": 10.5}
    cpu = cpu_per_event({**used, **machine}, 500)
    assert cpu["ms_per_event"] == {"kube-apiserver": 18.0, "operator": 10.0, "other": 4.0}
    assert cpu["machine_ms_per_event"] == 40.0 and cpu["machine_busy_cores"] == 1.9
    floor = cpu_per_event({"kube-apiserver": 6.0, "other": 1.0, **machine}, 500)
    level = {
        "background": 0,
        "operator": {"steps": [{"rate": 50.0, "cpu": cpu}]},
        "floor": {"steps": [{"rate": 50.0, "cpu": floor}, {"rate": 10.0, "cpu": floor}]},
    }
    table = warmreport.cpu_table([level], 50.0)
    assert table is not None and len(table.columns) == 3  # process, operator, floor
    # apiserver, operator, other, then the machine and its busy cores
    assert table.row_count == 5
    assert warmreport.cpu_table([level], 75.0) is None
