"""Warm mode's two NATS stages, stamped on arrival: the hand-out and the worker's result.

A work message is published to JetStream on ``editflow.work.<namespace>.<model>``; a core
subscription on the same subjects receives every publish the moment the server takes it,
with no consumer of its own, so it does not take work from the pool. The worker's result
goes to ``editflow.worker.results.<namespace>.<edit_id>`` (core NATS). Both bodies name
the edit in plain JSON (``edit_id``: the EditJob's name), which maps back to the event.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from controlplane.timeline import Timeline
from editflow.events.worker_contract import RESULT_SUBJECT_PREFIX, WORK_SUBJECT_PREFIX


def _stamper(timeline: Timeline, stage: dict[str, float]) -> Any:
    async def on_message(msg: Msg) -> None:
        now = time.monotonic()
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            edit_id = json.loads(msg.data).get("edit_id")
            timeline.first(stage, timeline.by_editjob.get(edit_id), now)

    return on_message


async def subscribe_warm_stages(nc: NATS, namespace: str, timeline: Timeline) -> list[Any]:
    """Core subscriptions stamping ``timeline.handed`` and ``timeline.worker_result``."""
    return [
        await nc.subscribe(
            f"{WORK_SUBJECT_PREFIX}.{namespace}.>", cb=_stamper(timeline, timeline.handed)
        ),
        await nc.subscribe(
            f"{RESULT_SUBJECT_PREFIX}.{namespace}.>", cb=_stamper(timeline, timeline.worker_result)
        ),
    ]
