"""Warm mode's platform floor: what the apiserver, etcd, NATS and S3 cost per approval when
the operator and its workers ask the least any could.

No operator and no worker Pods run. This process plays both, with no think time, on the
schedule of :mod:`controlplane.load`: per event it creates the EditJob and writes one
status (``Running``), as :class:`~controlplane.floor.FloorDriver` does, then publishes the
attempt's work message to the real work-queue stream (``EDITFLOW_WORK``, on a pool of its
own, ``floor``); its in-process worker pulls it, stores the result JSON in S3 with one PUT,
publishes the result on the results subject and acks. When the result is seen there, one
status write (``Succeeded``) and the completion. Two apiserver writes, one JetStream publish
and ack, one S3 PUT and two core publishes per event: no STS mint, no sealing, no Events.

The benchmark's own observers (:mod:`controlplane.warmwatch`) stamp the same stages as in
the operator's run, so the floor's p99 is a lower bound for any warm operator here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx

from controlplane.floor import FloorDriver
from controlplane.timeline import Timeline
from editflow.core.settings import OperatorSettings, S3Settings
from editflow.events.worker_contract import (
    WORK_STREAM,
    WorkerResult,
    result_json_key,
    result_subject,
    work_consumer,
    work_subject,
)
from editflow.events.workqueue import ensure_work_consumer
from editflow.inference.output import put_bytes

#: The floor's own pool (model token) on the work stream: the operator's pools never see it.
FLOOR_MODEL = "floor"
#: Messages one pull may take; the floor's worker answers them concurrently.
PULL_BATCH = 32


class WarmFloorDriver(FloorDriver):
    """A minimal warm operator and worker in this process (see the module docs)."""

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
        s3: S3Settings,
    ) -> None:
        super().__init__(
            http, nc, timeline, settings,
            namespace=namespace, bucket=bucket, completion_prefix=completion_prefix,
        )  # fmt: skip
        self.s3 = s3
        self.js = nc.jetstream()
        self._worker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WarmFloorDriver:
        await ensure_work_consumer(
            self.js, self.namespace, FLOOR_MODEL, ack_wait=60, max_deliveries=3
        )
        durable = work_consumer(self.namespace, FLOOR_MODEL)
        subscription = await self.js.pull_subscribe_bind(durable=durable, stream=WORK_STREAM)
        self._worker = asyncio.create_task(self._work(subscription))
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def start_attempt(self, editjob: dict[str, Any]) -> None:
        """Warm mode: the attempt's work message on the stream (no Job, no credentials)."""
        request = {"edit_id": editjob["metadata"]["name"], "attempt": 1, "model": FLOOR_MODEL}
        await self.js.publish(
            work_subject(self.namespace, FLOOR_MODEL), json.dumps(request).encode()
        )

    def finished(self) -> dict[str, float]:
        return self.timeline.worker_result

    async def _work(self, subscription: Any) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        pending: set[asyncio.Task[None]] = set()
        while True:
            try:
                messages = await subscription.fetch(PULL_BATCH, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue
            for message in messages:
                task = asyncio.create_task(self._answer(message))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _answer(self, message: Any) -> None:
        """One S3 PUT of the result JSON, the result on its subject, the ack."""
        try:
            request = json.loads(message.data)
            edit_id = request["edit_id"]
            result = WorkerResult(
                status="success", edit_id=edit_id, attempt=1, model=FLOOR_MODEL,
                bucket=self.bucket, result_key=f"results/{edit_id}/attempt-1/result.png",
            )  # fmt: skip
            payload = result.model_dump_json(exclude_none=True).encode()
            key = result_json_key("results", edit_id, 1)
            await asyncio.to_thread(put_bytes, self.s3, key, payload, "application/json")
            await self.nc.publish(result_subject(self.namespace, edit_id), payload)
            await message.ack()
        except Exception as exc:  # kept for the report; the event then shows as lost
            self.errors.append(repr(exc)[:300])
