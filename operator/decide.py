"""The operator's decisions as one pure function: observed state in, status + actions out.

Level-triggered: :func:`decide` looks only at the EditJob, the current
attempt's state as its dispatcher observed it (:class:`~editflow.operator.attempts.AttemptState`:
a result, an end without one, waiting for a GPU, a worker that cannot start, running) and
the namespace's load, never at which event woke it, and never at a Job, a Pod or a
dispatch mode: the same attempt states give the same decisions in every mode. Running it
twice on the same state gives the same answer, which is what makes a restarted operator
safe.

Phases (brief §3)::

    (new) -> Pending -> Queued --(slot free)--> Running --> Succeeded
                          ^   \\                   |    \\-> Failed       (permanent error)
                          |    \\--(no GPU yet)--> Queued (Job exists, Pod unschedulable)
                          +--- retriable failure, attempts left (after a backoff)
                               retriable failure, no attempts left --> NeedsReview
    any non-final phase --(withdraw / cancel annotation / deletion)--> Cancelled

The final phase and the outcome to deliver go in one status write (``completionEventId``,
``callbackDelivery: pending``); the delivery is recorded in one more
(``completionPublishedAt``). A deleted EditJob (``metadata.deletionTimestamp``) takes the
same branch as the cancel annotation; once final, its finalizer is released (its outcome
handed to the outbox first if it was not delivered yet).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from editflow.core.errors import ErrorInfo
from editflow.core.kubetime import parse_stamp as parse_time
from editflow.core.kubetime import stamp
from editflow.core.settings import OperatorSettings
from editflow.events.models import completion_event_id
from editflow.events.worker_contract import POISON_EDIT_CODE, QualityReport, WorkerResult
from editflow.operator.attempts import AttemptState, gone
from editflow.operator.decision import Decision, Observed
from editflow.operator.names import (
    ANNOTATION_CANCEL,
    ANNOTATION_RESOLVE,
    ANNOTATION_REVIEWED_BY,
    ANNOTATION_SEND_BACK,
)
from editflow.operator.names import job_name as job_name_for
from editflow.operator.phases import FINAL_PHASES, OUTCOMES, delivered
from editflow.operator.tenancy import (
    event_id_refusal,
    output_prefix_refusal,
    resolve_key_refusal,
    source_key_refusal,
)


def _condition(kind: str, ok: bool, reason: str, message: str, now: datetime) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp(now),
    }


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace by type; keep ``lastTransitionTime`` when the status did not change."""
    by_type = {c["type"]: c for c in old}
    for cond in new:
        prev = by_type.get(cond["type"])
        if prev and prev.get("status") == cond["status"]:
            cond = {
                **cond,
                "lastTransitionTime": prev.get("lastTransitionTime", cond["lastTransitionTime"]),
            }
        by_type[cond["type"]] = cond
    return list(by_type.values())


def backoff(settings: OperatorSettings, spec: dict[str, Any], attempts: int) -> float:
    base = (spec.get("retry") or {}).get("backoffSeconds", settings.backoff_seconds)
    return float(base) * (2 ** max(0, attempts - 1))


def max_attempts(settings: OperatorSettings, spec: dict[str, Any]) -> int:
    return int((spec.get("retry") or {}).get("maxAttempts", settings.max_attempts))


def quality_status(quality: QualityReport | None) -> dict[str, Any] | None:
    """The gate's report as EditJob status (camelCase, as the CRD names it)."""
    if quality is None:
        return None
    return {
        "verdict": quality.verdict,
        "kind": quality.kind,
        "changedFraction": quality.changed_fraction,
        "ssim": quality.ssim,
        "spread": quality.spread,
        "reason": quality.reason,
    }


def is_sampled(uid: str, rate: float) -> bool:
    """Deterministic quality-review sampling: the same EditJob is always in or out."""
    bucket = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < rate


#: The errorCode of an edit a desk reviewer sent back to its applicant (docs/desk.md).
SENT_BACK = "sent_back"


def wants_resolution(editjob: dict[str, Any]) -> bool:
    """A NeedsReview edit a person decided (``edits resolve``, the desk's upload or send back):
    the one settled EditJob the reconciler must look at again."""
    annotations = editjob["metadata"].get("annotations") or {}
    return (editjob.get("status") or {}).get("phase") == "NeedsReview" and bool(
        annotations.get(ANNOTATION_RESOLVE) or annotations.get(ANNOTATION_SEND_BACK)
    )


def reviewed_by(annotations: dict[str, str]) -> dict[str, Any]:
    """``{"reviewedBy": {"id", "name"}}`` from the desk's annotation; ``{}`` without one."""
    try:
        who = json.loads(annotations.get(ANNOTATION_REVIEWED_BY) or "null")
    except ValueError:
        return {}
    if not isinstance(who, dict) or not isinstance(who.get("id"), str):
        return {}
    return {"reviewedBy": {"id": who["id"], "name": who.get("name")}}


#: Failed attempts kept in ``status.failedAttempts`` (retries and designers' re-runs).
MAX_FAILED_ATTEMPTS = 10


def decide(obs: Observed, settings: OperatorSettings) -> Decision:
    """What to do about one EditJob now, from what was observed: one function per phase.

    Each phase function answers with a Decision, or None to hand the EditJob on (a new
    EditJob is accepted, then queued or started in the same turn).
    """
    turn = _Turn(obs, settings)
    if turn.phase in FINAL_PHASES:
        return _final(turn)
    return (
        _cancelled(turn)
        or _refused(turn)
        or _accepted(turn)
        or (_waiting(turn) if not turn.job_name else _in_flight(turn))
    )


class _Turn:
    """One decision in the making: what was observed, and the status being written."""

    def __init__(self, obs: Observed, settings: OperatorSettings) -> None:
        self.obs = obs
        self.settings = settings
        self.ej = obs.editjob
        self.meta, self.spec = self.ej["metadata"], self.ej["spec"]
        self.status: dict[str, Any] = self.ej.get("status") or {}
        self.phase: str = self.status.get("phase") or ""
        self.annotations: dict[str, str] = self.meta.get("annotations") or {}
        self.now = obs.now
        self.attempts = int(self.status.get("attempts") or 0)
        self.job_name: str | None = self.status.get("jobName")
        #: Deleted (kubectl delete, or retention): held only by the operator's finalizer.
        self.deleting = bool(self.meta.get("deletionTimestamp"))
        self.out = Decision()

    def set_status(self, **fields: Any) -> None:
        self.out.status.update(fields)

    def conditions(self, *new: dict[str, str]) -> None:
        base = self.out.status.get("conditions") or self.status.get("conditions") or []
        self.out.status["conditions"] = merge_conditions(base, list(new))

    def finish(
        self, final: str, message: str, *, error: ErrorInfo | None = None, **extra: Any
    ) -> Decision:
        outcome = completion_event_id(
            namespace=self.meta.get("namespace", ""),
            name=self.meta["name"],
            uid=self.meta.get("uid", ""),
            status=OUTCOMES[final],
        )
        self.set_status(
            phase=final,
            message=message,
            finishedAt=stamp(self.now),
            jobName=None,
            queuePosition=None,
            # The outcome to deliver, in the same write as the phase (BRIEF §3): recorded
            # as delivered in one more write, after it was published with this id.
            completionEventId=outcome,
            completionPublishedAt=None,
            callbackDelivery="pending",
            delivery=None,
            **extra,
        )
        self.set_status(errorCode=error.code if error else None)
        self.conditions(
            _condition("Completed", True, final, message, self.now),
            _condition("Ready", final == "Succeeded", final, message, self.now),
        )
        self.out.publish_completion = True
        self.out.publish_review = final == "NeedsReview"
        self.out.release_finalizer = self.deleting
        if final != "Succeeded":
            # A success tells its story in its conditions (Accepted, Scheduled, Completed,
            # Ready, each with its time): one Event less per edit (issue 21 item 5). What
            # went wrong, a hand-over and a cancellation are Events.
            kind = "Normal" if final == "Cancelled" else "Warning"
            self.out.events.append((kind, final, message))
        return self.out

    def gpu_seconds_so_far(self, error: ErrorInfo | None = None) -> float:
        """GPU-seconds of every attempt, the one ending now included (cost attribution).

        An attempt with a result costs what its worker measured; one that ended without a
        result (killed, timed out, cancelled) held its GPU from its start until now; one
        that never got a GPU or never started its container cost nothing.
        """
        spent = 0.0
        result = self.obs.attempt.result if self.obs.attempt is not None else None
        if result is not None and result.attempt == self.attempts:
            spent = float(result.cost.total or 0.0)
        elif self.job_name and not (error and error.code in ("no_gpu", "pod_stuck")):
            started = parse_time(self.status.get("startedAt"))
            spent = max(0.0, (self.now - started).total_seconds()) if started else 0.0
        return round(float(self.status.get("gpuSeconds") or 0.0) + spent, 3)

    def has_free_slot(self) -> bool:
        free = (self.obs.cap or self.settings.max_running_per_namespace) - self.obs.in_flight
        return free > 0 and self.obs.queued_ahead < free


# -- final phases: a person's decision, the outcome delivered, then expiry -------------------
def _final(t: _Turn) -> Decision:
    status, annotations, out = t.status, t.annotations, t.out
    if t.phase == "NeedsReview" and annotations.get(ANNOTATION_RESOLVE):
        key = annotations[ANNOTATION_RESOLVE]
        refused = resolve_key_refusal(
            t.ej,
            key,
            result_prefix=t.settings.result_prefix,
            field=f"metadata.annotations[{ANNOTATION_RESOLVE}]",
        )
        if refused is None:
            return t.finish(
                "Succeeded",
                f"resolved by a designer with {key}",
                resultKey=key,
                resultUrl=None,
                **reviewed_by(annotations),
            )
        if status.get("message") != refused:  # said once: the edit stays NeedsReview
            t.set_status(message=refused)
            out.events.append(("Warning", "ResolveRefused", refused))
    elif t.phase == "NeedsReview" and (said := annotations.get(ANNOTATION_SEND_BACK)):
        error = ErrorInfo(SENT_BACK, f"sent back to the applicant: {said}", False)
        return t.finish("Failed", error.message, error=error, **reviewed_by(annotations))
    if t.deleting:
        # Deleted once final (retention, kubectl delete): an outcome not delivered yet goes
        # to the outbox, then the finalizer is released.
        out.release_finalizer = True
        out.publish_completion = not delivered(status)
        out.publish_review = out.publish_completion and t.phase == "NeedsReview"
        return out
    if not delivered(status) or (
        t.obs.completion_id and status.get("completionEventId") != t.obs.completion_id
    ):
        retry_at = parse_time((status.get("delivery") or {}).get("nextAttemptAt"))
        if retry_at is not None and t.now < retry_at:
            out.requeue_after = (retry_at - t.now).total_seconds()  # a webhook's backoff
            return out
        out.publish_completion = True
        out.publish_review = t.phase == "NeedsReview"
        # Looked at again in case the delivery could not run (NATS down): it is recorded
        # once delivered, and a delivered outcome is never sent again.
        out.requeue_after = t.settings.delivery_recheck_seconds
        return out
    finished = parse_time(status.get("finishedAt"))
    if finished is not None:
        expires = finished + timedelta(seconds=t.settings.retention_seconds)
        if t.now >= expires:
            out.delete_editjob = True
        else:
            out.requeue_after = (expires - t.now).total_seconds()
    return out


# -- cancellation (withdraw event, `editflow edits cancel`, deletion) ------------------------
def _cancelled(t: _Turn) -> Decision | None:
    """One branch for the three ways to cancel: the withdraw event and ``edits cancel`` set
    the cancel annotation; ``kubectl delete`` sets the deletion timestamp."""
    asked = t.annotations.get(ANNOTATION_CANCEL)
    if asked is None and not t.deleting:
        return None
    if t.job_name:
        t.out.delete_job = t.job_name
    reason = asked or ("the EditJob was deleted" if t.deleting else "cancelled")
    return t.finish("Cancelled", f"cancelled: {reason}", gpuSeconds=t.gpu_seconds_so_far())


# -- a spec that must not run (kubectl-applied: the bridge screens approvals) -----------------
def _refused(t: _Turn) -> Decision | None:
    if t.phase != "":
        return None
    if t.obs.refusal is not None:
        where = f"{t.obs.refusal.field}: " if t.obs.refusal.field else ""
        return t.finish("Failed", f"{where}{t.obs.refusal.message}", error=t.obs.refusal)
    # Another namespace's object (issue 14 §5): the message names spec.source.s3Key.
    if outside := source_key_refusal(t.ej, upload_prefix=t.settings.upload_prefix):
        return t.finish("Failed", outside.message, error=outside)
    # Another namespace's results (issue 20 §3): the message names spec.output.prefix.
    if elsewhere := output_prefix_refusal(t.ej, result_prefix=t.settings.result_prefix):
        return t.finish("Failed", elsewhere.message, error=elsewhere)
    if claimed := event_id_refusal(t.ej):
        # Failed as itself: completion_for never answers the approval with it.
        return t.finish("Failed", claimed.message, error=claimed)
    return None


# -- new -> Pending ----------------------------------------------------------------------------
def _accepted(t: _Turn) -> Decision | None:
    """A new EditJob is accepted and, in the same status write, started (a slot is free) or
    queued with its place (none is): one write, never Pending and then Queued."""
    if t.phase != "":
        return None
    t.set_status(
        phase="Pending",
        message="accepted; waiting to be queued",
        attempts=0,
        observedGeneration=t.meta.get("generation"),
        queuedAt=stamp(t.now),
    )
    # The Accepted condition tells the story; a Kubernetes Event would repeat it (one
    # apiserver write per edit at 50 events/s). JobCreated and the outcome are Events.
    t.conditions(_condition("Accepted", True, "Accepted", "the spec is valid", t.now))
    return None  # _waiting starts attempt 1 or queues it, in this same status write


# -- no attempt in flight: wait for backoff / a slot, then start one -------------------------
def _waiting(t: _Turn) -> Decision:
    settings, obs, out = t.settings, t.obs, t.out
    retry_at = parse_time(t.status.get("retryAfter"))
    if retry_at and t.now < retry_at:
        t.set_status(phase="Queued")
        out.requeue_after = (retry_at - t.now).total_seconds()
        return out
    if not t.has_free_slot():
        cap = obs.cap or settings.max_running_per_namespace
        message = (
            f"waiting for the concurrency cap: {obs.in_flight}/{cap} edits in flight, "
            f"{obs.queued_ahead} ahead in the queue"
        )
        t.set_status(phase="Queued", message=message, queuePosition=obs.queued_ahead + 1)
        t.conditions(_condition("Scheduled", False, "ConcurrencyCap", message, t.now))
        out.requeue_after = settings.resync_seconds
        return out
    attempt = t.attempts + 1
    name = job_name_for(t.meta["name"], attempt)
    out.create_job = attempt
    # The dispatch mode's own words (a Job created, a hand-out to the warm pool), as data.
    reason, said, doing = obs.words.fill(name, attempt)
    t.set_status(
        phase="Running",
        attempts=attempt,
        jobName=name,
        workerPod=None,
        queuePosition=None,
        startedAt=stamp(t.now),
        retryAfter=None,
        message=f"attempt {attempt}: {doing}",
    )
    # The Scheduled condition tells it; an Event would repeat it (a write per edit).
    t.conditions(_condition("Scheduled", True, reason, said, t.now))
    out.requeue_after = settings.resync_seconds
    return out


# -- an attempt is in flight -----------------------------------------------------------------
def _in_flight(t: _Turn) -> Decision:
    attempt = t.obs.attempt or gone(t.job_name or "")
    if attempt.result is not None and attempt.result.attempt == t.attempts:
        return _from_result(t, attempt.result)
    if attempt.ended is not None:
        return _attempt_failed(t, attempt.ended)
    return _running(t, attempt)


def _running(t: _Turn, attempt: AttemptState) -> Decision:
    """Running, or waiting for a GPU (or a worker), or a worker that cannot start."""
    spec, settings, status, out = t.spec, t.settings, t.status, t.out
    if attempt.unschedulable is not None:
        pending = attempt.unschedulable
        limit = int(spec.get("pendingTimeoutSeconds") or settings.pending_timeout_seconds)
        waited = (t.now - (attempt.waiting_since or t.now)).total_seconds()
        if waited >= limit:
            return _attempt_failed(
                t,
                ErrorInfo("no_gpu", f"no GPU node available after {limit}s ({pending})", True),
                delete=True,
            )
        message = f"attempt {t.attempts}: waiting for a GPU node: {pending}"
        if status.get("phase") != "Queued" or status.get("message") != message:
            t.set_status(phase="Queued", message=message)
            t.conditions(_condition("Scheduled", False, "NoGPUAvailable", pending, t.now))
        out.requeue_after = min(settings.resync_seconds, limit - waited)
        return out
    if attempt.stuck is not None:
        reason, detail = attempt.stuck
        waited = (t.now - (attempt.stuck_since or t.now)).total_seconds()
        if waited >= settings.stuck_pod_seconds:
            text = f"the worker Pod cannot start: {reason}" + (f": {detail}" if detail else "")
            return _attempt_failed(t, ErrorInfo("pod_stuck", text[:1000], True), delete=True)
        out.requeue_after = max(1.0, settings.stuck_pod_seconds - waited)
        message = f"attempt {t.attempts}: the worker Pod is waiting: {reason}"
        if status.get("message") != message:
            t.set_status(phase="Running", message=message)
        return out
    message = f"attempt {t.attempts}: {attempt.running_message}"
    if attempt.worker and (
        t.phase != "Running"
        or status.get("message") != message
        or status.get("workerPod") != attempt.worker
    ):
        t.set_status(phase="Running", message=message, workerPod=attempt.worker)
        where = f"running on {attempt.node}"
        t.conditions(_condition("Scheduled", True, "PodRunning", where, t.now))
    out.requeue_after = settings.resync_seconds
    return out


def _from_result(t: _Turn, result: WorkerResult) -> Decision:
    if result.worker:
        t.set_status(workerPod=result.worker)
    if result.log:  # warm mode: no Pod of this attempt keeps its log (operator/desk.py)
        t.set_status(workerLog={"attempt": result.attempt, "lines": list(result.log)})
    if result.status == "success":
        return _succeeded(t, result)
    error = result.error or ErrorInfo("worker_failed", "the worker failed without details", True)
    return _attempt_failed(t, error)


def _attempt_failed(t: _Turn, error: ErrorInfo, *, delete: bool = False) -> Decision:
    settings, spec, status, attempts, out = t.settings, t.spec, t.status, t.attempts, t.out
    if delete:
        out.delete_job = t.job_name
    # Each failed attempt's own worker, code and message stay (the desk shows every
    # attempt); the later fields of status only ever tell the last one.
    failed = {
        "attempt": attempts,
        # workerPod is in status only when a write carried it (running is shown through
        # progress events, not a status write per edit): the Pod seen now is the next best.
        "worker": status.get("workerPod") or (t.obs.attempt.worker if t.obs.attempt else None),
        "errorCode": error.code,
        "message": error.message[:500],
    }
    history = [a for a in status.get("failedAttempts") or [] if a.get("attempt") != attempts]
    t.set_status(failedAttempts=[*history, failed][-MAX_FAILED_ATTEMPTS:])
    spent = t.gpu_seconds_so_far(error)
    if error.code == POISON_EDIT_CODE:
        # Every worker that took it died: running it again would only take down more.
        message = f"{error.message}; a designer will take over"
        return t.finish("NeedsReview", message, error=error, gpuSeconds=spent)
    if not error.retriable:
        return t.finish("Failed", error.message, error=error, gpuSeconds=spent)
    limit = max_attempts(settings, spec)
    if attempts >= limit:
        message = f"{error.message} (after {attempts} attempts; a designer will take over)"
        return t.finish("NeedsReview", message, error=error, gpuSeconds=spent)
    wait = backoff(settings, spec, attempts)
    message = f"attempt {attempts} failed: {error.message}; retrying in {wait:.0f}s"
    t.set_status(
        phase="Queued",
        jobName=None,
        retryAfter=stamp(t.now + timedelta(seconds=wait)),
        message=message,
        errorCode=error.code,
        gpuSeconds=spent,
    )
    out.events.append(("Warning", "AttemptFailed", message))
    out.requeue_after = wait
    return out


def _succeeded(t: _Turn, result: WorkerResult) -> Decision:
    settings, meta, spec = t.settings, t.meta, t.spec
    cost = result.cost.total or None
    quality = result.quality
    flagged = quality is not None and quality.verdict != "ok"
    recorded: dict[str, Any] = {
        "resultKey": result.result_key,
        "resultUrl": result.result_url,
        "costSeconds": round(cost, 3) if cost else None,
        "gpuSeconds": t.gpu_seconds_so_far(),
        "quality": quality_status(quality),
        # Advisory mode steers the quality sampling: every flagged edit is sampled.
        "sampledForReview": flagged
        or is_sampled(meta.get("uid", meta["name"]), settings.sample_rate),
        "variants": [
            {
                "index": v.index,
                "seed": v.seed,
                "resultKey": v.result_key,
                "resultUrl": v.result_url,
                **({"verdict": v.quality.verdict} if v.quality else {}),
            }
            for v in result.variants
        ]
        or None,
    }
    if flagged and settings.gate_mode == "enforce":
        assert quality is not None
        error = ErrorInfo(
            f"quality_{quality.verdict}",
            f"the quality gate flagged the result: {quality.reason}; a designer will check it",
            False,
        )
        return t.finish("NeedsReview", error.message, error=error, **recorded)
    edited = f"edited in {cost:.1f}s" if cost else "edited"
    if spec.get("preview"):
        edited = "approximate preview (Turbo, 8 steps, reduced size) " + edited
    if flagged:
        assert quality is not None
        edited += f"; quality gate (advisory): {quality.verdict}"
    return t.finish("Succeeded", edited, **recorded)
