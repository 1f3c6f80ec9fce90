"""Progress events (``io.editflow.progress.v1``): queued with its place, or running.

Before this, an OA system (and the gateway's try-it page) saw an edit as ``pending`` until
its completion: nothing told a person waiting whether it was tenth in the queue or already
on a GPU. The reconciler calls :meth:`ProgressPublisher.update` after every status write;
it publishes when the phase changed (at once) or when the queue position moved (at most
every ``interval`` seconds per edit, so a queue of 2,000 moving by one does not publish
2,000 events a second). Best effort by design: a progress event lost while NATS is down is
replaced by the next one, and the completion (from the durable outbox) is the contract.
Subject: ``<completion prefix>.progress.<token>`` in the completions stream, so a reader
takes the latest with one ``get_last_msg``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from editflow.events.models import EditJobRef, ProgressData, ProgressEvent
from editflow.events.publish import publish_event
from editflow.events.topology import Topology
from editflow.operator.kube import JSON

log = logging.getLogger(__name__)

PHASES = {"Queued": "queued", "Running": "running"}
SOURCE = "/editflow/operator"

Key = tuple[str, str]


def progress_of(editjob: JSON) -> ProgressData | None:
    """The progress an EditJob's status shows, or None (not waiting, not running, no OA ids)."""
    status = editjob.get("status") or {}
    phase = PHASES.get(status.get("phase") or "")
    oa = (editjob.get("spec") or {}).get("oa") or {}
    if phase is None or not oa.get("eventId"):
        return None
    meta = editjob["metadata"]
    return ProgressData(
        approval_event_id=oa["eventId"],
        form_id=oa.get("formId") or meta["name"],
        approval_id=oa.get("approvalInstanceId") or meta["name"],
        phase=phase,  # type: ignore[arg-type]
        queue_position=status.get("queuePosition") if phase == "queued" else None,
        attempt=int(status.get("attempts") or 0),
        worker=status.get("workerPod"),
        message=status.get("message"),
        editjob=EditJobRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"]),
    )


class ProgressPublisher:
    def __init__(
        self,
        js: Any,
        topology: Topology,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.topology = topology
        self.interval = interval
        self.clock = clock
        #: Per EditJob: what was published last, and when.
        self._last: dict[Key, tuple[tuple[str, int | None, int, str | None], float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def update(self, editjob: JSON) -> ProgressData | None:
        """Publish the EditJob's progress if it is news (returns what was published)."""
        meta = editjob["metadata"]
        key = (meta["namespace"], meta["name"])
        data = progress_of(editjob)
        if data is None:
            self._last.pop(key, None)
            return None
        shown = (data.phase, data.queue_position, data.attempt, data.worker)
        previous = self._last.get(key)
        now = self.clock()
        if previous is not None:
            (phase, position, attempt, worker), at = previous
            if shown == previous[0]:
                return None
            same_step = (phase, attempt, worker) == (data.phase, data.attempt, data.worker)
            if same_step and position != data.queue_position and now - at < self.interval:
                return None  # only the queue moved, and it was told a moment ago
        self._last[key] = (shown, now)
        event = ProgressEvent(
            id=str(uuid.uuid4()), source=SOURCE, subject=data.approval_event_id[:256], data=data
        )
        task = asyncio.get_running_loop().create_task(self._publish(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return data

    def forget(self, key: Key) -> None:
        """The EditJob is gone: nothing of it is kept."""
        self._last.pop(key, None)

    async def _publish(self, event: ProgressEvent) -> None:
        with contextlib.suppress(Exception):
            await publish_event(
                self.js, event, self.topology.progress_subject(event.data.approval_event_id)
            )
            return
        log.info("progress event not published", extra={"event_id": event.data.approval_event_id})
