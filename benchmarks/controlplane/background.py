"""Finished EditJobs that are already there when the load starts (brief §9: a week of edits).

Each is what the operator leaves behind after a successful edit whose
completion was delivered: made from an approval event by the operator's own
mapping, then its status patched to ``Succeeded`` with the completion's id
recorded (the id the operator derives from the EditJob and its outcome), and
the finalizer the operator puts on every EditJob. The operator therefore
has nothing to do for them; what they cost it is what the benchmark shows.

Created straight through the apiserver with bounded concurrency, so 10,000
take about a minute on two cores.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from editflow.events.models import ApprovalData, ApprovalEvent, Person, completion_event_id
from editflow.operator.crd import editjob_path
from editflow.operator.mapping import editjob_from_approval

LABEL_BACKGROUND = "bench.editflow.io/background"


def finished_editjob(index: int, namespace: str, bucket: str) -> dict[str, Any]:
    event = ApprovalEvent(
        id=str(uuid.uuid4()),
        source="/bench/background",
        subject=f"bg/{index}",
        data=ApprovalData(
            form_id=f"bg-{index // 100}",
            approval_id=f"bg-{index}",
            applicant=Person(id="bench-user"),
            image_url="https://oa.example.com/files/bench/old.png",
            instruction="an edit that finished earlier this week",
            usage="bench",
        ),
    )
    body = editjob_from_approval(
        event, namespace=namespace, bucket=bucket, default_model="longcat-image-edit"
    )
    body["metadata"]["labels"][LABEL_BACKGROUND] = "true"
    return body


def succeeded_status(created: dict[str, Any]) -> dict[str, Any]:
    meta = created["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = meta["name"]
    completion = completion_event_id(
        namespace=meta["namespace"], name=name, uid=meta["uid"], status="success"
    )

    def cond(kind: str, reason: str, message: str) -> dict[str, str]:
        return {"type": kind, "status": "True", "reason": reason, "message": message,
                "lastTransitionTime": now}  # fmt: skip

    return {
        "status": {
            "phase": "Succeeded",
            "message": "edited in 41.0s",
            "attempts": 1,
            "observedGeneration": meta.get("generation", 1),
            "queuedAt": now,
            "startedAt": now,
            "finishedAt": now,
            "resultKey": f"results/{meta['namespace']}/{name}/attempt-1/result.png",
            "costSeconds": 41.0,
            "conditions": [
                cond("Accepted", "Accepted", "the spec is valid"),
                cond("Scheduled", "JobCreated", f"Job {name}-a1 created"),
                cond("Completed", "Succeeded", "edited in 41.0s"),
                cond("Ready", "Succeeded", "edited in 41.0s"),
            ],
            "completionEventId": completion,
            "completionPublishedAt": now,
            "callbackDelivery": "none",
        }
    }


async def create_finished(
    http: httpx.AsyncClient,
    namespace: str,
    count: int,
    *,
    bucket: str,
    first: int = 0,
    concurrency: int = 24,
    on_created: Callable[[int], None] | None = None,
) -> None:
    """Create ``count`` finished EditJobs, numbered from ``first``; raises on an apiserver error."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(first, first + count):
        queue.put_nowait(index)
    path = editjob_path(namespace)

    async def worker() -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            resp = await http.post(path, json=finished_editjob(index, namespace, bucket))
            resp.raise_for_status()
            created = resp.json()
            patch = await http.patch(
                f"{path}/{created['metadata']['name']}/status",
                json=succeeded_status(created),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            patch.raise_for_status()
            if on_created:
                on_created(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
