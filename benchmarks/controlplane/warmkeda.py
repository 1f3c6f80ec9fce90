"""KEDA beside editflow in warm mode: the third phase of a warm level, on the same platform.

After the operator and the warm floor have stopped (never at once on 2 cores), KEDA's
operator starts on the same apiserver and NATS. The peer is how KEDA users run queued work
on warm Pods: a ScaledObject over a Deployment of long-lived consumers
(:mod:`controlplane.keda_warm_consumer`), scaled from zero on the lag of a durable consumer
of its own on the same approvals stream. The phase times, on this process's clock:

* **from zero**: one event with the Deployment at zero replicas → handed to a worker
  (KEDA's poll, the Deployment's scale-up, the Pod's start, the first fetch);
* **each rate** of the plan, as editflow's phase ran it: event → handed to a worker
  (p50/p99/max), and what never got there.

editflow's warm phase hands an event out only after its EditJob exists, the edit has been
admitted and per-attempt credentials were minted; the peer hands out the raw message. The
difference is what the control plane's guarantees cost per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from controlplane import keda
from controlplane.load import publish_steady
from controlplane.localplatform import BenchPlatform
from controlplane.stats import deltas, summarize
from controlplane.timeline import Timeline, wait_for_stage
from editflow.core.settings import NatsSettings, Settings
from editflow.devstack.procs import wait_until
from editflow.events.sdk import OAClient

NAME = "bench-keda-warm"
CONSUMER = "bench-keda-warm"
HANDED_SUBJECT = "bench.keda.handed"
#: As many workers as editflow's warm pool may start (controlplane.warmrun.WARM_OPERATOR).
MAX_REPLICAS = 6
#: The longest a from-zero hand-out may take: KEDA's poll, then a Pod start.
FROM_ZERO_TIMEOUT = 120.0

Say = Callable[[str], None]


def handed_stages(timeline: Timeline, ids: tuple[str, ...]) -> dict[str, Any]:
    published = {e: timeline.published[e] for e in ids}
    return {
        "event_to_handed_out": summarize(deltas(published, timeline.handed)).as_dict(),
        "lost": sum(1 for e in ids if e not in timeline.handed),
    }


async def keda_phase(platform: BenchPlatform, plan: Any, say: Say) -> dict[str, Any]:
    """The peer's phase; see the module docs. ``plan`` is ``control_plane.Plan``."""
    say("KEDA: building (once, ~8 min cold) or verifying its operator")
    binary = await asyncio.to_thread(keda.ensure_built)
    stack, api = platform.stack, platform.api
    assert stack.nats is not None
    polling = min(plan.keda_polling)  # the interval most favourable to KEDA
    phase: dict[str, Any] = {"polling_interval_s": polling, "max_replicas": MAX_REPLICAS}
    await asyncio.to_thread(keda.apply_crds, api, stack.kubeconfig)
    peer = await asyncio.to_thread(
        keda.KedaOperator(binary, stack.kubeconfig, stack.workdir).start, api
    )
    client = await OAClient.connect(
        Settings(nats=NatsSettings(url=stack.nats_url)), source="/bench/oa-keda"
    )
    timeline = Timeline()

    async def on_handed(msg: Msg) -> None:
        timeline.first(timeline.handed, msg.data.decode(), time.monotonic())

    sub = await client.nc.subscribe(HANDED_SUBJECT, cb=on_handed)
    events = client.settings.events
    namespace = keda.SCALEDJOB_NAMESPACE
    try:
        await keda.add_consumer(
            client.js, events.approvals_stream, CONSUMER, events.approval_subject
        )
        await asyncio.to_thread(
            api.post,
            keda.DEPLOYMENTS.format(namespace=namespace),
            keda.warm_deployment(
                NAME, nats_url=stack.nats_url, stream=events.approvals_stream,
                consumer=CONSUMER, handed_subject=HANDED_SUBJECT,
            ),
        )  # fmt: skip
        await asyncio.to_thread(
            api.post,
            keda.SCALEDOBJECTS.format(namespace=namespace),
            keda.scaled_object(
                NAME, polling_seconds=polling,
                monitor_endpoint=f"127.0.0.1:{stack.nats.monitor_port}",
                stream=events.approvals_stream, consumer=CONSUMER, max_replicas=MAX_REPLICAS,
            ),
        )  # fmt: skip
        try:
            await asyncio.to_thread(
                wait_until, lambda: keda.scaled_object_ready(api, NAME),
                timeout=60, what=f"KEDA to mark ScaledObject {NAME} Ready",
            )  # fmt: skip
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\nKEDA operator log:\n{peer.log_tail()}") from None
        say(f"KEDA: one event with the Deployment at zero (pollingInterval {polling} s)")
        cold = await publish_steady(client, timeline, rate=1.0, duration=1.0, label="keda-cold")
        phase["from_zero"] = {
            "waited": await wait_for_stage(timeline.handed, cold.event_ids, FROM_ZERO_TIMEOUT),
            **handed_stages(timeline, cold.event_ids),
        }
        phase["steps"] = []
        for rate in plan.rates:
            seconds = plan.goal_seconds if rate == plan.goal_rate else plan.step_seconds
            say(f"KEDA: {rate:g}/s for {seconds:g} s")
            published = await publish_steady(
                client, timeline, rate=rate, duration=seconds, label=f"keda-{rate:g}"
            )
            drained = await wait_for_stage(timeline.handed, published.event_ids, plan.drain_seconds)
            stages = handed_stages(timeline, published.event_ids)
            phase["steps"].append(
                {
                    "rate": rate,
                    "seconds": seconds,
                    "events": published.events,
                    "achieved_rate": published.achieved_rate,
                    "drain_seconds": drained,
                    **stages,
                }
            )
            say(f"  lost {stages['lost']}")
        phase["replicas_at_end"] = await asyncio.to_thread(deployment_replicas, api)
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                api.delete, keda.SCALEDOBJECTS.format(namespace=namespace) + f"/{NAME}"
            )
            await asyncio.to_thread(
                api.delete, keda.DEPLOYMENTS.format(namespace=namespace) + f"/{NAME}"
            )
        await client.close()
        phase["log_tail"] = peer.log_tail()[-2000:]
        await asyncio.to_thread(peer.stop)
    return phase


def deployment_replicas(api: Any) -> int:
    path = keda.DEPLOYMENTS.format(namespace=keda.SCALEDJOB_NAMESPACE) + f"/{NAME}"
    return int((api.get(path).get("status") or {}).get("readyReplicas") or 0)
