"""What one successful edit costs the apiserver, counted through the request-counting proxy
(issue 21 item 5): at most 5 writes in warm mode, 7 in Job mode, Events and the per-attempt
credentials included, with edits waiting in the queue.

Each mode runs approvals through its own operator, one after the other in one namespace (the
bridge creates the EditJobs, as in production) with a namespace cap of 2, so most edits wait
in the queue first. Every write
the operator makes from the first publish until every outcome is recorded as delivered is
counted, by kind. The warm pool's own writes (its worker Jobs and the namespace's pool-key
Secret) are made once per pool, not per edit, and are reported apart.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from editflow.core.settings import NatsSettings, Settings
from editflow.devstack import localmode
from editflow.devstack.countingproxy import CountingProxy, Request, parse_path
from editflow.devstack.procs import wait_until
from editflow.devstack.stack import LocalStack
from editflow.operator.names import LABEL_POOL, editjob_name
from tests.harness import PUBLIC_IMAGE_URL, publish_approvals
from tests.operator.test_scale import ScaleNamespace, events_settings
from tests.operator.test_scale import scale_ns as scale_ns
from tests.operator.test_warm_dispatch import MODEL

pytestmark = [pytest.mark.platform]

EDITS = 8
REPORTS = Path.home() / ".cache" / "editflow" / "reports"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Issue 21 item 5.
BOUND = {"warm": 5.0, "job": 7.0}


def kind_of(request: Request) -> str:
    _, plural, _name, sub = parse_path(request.path.split("?", 1)[0])
    if plural == "editjobs":
        if sub == "status":
            return "EditJob status"
        return "EditJob create" if request.method == "POST" else "EditJob metadata"
    return {"events": "Events", "editoutcomes": "EditOutcomes", "secrets": "Secrets"}.get(
        plural or "", f"{plural}"
    )


def is_pool_write(request: Request) -> bool:
    """A write of the warm pool itself (its worker Jobs, its key): once per pool."""
    text = request.path + request.body[:4000].decode(errors="replace")
    return LABEL_POOL in text or "editflow-warm-key" in text


def publish(
    stack: LocalStack, env: dict[str, str], ids: list[str], image_url: str = PUBLIC_IMAGE_URL
) -> None:
    settings = Settings(nats=NatsSettings(url=stack.nats_url), events=events_settings(env))
    asyncio.run(publish_approvals(settings, ids, source="/oa/write-budget", image_url=image_url))


def count_writes(ns: ScaleNamespace, proxy: CountingProxy, started: float, ids: list[str]) -> dict:
    """Until these edits' outcomes are recorded as delivered and the operator is quiet."""
    names = {editjob_name(i) for i in ids}

    def mine() -> list[dict]:
        return [ej for ej in ns.editjobs() if ej["metadata"]["name"] in names]

    def delivered() -> bool:
        items = mine()
        return len(items) == EDITS and all(
            (ej.get("status") or {}).get("completionPublishedAt")
            and (ej.get("status") or {}).get("callbackDelivery") != "pending"
            for ej in items
        )

    wait_until(delivered, timeout=400, interval=2, what=f"{EDITS} outcomes to be delivered")
    time.sleep(3)  # what the operator does in reaction to the last write is counted too
    writes = [r for r in proxy.since(started) if r.method in WRITES and not r.watch]
    per_edit = [r for r in writes if not is_pool_write(r)]
    phases = Counter((ej.get("status") or {}).get("phase") for ej in mine())
    return {
        "phases": dict(phases),
        "by_kind": dict(Counter(kind_of(r) for r in per_edit)),
        "pool": dict(Counter(kind_of(r) for r in writes if is_pool_write(r))),
        "per_edit": len(per_edit) / EDITS,
        # Status writes that put an edit in the queue with its place (it waited for the cap).
        "queued_writes": sum(
            1
            for r in per_edit
            if kind_of(r) == "EditJob status" and re.search(rb'"queuePosition":\s*\d', r.body)
        ),
    }


def report(mode: str, seen: dict) -> None:
    """The figures, for a person (and the closing note): ~/.cache/editflow/reports/."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    lines = [f"{mode} mode, {EDITS} edits, cap 2: {seen['per_edit']:.2f} writes per edit"]
    kinds = sorted(seen["by_kind"].items())
    lines += [f"  {kind:<18} {count / EDITS:.2f}" for kind, count in kinds]
    lines.append(f"  queued writes      {seen['queued_writes']} (edits that waited for the cap)")
    lines.append(f"  once per pool      {seen['pool']}")
    (REPORTS / f"write-budget-{mode}.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


def run_mode(
    stack: LocalStack, ns: ScaleNamespace, proxy: CountingProxy, kubeconfig: Path, **publish_kw: str
) -> dict:
    ns.start_operator(kubeconfig)
    try:
        started = time.monotonic()
        ids = [str(uuid.uuid4()) for _ in range(EDITS)]
        publish(stack, ns.env, ids, **publish_kw)
        return count_writes(ns, proxy, started, ids)
    finally:
        assert ns.operator is not None
        ns.operator.stop()


def test_a_successful_edit_costs_at_most_seven_writes_in_job_mode_and_five_warm(
    stack: LocalStack, scale_ns, tmp_path: Path, tiny_model_root: Path, image_host
) -> None:
    """Both modes, one after the other, in one namespace (one namespace to tear down)."""
    ns: ScaleNamespace = scale_ns(max_running_per_namespace="2", resync_seconds="2")
    with CountingProxy(stack.apiserver.url, stack.apiserver.ssl_admin) as proxy:
        kubeconfig = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
        job = run_mode(stack, ns, proxy, kubeconfig)
        report("job", job)

        models = localmode.models_dir(stack, ns.namespace)
        if not (models / MODEL).exists():
            shutil.copytree(tiny_model_root / MODEL, models / MODEL)
        ns.env.pop("EDITFLOW_OPERATOR__WORKER_COMMAND", None)  # the real `worker serve` loop
        ns.env.update(
            EDITFLOW_OPERATOR__WORKER_MODE="warm",
            EDITFLOW_OPERATOR__MAX_WARM_WORKERS="1",
            EDITFLOW_OPERATOR__WARM_IDLE_SECONDS="30",
        )
        warm = run_mode(stack, ns, proxy, kubeconfig, image_url=image_host.url("red.png"))
        report("warm", warm)

    for mode, seen in (("job", job), ("warm", warm)):
        assert seen["phases"] == {"Succeeded": EDITS}, (mode, seen)
        assert seen["by_kind"].get("EditOutcomes", 0) == 0, f"{mode}: an outbox object"
        assert seen["queued_writes"] > 0, f"{mode}: the bound must hold with edits queued"
        assert seen["per_edit"] <= BOUND[mode], (mode, seen)
