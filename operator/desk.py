"""The designer's desk read model (docs/desk.md): each EditJob that needs a person, as a ticket
in the NATS KV bucket of its namespace, so the gateway (no apiserver rights) can show it.

:func:`ticket_for` is pure: the lane and the ticket an EditJob's spec and status say, or
``None`` when it is in no lane. :class:`DeskPublisher` writes a ticket when it changed and
deletes the key when the EditJob leaves every lane or is deleted. The reconciler calls it
with the whole EditJob it just wrote (never a slim cached one), the review actions with the
one they patched, so the desk costs no apiserver request: the worker log lines come from the
Pods already in the operator's cache (the log tail Kubernetes keeps as the worker
container's termination message, ``FallbackToLogsOnError``). A warm worker's attempt has no
Pod of its own: its worker sends the attempt's own log lines with a failed result, which
the operator keeps as ``status.workerLog`` (:func:`warm_log`).

Writes are best effort and ordered per EditJob: one task per key applies the latest wanted
value, and a failed write is retried on the EditJob's next change. The hash of the last
value written is kept in memory, so an unchanged ticket is never written again; after a
restart :meth:`DeskPublisher.load` reads which keys exist, so a ticket whose EditJob left
its lane while no operator ran is still deleted (:meth:`DeskPublisher.prune`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NoKeysError

from editflow.events.desk import (
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES,
    Attempt,
    Gate,
    Lane,
    PersonRef,
    ResultRef,
    Ticket,
    bucket_name,
)
from editflow.events.worker_contract import WorkerResult
from editflow.operator.jobspec import WORKER_CONTAINER
from editflow.operator.kube import JSON
from editflow.operator.names import ANNOTATION_RESOLVE, LABEL_ATTEMPT, job_name
from editflow.operator.podstate import terminated

log = logging.getLogger("editflow.operator.desk")

Key = tuple[str, str]
#: Per attempt number, the worker log lines a person needs (at most MAX_LOG_LINES).
LogLines = dict[int, list[str]]

#: The gate's figures shown on a ticket (status.quality's numbers).
GATE_FIGURES = ("changedFraction", "ssim", "spread")
#: ``_written`` value of a key that exists in KV but whose content this process never wrote.
UNKNOWN = "?"


def lane_of(editjob: JSON) -> Lane | None:
    """Which desk lane the EditJob is in, if any (docs/desk.md, "Lanes").

    Sampled and gate-flagged edits already completed as a success; once a verdict is recorded,
    or a designer resolved the edit (its result is theirs, not the model's), they are done.
    An approver's preview is approximate by design and never sampled for review.
    """
    status = editjob.get("status") or {}
    phase = status.get("phase")
    if phase == "NeedsReview":
        return "needs_review"
    if phase != "Succeeded" or status.get("reviewVerdict") or status.get("reviewedBy"):
        return None
    annotations = editjob["metadata"].get("annotations") or {}
    if ANNOTATION_RESOLVE in annotations or (editjob.get("spec") or {}).get("preview"):
        return None
    verdict = (status.get("quality") or {}).get("verdict")
    if verdict and verdict != "ok":
        return "flagged"
    if status.get("sampledForReview"):
        return "sample"
    return None


def ticket_for(editjob: JSON, logs: LogLines | None = None) -> Ticket | None:
    """The EditJob's ticket, or ``None`` when it is in no lane. Needs the whole EditJob."""
    lane = lane_of(editjob)
    if lane is None:
        return None
    meta, spec = editjob["metadata"], editjob.get("spec") or {}
    status = editjob.get("status") or {}
    oa = spec.get("oa") or {}
    corrected = status.get("reviewInstruction")
    return Ticket(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        lane=lane,
        since=status.get("finishedAt"),
        phase=status["phase"],
        reason=status.get("errorCode"),
        message=status.get("message"),
        approval_event_id=oa.get("eventId"),
        department=oa.get("department"),
        usage=spec.get("usage"),
        model=spec.get("model"),
        template=(spec.get("template") or {}).get("id"),
        instruction=corrected or spec.get("prompt", ""),
        original_instruction=spec.get("prompt") if corrected else None,
        applicant=PersonRef(id=oa["applicant"]) if oa.get("applicant") else None,
        approvers=[PersonRef(id=a) for a in oa.get("approvers") or []],
        input_key=(spec.get("source") or {}).get("s3Key"),
        results=_results(status),
        attempts=_attempts(status, {**warm_log(status), **(logs or {})}),
        gate=_gate(status.get("quality")),
        review_attempts=int(status.get("reviewAttempts") or 0),
    )


def _results(status: JSON) -> list[ResultRef]:
    variants = status.get("variants") or []
    found = [
        ResultRef(index=v["index"], result_key=v["resultKey"])
        for v in variants
        if v.get("resultKey")
    ]
    if not found and status.get("resultKey"):
        found = [ResultRef(index=1, result_key=status["resultKey"])]
    return found


def _attempts(status: JSON, logs: LogLines) -> list[Attempt]:
    """One entry per attempt: a failed one's worker, code and message from
    ``status.failedAttempts``, the last one's from the status itself."""
    count = int(status.get("attempts") or 0)
    failed = {
        a.get("attempt"): a for a in status.get("failedAttempts") or [] if isinstance(a, dict)
    }
    out = []
    for number in range(1, count + 1):
        last = number == count
        known = failed.get(number) or {}
        out.append(
            Attempt(
                attempt=number,
                worker=known.get("worker") or (status.get("workerPod") if last else None),
                error_code=known.get("errorCode") or (status.get("errorCode") if last else None),
                message=known.get("message") or (status.get("message") if last else None),
                log=logs.get(number, [])[-MAX_LOG_LINES:],
            )
        )
    return out


def warm_log(status: JSON) -> LogLines:
    """The lines a warm worker sent with a failed attempt's result (``status.workerLog``).

    A warm attempt has no Pod of its own, so its worker keeps its lines itself; where a Pod's
    termination message has lines for the same attempt, those win (the caller merges).
    """
    recorded = status.get("workerLog") or {}
    attempt, lines = recorded.get("attempt"), recorded.get("lines") or []
    if not isinstance(attempt, int) or not lines:
        return {}
    return {attempt: [str(line)[:MAX_LOG_LINE_CHARS] for line in lines][-MAX_LOG_LINES:]}


def _gate(quality: JSON | None) -> Gate | None:
    if not quality or not quality.get("verdict"):
        return None
    figures = {
        k: float(quality[k]) for k in GATE_FIGURES if isinstance(quality.get(k), int | float)
    }
    return Gate(verdict=quality["verdict"], figures=figures)


def log_tail(pods: Iterable[JSON]) -> LogLines:
    """The worker log tail each attempt's Pod left as its termination message.

    A worker that wrote its result JSON there left no log (the result is not a log line);
    one that crashed left the end of its log (``FallbackToLogsOnError``). Lines are cut at
    MAX_LOG_LINE_CHARS, the last MAX_LOG_LINES kept.
    """
    out: LogLines = {}
    for pod in pods:
        label = (pod["metadata"].get("labels") or {}).get(LABEL_ATTEMPT)
        message = (terminated(pod, WORKER_CONTAINER) or {}).get("message") or ""
        if not label or not label.isdigit() or not message.strip() or _is_result(message):
            continue
        lines = [line[:MAX_LOG_LINE_CHARS] for line in message.splitlines() if line.strip()]
        out[int(label)] = lines[-MAX_LOG_LINES:]
    return out


def _is_result(message: str) -> bool:
    try:
        WorkerResult.model_validate_json(message.strip())
    except ValueError:
        return False
    return True


def cached_log_lines(cache: Any) -> Callable[[JSON], LogLines]:
    """Log lines from the Pods of every attempt still in the operator's ClusterCache."""

    def lines(editjob: JSON) -> LogLines:
        meta = editjob["metadata"]
        count = int((editjob.get("status") or {}).get("attempts") or 0)
        pods = [
            pod
            for attempt in range(1, count + 1)
            for pod in cache.pods_of(meta["namespace"], job_name(meta["name"], attempt))
        ]
        return log_tail(pods)

    return lines


def ticket_bytes(ticket: Ticket | None) -> bytes | None:
    return None if ticket is None else ticket.model_dump_json().encode()


class DeskPublisher:
    """Writes tickets to ``EDITFLOW_DESK_<ns>`` only when they changed (see the module doc)."""

    def __init__(
        self,
        js: Any,
        *,
        logs: Callable[[JSON], LogLines] | None = None,
        storage: str = "file",
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.logs = logs
        self.storage = storage
        self.replicas = replicas
        #: Per EditJob: the hash of the value in KV (UNKNOWN: exists, not written by us).
        self._written: dict[Key, str] = {}
        #: Per EditJob: the value to write next (None: delete the key) and its hash.
        self._wanted: dict[Key, tuple[str | None, bytes | None]] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._buckets: dict[str, Any] = {}

    # -- what the operator calls -----------------------------------------------------------
    def update(self, editjob: JSON) -> Ticket | None:
        """Publish the EditJob's ticket if it changed (a whole EditJob, never a slim one)."""
        meta = editjob["metadata"]
        key = (meta["namespace"], meta["name"])
        ticket = None
        if lane_of(editjob) is not None:  # the log lines are looked up only for a ticket
            ticket = ticket_for(editjob, self.logs(editjob) if self.logs else None)
        value = ticket_bytes(ticket)
        digest = hashlib.sha256(value).hexdigest() if value is not None else None
        self._want(key, digest, value)
        return ticket

    def gone(self, key: Key) -> None:
        """The EditJob was deleted: its ticket, if it has one, goes too."""
        self._want(key, None, None)

    async def load(self, namespaces: Iterable[str]) -> int:
        """Remember which tickets exist (after a restart); returns how many."""
        found = 0
        for namespace in namespaces:
            kv = await self._bucket(namespace)
            try:
                keys = await kv.keys()
            except NoKeysError:  # nats-py's answer for an empty bucket
                keys = []
            for name in keys:
                self._written.setdefault((namespace, name), UNKNOWN)
                found += 1
        return found

    def knows(self, key: Key) -> bool:
        """Whether the bucket holds (or is about to hold) this EditJob's ticket."""
        return key in self._written or key in self._wanted

    def prune(self, existing: Iterable[Key]) -> int:
        """Delete the tickets of EditJobs that no longer exist (deleted while none listened)."""
        alive = set(existing)
        stale = [key for key in self._written if key not in alive]
        for key in stale:
            self.gone(key)
        return len(stale)

    async def drain(self) -> None:
        """Wait for every pending write (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    # -- how ---------------------------------------------------------------------------------
    def _want(self, key: Key, digest: str | None, value: bytes | None) -> None:
        current = self._written.get(key)
        pending = self._wanted.get(key)
        if pending is None and current == digest:
            return  # unchanged (or in no lane and never written)
        if pending is not None and pending[0] == digest:
            return
        self._wanted[key] = (digest, value)
        if key not in self._tasks:
            try:
                task = asyncio.get_running_loop().create_task(self._flush(key))
            except RuntimeError:  # no loop: a unit test of the pure part
                return
            self._tasks[key] = task

    async def _flush(self, key: Key) -> None:
        try:
            while key in self._wanted:
                digest, value = self._wanted.pop(key)
                if digest == self._written.get(key):
                    continue
                try:
                    kv = await self._bucket(key[0])
                    if value is None:
                        await kv.delete(key[1])
                        self._written.pop(key, None)
                    else:
                        await kv.put(key[1], value)
                        self._written[key] = digest  # type: ignore[assignment]
                except Exception as exc:  # best effort: the next change of the EditJob retries
                    log.warning(
                        "desk ticket not written: %s", exc, extra={"editjob": "/".join(key)}
                    )
                    self._written[key] = UNKNOWN
        finally:
            self._tasks.pop(key, None)

    async def _bucket(self, namespace: str) -> Any:
        kv = self._buckets.get(namespace)
        if kv is None:
            config = KeyValueConfig(
                bucket=bucket_name(namespace),
                description=f"editflow desk: tickets of namespace {namespace} (docs/desk.md)",
                history=1,
                storage=StorageType(self.storage),
                replicas=self.replicas,
            )
            kv = self._buckets[namespace] = await self.js.create_key_value(config)
        return kv
