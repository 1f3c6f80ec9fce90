"""Progress events: a phase change is published at once, a moving queue at most every interval."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from editflow.core.settings import EventsSettings
from editflow.events.topology import Topology
from editflow.operator.progress import ProgressPublisher, progress_of
from tests.operator.test_decisions import editjob


class _Ack:
    seq = 1
    duplicate = False
    stream = "EDITFLOW_COMPLETIONS"


class RecordingJetStream:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict]] = []

    async def publish(self, subject: str, payload: bytes, **_: Any) -> _Ack:
        self.published.append((subject, json.loads(payload)))
        return _Ack()


def queued(position: int) -> dict:
    ej = editjob("Queued", attempts=0, queuePosition=position, message="waiting")
    ej["metadata"]["namespace"] = "edits"
    return ej


def test_phase_changes_go_out_at_once_and_a_moving_queue_at_most_every_interval() -> None:
    async def scenario() -> list[tuple[str, dict]]:
        clock = [100.0]
        js = RecordingJetStream()
        publisher = ProgressPublisher(
            js, Topology(EventsSettings()), interval=5, clock=lambda: clock[0]
        )
        assert publisher.update(queued(7)) is not None
        assert publisher.update(queued(7)) is None, "nothing new"
        clock[0] += 1
        assert publisher.update(queued(6)) is None, "the queue moved a second later: held back"
        clock[0] += 5
        assert publisher.update(queued(4)).queue_position == 4
        running = editjob("Running", attempts=1, workerPod="w-1", message="attempt 1: running")
        running["metadata"]["namespace"] = "edits"
        clock[0] += 0.1
        assert publisher.update(running).phase == "running", "a phase change is never held back"
        done = editjob("Succeeded", attempts=1)
        done["metadata"]["namespace"] = "edits"
        assert publisher.update(done) is None
        await asyncio.sleep(0.05)
        return js.published

    published = asyncio.run(scenario())
    assert [(e["data"]["phase"], e["data"].get("queue_position")) for _, e in published] == [
        ("queued", 7),
        ("queued", 4),
        ("running", None),
    ]
    assert all(subject.startswith("editflow.completions.progress.") for subject, _ in published)
    assert published[2][1]["data"]["worker"] == "w-1"


def test_an_editjob_without_oa_ids_has_no_one_to_tell() -> None:
    ej = queued(2)
    ej["spec"].pop("oa")
    assert progress_of(ej) is None
