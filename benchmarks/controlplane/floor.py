"""The platform's floor: what the apiserver, etcd, the Job controller and the kubelet cost per
approval when the operator asks the least any operator could.

No operator runs. This process plays a minimal one with no think time: for each
event, on the same fixed schedule as :mod:`controlplane.load`, it creates the
EditJob the bridge would create (the operator's own mapping, its finalizer already
in place), writes one status (``Running``, attempt 1) and creates the attempt's Job
exactly as the operator builds it (``job_manifest``: the stub worker, the bucket-wide
key); when the Job shows it finished, one status write (``Succeeded``) and the
completion on the completions subject. Four apiserver requests per event, against
the operator's dozen or so (finalizer, Events, per-attempt credentials, the durable
outbox and its bookkeeping).

The same watches stamp the same stages, so the floor's p99 is a lower bound for any
operator on this machine: where it misses a goal, no operator change can meet it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from controlplane.load import APPLICANT, SOURCE_URL, PublishReport, on_schedule
from controlplane.timeline import Timeline
from editflow.core.settings import OperatorSettings
from editflow.events.binding import encode
from editflow.events.models import (
    ApprovalData,
    ApprovalEvent,
    CompletionData,
    CompletionEvent,
    EditJobRef,
    subject_token,
)
from editflow.operator.crd import editjob_path
from editflow.operator.jobspec import job_manifest
from editflow.operator.mapping import editjob_from_approval
from editflow.operator.names import job_name

MERGE = {"Content-Type": "application/merge-patch+json"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FloorDriver:
    """A minimal operator in this process: four apiserver requests per approval."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        nc: Any,
        timeline: Timeline,
        settings: OperatorSettings,
        *,
        namespace: str,
        bucket: str,
        completion_prefix: str,
    ) -> None:
        self.http = http
        self.nc = nc
        self.timeline = timeline
        self.settings = settings
        self.namespace = namespace
        self.bucket = bucket
        self.completion_prefix = completion_prefix
        #: event id -> the created EditJob, until its Job finished and it was closed.
        self.open: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._closer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FloorDriver:
        self._closer = asyncio.create_task(self._close_finished())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._closer is not None:
            self._closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer

    async def admit(self, index: int, event_id: str, label: str) -> None:
        """EditJob, status ``Running``, Job: what the bridge and one reconcile must write."""
        event = ApprovalEvent(
            id=event_id,
            source="/bench/floor",
            subject=f"{label}/{index}",
            data=ApprovalData(
                form_id=f"floor-{label}",
                approval_id=f"{label}-{index}",
                applicant=APPLICANT,
                image_url=SOURCE_URL,
                instruction="把背景换成纯蓝色 (benchmark)",
                usage="bench",
            ),
        )
        body = editjob_from_approval(
            event,
            namespace=self.namespace,
            bucket=self.bucket,
            default_model=self.settings.default_model,
        )
        path = editjob_path(self.namespace)
        try:
            resp = await self.http.post(path, json=body)
            resp.raise_for_status()
            created = resp.json()
            name = created["metadata"]["name"]
            status = {
                "phase": "Running",
                "attempts": 1,
                "jobName": job_name(name, 1),
                "startedAt": _now(),
                "message": "attempt 1: starting Job",
            }
            resp = await self.http.patch(
                f"{path}/{name}/status", json={"status": status}, headers=MERGE
            )
            resp.raise_for_status()
            created = resp.json()
            self.open[event_id] = created
            await self.start_attempt(created)
        except Exception as exc:  # kept for the report, and counted by the schedule
            self.errors.append(repr(exc)[:300])
            raise

    async def start_attempt(self, editjob: dict[str, Any]) -> None:
        """Job mode: the attempt's Job, exactly as the operator builds it."""
        manifest = job_manifest(editjob, 1, self.settings)
        resp = await self.http.post(
            f"/apis/batch/v1/namespaces/{self.namespace}/jobs", json=manifest
        )
        resp.raise_for_status()

    def finished(self) -> dict[str, float]:
        """The stage after which an attempt is closed (Job mode: the Job's end)."""
        return self.timeline.job_finished

    async def _close_finished(self) -> None:
        """Each attempt that finished: one status write and the completion, as the operator's."""
        pending: set[asyncio.Task[None]] = set()
        while True:
            done = self.finished()
            for event_id in [e for e in self.open if e in done]:
                editjob = self.open.pop(event_id)
                task = asyncio.create_task(self._close(event_id, editjob))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.02)

    async def _close(self, event_id: str, editjob: dict[str, Any]) -> None:
        meta, spec = editjob["metadata"], editjob["spec"]
        try:
            resp = await self.http.patch(
                f"{editjob_path(self.namespace)}/{meta['name']}/status",
                json={"status": {"phase": "Succeeded", "finishedAt": _now(), "jobName": None}},
                headers=MERGE,
            )
            resp.raise_for_status()
            completion = CompletionEvent(
                id=str(uuid.uuid4()),
                source="/bench/floor",
                subject=meta["name"],
                data=CompletionData(
                    approval_event_id=event_id,
                    form_id=spec["oa"]["formId"],
                    approval_id=spec["oa"]["approvalInstanceId"],
                    status="success",
                    result_key=f"results/{self.namespace}/{meta['name']}/attempt-1/result.png",
                    attempts=1,
                    editjob=EditJobRef(
                        namespace=self.namespace, name=meta["name"], uid=meta["uid"]
                    ),
                ),
            )
            wire = encode(completion)
            subject = f"{self.completion_prefix}.{subject_token(event_id)}"
            await self.nc.publish(subject, wire.body, headers=wire.headers)
        except Exception as exc:
            self.errors.append(repr(exc)[:300])


async def admit_steady(
    driver: FloorDriver,
    *,
    rate: float,
    duration: float,
    label: str,
    on_admitted: Callable[[int], None] | None = None,
) -> PublishReport:
    """``rate * duration`` approvals on the load's schedule (``load.on_schedule``)."""

    async def admit(index: int, event_id: str) -> None:
        await driver.admit(index, event_id, label)

    return await on_schedule(
        driver.timeline, admit, rate=rate, duration=duration, on_sent=on_admitted
    )
