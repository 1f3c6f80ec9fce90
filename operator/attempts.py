"""The attempt as the operator's unit (issue 21 item 1): what a dispatcher observes of one.

A dispatcher starts, observes and stops attempts. What it observes it answers as an
:class:`AttemptState`, in words every dispatch mode shares: started when, a result (read
from the attempt's own channel and signed by the operator), ended without one and why,
waiting for a GPU or a worker since when, its worker unable to start, or running in which
worker. :func:`~editflow.operator.decide.decide` reads only this; it sees no Job, no Pod
and no dispatch mode, so a third mode touches only its own module. :class:`StartWords`
is how a mode tells a person that an attempt started (a Job created, a hand-out to the
warm pool), as data.

:func:`job_attempt_state` reads a Job and its Pods (Job mode); the warm dispatcher builds
its state from its registry. :class:`ResultReader` is the result channel both share: the
result JSON a worker writes next to its image in S3 (it survives the Job, and an operator
restart in warm mode), and the operator's signature of the result URL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from minio import Minio
from minio.error import S3Error
from pydantic import ValidationError

from editflow.core.errors import ErrorInfo, is_retriable_exit_code
from editflow.core.kubetime import parse_stamp
from editflow.core.settings import Settings
from editflow.events.worker_contract import WorkerResult, result_json_key
from editflow.operator.jobspec import WORKER_CONTAINER, worker_request
from editflow.operator.podstate import exit_code, job_outcome, stuck, terminated, unschedulable
from editflow.operator.presign import ResultPresigner, signed_by_operator
from editflow.operator.tenancy import edit_result_prefix

log = logging.getLogger("editflow.operator")

JSON = dict[str, Any]


@dataclass(frozen=True)
class AttemptState:
    """One attempt as its dispatcher sees it now; every field is optional news."""

    name: str
    #: When it started (its Job was created, it was handed to the warm pool).
    started: datetime | None = None
    #: The worker's result for this attempt, from the attempt's own channel, signed.
    result: WorkerResult | None = None
    #: It ended without a result: why (deadline, exit code, a model no worker loads, gone).
    ended: ErrorInfo | None = None
    #: No node or worker can take it yet: the scheduler's message, and since when.
    unschedulable: str | None = None
    waiting_since: datetime | None = None
    #: Its worker cannot start (an image pull, a missing Secret): (reason, detail), since when.
    stuck: tuple[str, str] | None = None
    stuck_since: datetime | None = None
    #: The Pod running it now, and its node.
    worker: str | None = None
    node: str | None = None
    #: What a person reads while it runs.
    running_message: str = "running"


@dataclass(frozen=True)
class StartWords:
    """How a dispatch mode tells that an attempt started: the Scheduled condition's reason
    and text, and the status message (``{name}`` and ``{attempt}`` are filled in)."""

    reason: str
    condition: str
    message: str

    def fill(self, name: str, attempt: int) -> tuple[str, str, str]:
        return (
            self.reason,
            self.condition.format(name=name, attempt=attempt),
            self.message.format(name=name, attempt=attempt),
        )


JOB_WORDS = StartWords("JobCreated", "Job {name} created", "starting Job {name}")


def gone(name: str) -> AttemptState:
    """An attempt its dispatcher no longer knows, with no result anywhere."""
    return AttemptState(
        name,
        ended=ErrorInfo("job_missing", f"Job {name} disappeared before it reported a result", True),
    )


def result_from_pods(pods: tuple[JSON, ...]) -> WorkerResult | None:
    """The result in the worker container's termination message (Job mode)."""
    for pod in pods:
        message = (terminated(pod, WORKER_CONTAINER) or {}).get("message")
        if message:
            try:
                return WorkerResult.model_validate_json(message.strip())
            except ValidationError:
                return None  # a log tail (FallbackToLogsOnError), not a result
    return None


def _since(pod: JSON) -> datetime | None:
    return parse_stamp(pod["metadata"].get("creationTimestamp"))


def pods_state(name: str, pods: tuple[JSON, ...], started: datetime | None) -> AttemptState:
    """An attempt not ended yet, from the Pods that run it or wait for a node."""
    pending = next(((p, m) for p in pods if (m := unschedulable(p))), None)
    if pending is not None:
        return AttemptState(
            name, started=started, unschedulable=pending[1], waiting_since=_since(pending[0])
        )
    blocked = stuck(pods)
    if blocked is not None:
        pod, reason, detail = blocked
        return AttemptState(name, started=started, stuck=(reason, detail), stuck_since=_since(pod))
    running = next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None)
    if running is not None:
        return AttemptState(
            name,
            started=started,
            worker=running["metadata"].get("name"),
            node=(running.get("spec") or {}).get("nodeName"),
        )
    return AttemptState(name, started=started)


def job_attempt_state(
    name: str,
    attempt: int,
    job: JSON | None,
    pods: tuple[JSON, ...],
    result: WorkerResult | None,
    *,
    deadline_seconds: int,
) -> AttemptState:
    """Job mode: the attempt's Job and Pods, and the result found for it, as its state."""
    if result is not None and result.attempt != attempt:
        result = None  # another attempt's result (a replay): not this attempt's news
    if job is None:
        return AttemptState(name, result=result) if result is not None else gone(name)
    started = _since(job)
    finished = job_outcome(job)
    if finished is None:
        return pods_state(name, pods, started)
    if result is not None:
        return AttemptState(name, started=started, result=result)
    kind, reason = finished
    if kind == "Complete":
        ended = ErrorInfo("result_missing", f"Job {name} completed without a result", True)
    elif reason == "DeadlineExceeded":
        ended = ErrorInfo("timeout", f"the edit did not finish within {deadline_seconds}s", True)
    elif (code := exit_code(pods)) is not None:
        retriable = is_retriable_exit_code(code) and reason != "PodFailurePolicy"
        ended = ErrorInfo("worker_exit", f"the worker exited with code {code}", retriable)
    else:
        ended = ErrorInfo("job_failed", f"Job {name} failed ({reason})", True)
    worker = next((p["metadata"].get("name") for p in pods), None)
    return AttemptState(name, started=started, ended=ended, worker=worker)


class ResultReader:
    """The result channel every dispatch mode shares: the result JSON in S3, signed."""

    def __init__(self, settings: Settings, s3: Minio) -> None:
        self.settings = settings
        self.op = settings.operator
        self.s3 = s3
        #: resultUrl outlives the worker's session: re-signed with the operator's key.
        self.presigner = ResultPresigner(settings.s3)

    def signed(self, editjob: JSON, result: WorkerResult) -> WorkerResult:
        """The result with its URLs signed by the operator, only under the edit's prefix."""
        within = edit_result_prefix(editjob, result_prefix=self.op.result_prefix)
        return signed_by_operator(result, self.presigner, within=within)

    async def from_s3(self, editjob: JSON, attempt: int) -> WorkerResult | None:
        """The result JSON the worker wrote next to the image (survives Job deletion)."""
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
