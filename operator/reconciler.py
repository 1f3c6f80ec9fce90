"""The imperative shell around :func:`editflow.operator.decide.decide`.

``Reconciler.reconcile(namespace, name)`` reads the world fresh from the
apiserver (never from a watch cache, so a Job created a moment ago is seen),
asks :func:`decide` what to do, and carries it out in a crash-safe order:

1. delete a Job that must go, 2. create the next attempt's Job (a repeated
create is ``AlreadyExists``: the name is deterministic), 3. patch status,
4. publish the completion (id derived from the EditJob and outcome) and only
then record its id in status. A crash between any two steps is repaired by
the next reconcile, which sees the same state and makes the same decision;
a republished completion is dropped by JetStream's duplicate window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from minio import Minio
from minio.error import S3Error
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from editflow.core.errors import ErrorInfo
from editflow.core.kube_events import event_body
from editflow.core.settings import Settings
from editflow.events.binding import encode
from editflow.events.models import EditJobRef, ReviewData, completion_event_id
from editflow.events.outcomes import (
    completion_event,
    publish_completion,
    publish_review,
    review_event,
)
from editflow.events.topology import Topology
from editflow.events.worker_contract import WorkerResult, result_json_key
from editflow.operator import metrics
from editflow.operator.callbacks import alert_body, deliver_callback
from editflow.operator.crd import GROUP, VERSION, editjob_path
from editflow.operator.decide import FINAL_PHASES, OUTCOMES, Decision, Observed, decide
from editflow.operator.jobspec import WORKER_CONTAINER, job_manifest, worker_request
from editflow.operator.kube import AsyncKube, KubeAPIError
from editflow.operator.names import MANAGED_BY

log = logging.getLogger("editflow.operator")


def job_path(namespace: str, name: str = "") -> str:
    base = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    return f"{base}/{name}" if name else base


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in job.get("status", {}).get("conditions") or []
    )


def _result_from_pods(pods: list[dict[str, Any]]) -> WorkerResult | None:
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            if cs.get("name") != WORKER_CONTAINER:
                continue
            message = (cs.get("state", {}).get("terminated") or {}).get("message")
            if message:
                try:
                    return WorkerResult.model_validate_json(message.strip())
                except ValidationError:
                    return None  # a log tail (FallbackToLogsOnError), not a result
    return None


class Reconciler:
    """Drives EditJobs; one instance per operator process."""

    def __init__(
        self,
        settings: Settings,
        kube: AsyncKube,
        *,
        nats: NATS | None,
        topology: Topology,
        s3: Minio,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.op = settings.operator
        self.kube = kube
        self.nats = nats
        self.topology = topology
        self.s3 = s3
        self.now = now
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._callbacks: dict[str, asyncio.Task[None]] = {}
        self.last_resync = time.monotonic()

    # -- scheduling ------------------------------------------------------------
    def schedule(self, namespace: str, name: str, delay: float = 0.0) -> None:
        """Reconcile soon (coalescing: the earliest pending wake-up wins)."""
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= when:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        asyncio.get_running_loop().create_task(self._run(*key))

    async def _run(self, namespace: str, name: str) -> None:
        try:
            requeue = await self.reconcile(namespace, name)
        except Exception:
            log.exception("reconcile failed", extra={"editjob": f"{namespace}/{name}"})
            metrics.RECONCILE_ERRORS.inc()
            requeue = min(30.0, self.op.resync_seconds)
        if requeue is not None:
            self.schedule(namespace, name, requeue)

    # -- one EditJob -------------------------------------------------------------
    async def reconcile(self, namespace: str, name: str) -> float | None:
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            with metrics.RECONCILE_SECONDS.time():
                return await self._reconcile(namespace, name)

    async def _reconcile(self, namespace: str, name: str) -> float | None:
        editjob = await self.kube.get(editjob_path(namespace, name))
        if editjob is None or editjob["metadata"].get("deletionTimestamp"):
            self._locks.pop((namespace, name), None)
            return None
        obs = await self.observe(editjob)
        decision = decide(obs, self.op)
        await self.apply(editjob, obs, decision)
        return decision.requeue_after

    async def observe(self, editjob: dict[str, Any]) -> Observed:
        meta = editjob["metadata"]
        namespace = meta["namespace"]
        status = editjob.get("status") or {}
        phase = status.get("phase") or ""
        now = self.now()
        job = pods = None
        result = None
        in_flight = queued_ahead = 0
        completion_id = None
        job_name = status.get("jobName")
        if job_name:
            job = await self.kube.get(job_path(namespace, job_name))
            pods = await self.kube.list(
                f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"job-name={job_name}"
            )
            if job is None or _finished(job):
                result = _result_from_pods(pods) or await self.result_from_s3(editjob)
        elif phase in ("Pending", "Queued"):
            in_flight, queued_ahead = await self.load(editjob)
        if phase in FINAL_PHASES:
            completion_id = completion_event_id(
                namespace=namespace, name=meta["name"], uid=meta["uid"], status=OUTCOMES[phase]
            )
        return Observed(
            editjob=editjob,
            now=now,
            job=job,
            pods=tuple(pods or ()),
            result=result,
            in_flight=in_flight,
            queued_ahead=queued_ahead,
            completion_id=completion_id,
        )

    async def result_from_s3(self, editjob: dict[str, Any]) -> WorkerResult | None:
        """The result JSON the worker wrote next to the image (survives Job deletion)."""
        attempt = int((editjob.get("status") or {}).get("attempts") or 0)
        if attempt < 1:
            return None
        prefix = worker_request(editjob, attempt, self.op).output.key_prefix
        key = result_json_key(prefix, editjob["metadata"]["name"], attempt)

        def fetch() -> bytes | None:
            try:
                resp = self.s3.get_object(self.settings.s3.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket"):
                    return None
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        raw = await asyncio.to_thread(fetch)
        if raw is None:
            return None
        try:
            return WorkerResult.model_validate_json(raw)
        except ValidationError:
            log.warning("unreadable result JSON", extra={"key": key})
            return None

    async def load(self, editjob: dict[str, Any]) -> tuple[int, int]:
        """(Jobs in flight in the namespace, EditJobs ahead of this one in the queue).

        Derived from cluster state each time (level-triggered), so the queue
        survives operator restarts. Pending Pods count as in flight.
        """
        namespace = editjob["metadata"]["namespace"]
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        jobs = await self.kube.list(job_path(namespace), labelSelector=selector)
        in_flight = sum(1 for j in jobs if not _finished(j))
        now = self.now()

        def key(ej: dict[str, Any]) -> tuple[int, str, str]:
            st = ej.get("status") or {}
            queued = st.get("queuedAt") or ej["metadata"].get("creationTimestamp", "")
            return (-int(ej["spec"].get("priority", 50)), queued, ej["metadata"]["name"])

        mine = key(editjob)
        ahead = 0
        for other in await self.kube.list(editjob_path(namespace)):
            st = other.get("status") or {}
            if other["metadata"]["name"] == editjob["metadata"]["name"]:
                continue
            if st.get("phase") not in ("Pending", "Queued") or st.get("jobName"):
                continue
            retry = st.get("retryAfter")
            if retry and retry > now.strftime("%Y-%m-%dT%H:%M:%SZ"):
                continue
            if key(other) < mine:
                ahead += 1
        metrics.IN_FLIGHT.labels(namespace).set(in_flight)
        return in_flight, ahead

    # -- acting --------------------------------------------------------------------
    async def apply(self, editjob: dict[str, Any], obs: Observed, decision: Decision) -> None:
        meta = editjob["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        where = {"editjob": f"{namespace}/{name}"}
        if decision.delete_job:
            await self.kube.delete(job_path(namespace, decision.delete_job))
            log.info("deleted job %s", decision.delete_job, extra=where)
        if decision.create_job is not None:
            manifest = job_manifest(editjob, decision.create_job, self.op)
            try:
                await self.kube.create(job_path(namespace), manifest)
                metrics.JOBS_CREATED.inc()
            except KubeAPIError as exc:
                if exc.status != 409:
                    raise
            log.info(
                "attempt %d: job %s", decision.create_job, manifest["metadata"]["name"], extra=where
            )
        status = dict(decision.status)
        if status:
            editjob = await self.kube.patch(
                editjob_path(namespace, name) + "/status", {"status": status}
            )
            if "phase" in status:
                metrics.PHASES.labels(status["phase"]).inc()
        for kind, reason, message in decision.events:
            await self.event(editjob, kind, reason, message)
        self.alert_if_needed(editjob, decision)
        if decision.publish_completion:
            await self.publish_outcome(editjob, review=decision.publish_review)
        if decision.delete_editjob:
            await self.kube.delete(editjob_path(namespace, name))
            log.info("retention: deleted finished editjob", extra=where)

    async def publish_outcome(self, editjob: dict[str, Any], *, review: bool) -> None:
        """Publish the completion (and review request), then record it in status."""
        if self.nats is None:
            raise RuntimeError("no NATS connection: completions cannot be published")
        meta, spec = editjob["metadata"], editjob["spec"]
        status = editjob.get("status") or {}
        phase = status["phase"]
        outcome = OUTCOMES[phase]
        oa = spec.get("oa") or {}
        ref = EditJobRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])
        fallback = f"{meta['namespace']}/{meta['name']}"
        error = None
        if outcome in ("failed", "needs_review"):
            error = ErrorInfo(
                status.get("errorCode") or outcome,
                status.get("message") or outcome,
                retriable=outcome == "needs_review",
            )
        event = completion_event(
            editjob=ref,
            approval_event_id=oa.get("eventId") or f"editjob:{fallback}",
            form_id=oa.get("formId") or fallback,
            approval_id=oa.get("approvalInstanceId") or fallback,
            status=outcome,
            result_url=status.get("resultUrl"),
            result_key=status.get("resultKey"),
            cost_seconds=status.get("costSeconds"),
            attempts=int(status.get("attempts") or 0),
            error=error,
            message=status.get("message"),
        )
        js = self.nats.jetstream()
        ack = await publish_completion(js, self.topology, event)
        metrics.COMPLETIONS.labels(outcome, "true" if ack.duplicate else "false").inc()
        callback = spec.get("callback") or {}
        if callback.get("natsSubject"):
            wire = encode(event)
            await self.nats.publish(callback["natsSubject"], wire.body, headers=wire.headers)
        if review:
            await publish_review(
                js,
                self.topology,
                review_event(
                    data=ReviewData(
                        approval_event_id=event.data.approval_event_id,
                        form_id=event.data.form_id,
                        approval_id=event.data.approval_id,
                        applicant=None,
                        image_url=spec["source"].get("url"),
                        image_key=spec["source"].get("s3Key"),
                        instruction=spec["prompt"],
                        attempts=int(status.get("attempts") or 0),
                        error=event.data.error,  # type: ignore[arg-type]
                        editjob=ref,
                    )
                ),
            )
            log.warning(
                "needs review: %s",
                status.get("message"),
                extra={
                    "editjob": f"{meta['namespace']}/{meta['name']}",
                    "prompt": spec["prompt"],
                    "image": spec["source"],
                },
            )
        await self.kube.patch(
            editjob_path(meta["namespace"], meta["name"]) + "/status",
            {
                "status": {
                    "completionEventId": event.id,
                    "completionPublishedAt": self.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            },
        )
        if callback.get("webhookUrl") and event.id not in self._callbacks:
            self._background(
                event.id,
                deliver_callback(callback["webhookUrl"], wire_body(event), event.id, self.op),
            )

    async def event(self, editjob: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the EditJob, for `kubectl describe`."""
        meta = editjob["metadata"]
        body = event_body(
            editjob,
            api_version=f"{GROUP}/{VERSION}",
            kind="EditJob",
            event_type=kind,
            reason=reason,
            message=message,
            component="editflow-operator",
            instance="editflow-operator",
            now=self.now(),
        )
        try:
            await self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except KubeAPIError as exc:
            log.warning("could not post event: %s", exc)

    def alert_if_needed(self, editjob: dict[str, Any], decision: Decision) -> None:
        """Timeouts, GPU starvation and hand-over to designers page a person (brief §5)."""
        url = self.op.alert_webhook_url
        code = decision.status.get("errorCode")
        phase = decision.status.get("phase")
        if not url or not (code in ("timeout", "no_gpu") or phase == "NeedsReview"):
            return
        meta = editjob["metadata"]
        name = f"{meta['namespace']}/{meta['name']}"
        reason = "NeedsReview" if phase == "NeedsReview" else code
        body = alert_body(name, str(reason), str(decision.status.get("message", "")))
        attempts = decision.status.get("attempts") or (editjob.get("status") or {}).get("attempts")
        key = f"alert:{meta['uid']}:{reason}:{attempts}"
        if key not in self._callbacks:
            self._background(
                key, deliver_callback(url, body, key, self.op, content_type="application/json")
            )

    def _background(self, key: str, coro: Any) -> None:
        """Deliveries run beside reconciles; one per key at a time, forgotten when done."""
        task = asyncio.create_task(coro)
        self._callbacks[key] = task
        task.add_done_callback(lambda _t, k=key: self._callbacks.pop(k, None))

    async def on_deleted(self, editjob: dict[str, Any]) -> None:
        """Deleting an EditJob that had not finished cancels it and tells the OA side.

        Its Jobs and Pods go with it through owner references (the garbage
        collector); the completion ``cancelled`` is published first.
        """
        status = editjob.get("status") or {}
        if status.get("phase") in FINAL_PHASES:
            return
        meta = editjob["metadata"]
        if status.get("jobName"):
            await self.kube.delete(job_path(meta["namespace"], status["jobName"]))
        cancelled = {
            **editjob,
            "status": {
                **status,
                "phase": "Cancelled",
                "message": "cancelled: the EditJob was deleted",
            },
        }
        try:
            await self.publish_outcome(cancelled, review=False)
        except KubeAPIError as exc:
            if exc.status != 404:  # recording the id on a vanishing object may 404
                raise


def wire_body(event: Any) -> bytes:
    """The structured CloudEvent JSON that webhooks receive."""
    return json.dumps(
        {**event.attributes(), "data": event.data_json()}, ensure_ascii=False
    ).encode()
