"""When each approval event reached each stage, on this process's monotonic clock.

Every stage is recorded the first time the client sees it: the SDK publish
call (before it is awaited), the EditJob's and the Job's ADDED watch events,
the watch events in which the Job first shows its end (a succeeded count) and
in which it is finished (its ``Complete`` condition), and the completion event
arriving on the completions subject. Never ``creationTimestamp`` (one
second resolution, and the server's clock rather than the client's).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from editflow.events.models import subject_token
from editflow.operator.names import editjob_name


@dataclass
class Timeline:
    published: dict[str, float] = field(default_factory=dict)
    editjob: dict[str, float] = field(default_factory=dict)
    job: dict[str, float] = field(default_factory=dict)
    #: The Job's Complete/Failed condition (Kubernetes' "finished").
    job_finished: dict[str, float] = field(default_factory=dict)
    #: The first sign of the end on the Job (succeeded count, SuccessCriteriaMet), earlier.
    job_ending: dict[str, float] = field(default_factory=dict)
    completion: dict[str, float] = field(default_factory=dict)
    #: Warm mode: the attempt's work message published (seen on the work subject).
    handed: dict[str, float] = field(default_factory=dict)
    #: Warm mode: the worker's result published (seen on the results subject).
    worker_result: dict[str, float] = field(default_factory=dict)
    completion_status: dict[str, str] = field(default_factory=dict)
    #: Jobs of the peer (KEDA) name no event: Job name -> ADDED time, per ScaledJob.
    peer_jobs: dict[str, dict[str, float]] = field(default_factory=dict)
    by_token: dict[str, str] = field(default_factory=dict)
    by_editjob: dict[str, str] = field(default_factory=dict)

    def register(self, event_id: str) -> None:
        """Before publishing: how the event's EditJob and completion subject will be named."""
        self.by_token[subject_token(event_id)] = event_id
        self.by_editjob[editjob_name(event_id)] = event_id

    def first(self, stage: dict[str, float], event_id: str | None, when: float) -> None:
        if event_id is not None and event_id in self.published:
            stage.setdefault(event_id, when)

    def missing(self, event_ids: list[str]) -> dict[str, int]:
        """How many of ``event_ids`` never reached each stage."""
        stages = {"editjob": self.editjob, "job": self.job, "completion": self.completion}
        return {name: sum(1 for e in event_ids if e not in seen) for name, seen in stages.items()}


async def wait_for_stage(
    stage: dict[str, float], ids: tuple[str, ...], timeout: float, interval: float = 0.1
) -> float:
    """Until every one of ``ids`` reached ``stage`` (a Timeline dict), or ``timeout``;
    returns the seconds waited."""
    began = time.monotonic()
    while any(e not in stage for e in ids) and time.monotonic() - began <= timeout:
        await asyncio.sleep(interval)
    return round(time.monotonic() - began, 2)
