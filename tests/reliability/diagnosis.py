"""What the fault suite prints when its events do not all end: a diagnosis, not a timeout.

A slow machine and a lost edit both look like "timed out waiting" from outside. This table
tells them apart: for every event that has not ended, its EditJob's phase and attempts, where
its current attempt is (waiting in the work queue, handed out to a worker and unacked,
running in which worker process, a Job and its Pods), and the last condition's message.
Then what ran on the node (:func:`tests.hygiene.node_report`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from editflow.events.worker_contract import WORK_STREAM, work_consumer
from tests import hygiene

#: When a fault-suite test began, fixture setup included (set by this folder's conftest).
TEST_STARTED = pytest.StashKey[float]()

#: The columns of the table, in order.
COLUMNS = ("editjob", "phase", "attempts", "dispatch", "worker / Job", "last condition")


def work_queue_state(nats_url: str, namespace: str, model: str) -> dict[str, str]:
    """``<edit>-a<n>`` → where its work message is in the pool's queue (empty if none)."""
    import nats
    from nats.js.errors import NotFoundError

    async def read() -> dict[str, str]:
        nc = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            js = nc.jetstream(timeout=3)
            try:
                info = await js.stream_info(WORK_STREAM)
            except NotFoundError:
                return {}
            try:
                consumer = await js.consumer_info(WORK_STREAM, work_consumer(namespace, model))
                delivered = consumer.delivered.stream_seq if consumer.delivered else 0
            except NotFoundError:
                delivered = 0
            out: dict[str, str] = {}
            first, last = info.state.first_seq, info.state.last_seq
            for seq in range(max(first, last - 2000), last + 1):
                try:
                    msg = await js.get_msg(WORK_STREAM, seq)
                except NotFoundError:  # acked (removed) or never there
                    continue
                try:
                    body = json.loads(msg.data or b"{}")
                except ValueError:
                    continue
                stem = f"{body.get('edit_id')}-a{body.get('attempt')}"
                out[stem] = (
                    f"handed out, unacked (seq {seq})"
                    if seq <= delivered
                    else f"waiting in the work queue (seq {seq})"
                )
            return out
        finally:
            await nc.close()

    try:
        return asyncio.run(read())
    except Exception as exc:  # NATS down is itself a finding; the table is still printed
        return {"*": f"(work queue unreadable: {exc!r})"}


def _marks(marks: Path) -> dict[str, str]:
    """``<edit>-a<n>`` → what the worker marks say (running in pid N, or done)."""
    out: dict[str, str] = {}
    if not marks.exists():
        return out
    for path in marks.iterdir():
        if path.suffix == ".started":
            out[path.stem] = f"running in pid {path.read_text().strip() or '?'}"
        elif path.suffix == ".uploading":
            out[path.stem] = f"uploading in pid {path.read_text().strip() or '?'}"
        elif path.suffix == ".done":
            out.setdefault(path.stem, "ended in a worker")
    return out


def _pods_by_job(pods: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pod in pods:
        job = (pod["metadata"].get("labels") or {}).get("job-name")
        if job:
            phase = (pod.get("status") or {}).get("phase")
            out.setdefault(job, []).append(f"{pod['metadata']['name']} {phase}")
    return out


def stuck_table(
    editjobs: list[dict],
    unfinished: set[str],
    *,
    marks: Path,
    queue: dict[str, str],
    pods: list[dict],
) -> str:
    """The table of the EditJobs named in ``unfinished`` (missing ones included)."""
    by_name = {e["metadata"]["name"]: e for e in editjobs}
    marked = _marks(marks)
    pods_of = _pods_by_job(pods)
    rows = []
    for name in sorted(unfinished):
        ej = by_name.get(name)
        if ej is None:
            rows.append((name, "(no EditJob)", "", "", "", ""))
            continue
        status: dict[str, Any] = ej.get("status") or {}
        attempt = int(status.get("attempts") or 0)
        stem = f"{name}-a{attempt}"
        job = status.get("jobName") or ""
        if stem in marked:
            dispatch = marked[stem]
        elif stem in queue:
            dispatch = queue[stem]
        elif job:
            dispatch = "dispatched; no worker mark yet"
        else:
            dispatch = f"not dispatched (queue position {status.get('queuePosition')})"
        where = status.get("workerPod") or ""
        if job:
            where = f"{where} job {job}: {', '.join(pods_of.get(job, [])) or 'no Pod'}".strip()
        conditions = status.get("conditions") or []
        last = conditions[-1] if conditions else {}
        condition = (
            f"{last.get('type')}={last.get('status')} {last.get('reason') or ''}: "
            f"{(last.get('message') or status.get('message') or '')[:80]}"
            if last
            else (status.get("message") or "")[:80]
        )
        done = (
            ""
            if not status.get("phase")
            else f" published={bool(status.get('completionPublishedAt'))}"
        )
        rows.append(
            (name, f"{status.get('phase')}{done}", str(attempt), dispatch, where, condition)
        )
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(COLUMNS), *(line(r) for r in rows)])


def report(
    run: Any, unfinished: set[str], *, model: str = "longcat-image-edit", limit: int = 40
) -> str:
    """The whole diagnosis: the stuck EditJobs, then the node."""
    editjobs = run.editjobs()
    pods = run.api.get(f"/api/v1/namespaces/{run.namespace}/pods")["items"]
    queue = work_queue_state(run.stack.nats_url, run.namespace, model) if run.mode == "warm" else {}
    shown = set(sorted(unfinished)[:limit])
    more = f" (the first {limit} shown)" if len(unfinished) > limit else ""
    return (
        f"{len(unfinished)} of the events have not ended and been reported{more}:\n"
        + stuck_table(editjobs, shown, marks=run.marks, queue=queue, pods=pods)
        + "\n"
        + hygiene.node_report(run.stack)
        + "\noperator log (last 25 lines):\n"
        + (run.operator.log_tail(25) if run.operator else "(no operator)")
    )
