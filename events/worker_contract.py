"""The contract between the operator and the GPU worker, in one place.

The operator starts each attempt's Job with exactly one argument list::

    editflow worker run --request '<WorkerRequest JSON>'

and reads back one :class:`WorkerResult` JSON document, which the worker
writes (1) to stdout as its last line, (2) to its termination message
(``/dev/termination-log`` or ``--termination-log``), and (3) to S3 at
:func:`result_json_key`, next to the image, so an outcome survives the
deletion of the Job and its Pod. The worker's exit code follows
:class:`editflow.core.errors.ExitCode`: 0 success, 2..69 permanent, 70+
retriable.

Both sides import this module; neither imports the other.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from editflow.core.errors import ErrorInfo
from editflow.events.desk import MAX_LOG_LINE_CHARS, MAX_LOG_LINES

OutputFormat = Literal["png", "jpeg"]

#: The model registry names every component agrees on: the EditJob CRD's enum,
#: the gateway's checks and the worker's registry (the default first).
MODEL_NAMES: tuple[str, ...] = (
    "longcat-image-edit",
    "longcat-image-edit-turbo",
    "qwen-image-edit",
    "flux-kontext",
    "instruct-pix2pix",
)


#: The OA usages with an output profile of their own (editflow.inference.profiles); any other
#: usage gets the default encoding. Metrics label by these, so their values stay bounded.
USAGE_NAMES: tuple[str, ...] = (
    "wechat-article",
    "mini-program",
    "display-board",
    "poster",
    "web-banner",
    "e-commerce",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceRef(_Strict):
    """Exactly one of ``url`` (http/https) or ``s3_key`` (in the platform bucket)."""

    url: str | None = Field(None, max_length=4096)
    s3_key: str | None = Field(None, max_length=1024)

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceRef:
        if (self.url is None) == (self.s3_key is None):
            raise ValueError("source: set exactly one of url or s3_key")
        return self


class GenerationParameters(_Strict):
    """Overrides of the model's defaults; ``None`` means "the model's default"."""

    steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0, le=30)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    negative_prompt: str | None = Field(None, max_length=2000)


class OutputSpec(_Strict):
    """Where the result goes and how it is encoded."""

    key_prefix: str = Field("results", max_length=512)
    format: OutputFormat = "png"
    quality: int = Field(95, ge=50, le=100)


class WorkerRequest(_Strict):
    """Everything one attempt needs; built by the operator from the EditJob spec."""

    edit_id: str = Field(..., min_length=1, max_length=253, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    attempt: int = Field(1, ge=1, le=100)
    source: SourceRef
    prompt: str = Field(..., min_length=1, max_length=2000)
    model: str = "longcat-image-edit"
    parameters: GenerationParameters = GenerationParameters()
    output: OutputSpec = OutputSpec()
    usage: str | None = Field(None, max_length=64)
    event_id: str | None = Field(None, max_length=256)
    #: The prompt template the instruction came from (it tells the quality gate the kind).
    template: str | None = Field(None, max_length=64)
    #: Results from one pipeline call (``num_images_per_prompt``); variant i has seed + i - 1.
    variants: int = Field(1, ge=1, le=4)
    #: An approver's preview: the image is brought to the reduced preview size.
    preview: bool = False
    #: Warm mode: this attempt's STS credentials (its input object, its output prefix),
    #: sealed with the namespace's pool key (editflow.core.sealing). Never logged.
    credentials: str | None = Field(None, max_length=16384, repr=False)
    #: Warm mode without sealing (s3.insecureSharedKey): the attempt's result token in clear.
    result_token: str | None = Field(None, max_length=128, repr=False)


class LoadDetail(BaseModel):
    """Where a model load's seconds went (only in the result of the attempt that loaded it).

    ``read`` is ``from_pretrained``; with ``direct`` the weights went straight onto the
    device from safetensors (diffusers ``device_map``), so ``read`` includes the copy to the
    device and ``to_device`` is only placement that remained (attention backend,
    compilation). Without it ``to_device`` is ``.to(device)`` or the offload hooks.
    """

    imports: float = 0.0
    read: float = 0.0
    to_device: float = 0.0
    direct: bool = False


class CostBreakdown(BaseModel):
    """Seconds spent in each step of the worker's straight line."""

    fetch: float = 0.0
    preprocess: float = 0.0
    load: float = 0.0
    infer: float = 0.0
    #: The quality gate's comparison of the result with the preprocessed input.
    gate: float = 0.0
    upload: float = 0.0
    total: float = 0.0
    #: The split of ``load`` when this attempt loaded the model (cold); absent when warm.
    load_detail: LoadDetail | None = None


QualityVerdict = Literal["ok", "no_visible_change", "global_change"]


class QualityReport(BaseModel):
    """The quality gate's view of a result (``editflow.inference.quality``)."""

    verdict: QualityVerdict
    #: The kind of edit whose thresholds applied: subtle, local or global.
    kind: str
    changed_fraction: float = Field(ge=0, le=1)
    ssim: float = Field(ge=-1, le=1)
    spread: float = Field(ge=0, le=1)
    reason: str = Field("", max_length=300)


class VariantResult(BaseModel):
    """One of several results of one edit (``variants`` > 1); variant 1 is also the main one."""

    index: int = Field(ge=1, le=4)
    seed: int
    result_key: str
    result_url: str | None = None
    width: int | None = None
    height: int | None = None
    quality: QualityReport | None = None


class WorkerResult(BaseModel):
    """What one attempt produced: the image's location, or the error."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["success", "failed"]
    edit_id: str
    attempt: int
    model: str
    seed: int | None = None
    bucket: str | None = None
    result_key: str | None = None
    result_url: str | None = None
    width: int | None = None
    height: int | None = None
    format: OutputFormat | None = None
    cost: CostBreakdown = CostBreakdown()
    error: ErrorInfo | None = None
    quality: QualityReport | None = None
    #: The Pod that ran the attempt (``POD_NAME``; warm mode: one of the pool's workers).
    worker: str | None = None
    #: The accelerations the model ran with (editflow.inference.accel), e.g.
    #: ``["fp8:rowwise", "cache:first_block(threshold=0.05)", "compile:regional"]``; empty:
    #: plain eager at the model's dtype.
    accelerations: list[str] = Field(default_factory=list, max_length=8)
    #: Every result when more than one was asked for (the fields above are variant 1's).
    variants: list[VariantResult] = Field(default_factory=list, max_length=4)
    #: Warm mode: the attempt's result token from its work message (sealed with the
    #: credentials); the operator accepts a result over NATS only with the right one.
    token: str | None = Field(None, max_length=128, repr=False)
    #: Warm mode, a failed attempt: the worker's own log lines of that attempt (the last
    #: MAX_LOG_LINES, each cut at MAX_LOG_LINE_CHARS; editflow.inference.attemptlog). A Job
    #: attempt's lines are its Pod's termination message instead; the desk shows either.
    log: list[Annotated[str, Field(max_length=MAX_LOG_LINE_CHARS)]] = Field(
        default_factory=list, max_length=MAX_LOG_LINES
    )


def attempt_prefix(request: WorkerRequest) -> str:
    """The S3 prefix of one attempt: ``<key_prefix>/<edit_id>/attempt-<n>``."""
    return f"{request.output.key_prefix.strip('/')}/{request.edit_id}/attempt-{request.attempt}"


def result_json_key(key_prefix: str, edit_id: str, attempt: int) -> str:
    """Where the worker writes its :class:`WorkerResult` (the operator reads it back)."""
    return f"{key_prefix.strip('/')}/{edit_id}/attempt-{attempt}/result.json"


#: Termination messages are capped at 4096 bytes by the kubelet.
TERMINATION_MESSAGE_LIMIT = 4096


# -- warm mode: the same request and result over a JetStream work queue --------
#: The work-queue stream warm workers consume (retention: work queue, so each
#: request is delivered to one worker and removed once acknowledged).
WORK_STREAM = "EDITFLOW_WORK"
#: Requests of namespace ``ns`` for model ``m`` are published to
#: ``editflow.work.<ns>.<m>``; each warm worker consumes only the subject of its
#: namespace and of the model it keeps loaded.
WORK_SUBJECT_PREFIX = "editflow.work"
#: Every outcome is also published to ``editflow.worker.results.<ns>.<edit_id>``.
RESULT_SUBJECT_PREFIX = "editflow.worker.results"

# A namespace is a DNS label and a model a registry slug: one NATS subject token each,
# without the underscore that joins them in a consumer name.
_TOKEN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _token(kind: str, value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(
            f"{kind} {value!r} cannot name a work subject: expected lowercase letters, digits "
            "and '-' (a DNS label), up to 63 characters"
        )
    return value


# The namespace is part of every name below: EditJob names are unique only within their
# namespace, so without it two namespaces' ``edit-1`` would share a consumer's subject
# and one attempt would be dropped as the other's duplicate.
def work_subject(namespace: str, model: str) -> str:
    """The subject the operator publishes an attempt of ``namespace``/``model`` to."""
    return f"{WORK_SUBJECT_PREFIX}.{_token('namespace', namespace)}.{_token('model', model)}"


def work_consumer(namespace: str, model: str) -> str:
    """The durable consumer every warm worker of ``namespace``/``model`` shares."""
    return f"worker_{_token('namespace', namespace)}_{_token('model', model)}"


def result_subject(namespace: str, edit_id: str) -> str:
    return f"{RESULT_SUBJECT_PREFIX}.{_token('namespace', namespace)}.{edit_id}"


def work_msg_id(namespace: str, request: WorkerRequest) -> str:
    """``Nats-Msg-Id`` of a request: a republish of the same attempt is dropped as a duplicate."""
    return f"{_token('namespace', namespace)}/{request.edit_id}/attempt-{request.attempt}"


# -- warm mode: how workers tell the operator what they are doing ---------------
#: Every warm worker publishes a :class:`WorkerHeartbeat` (core NATS, not stored) to
#: ``editflow.worker.status.<ns>.<model>`` every :data:`HEARTBEAT_SECONDS` and at once on
#: every change of state. The operator hands out attempts only to idle workers it hears
#: from, shows which Pod runs each attempt, and replaces a worker stuck on one edit.
WORKER_STATUS_PREFIX = "editflow.worker.status"
#: ``editflow.worker.control.<ns>.<pod>``: the operator asks one worker to retire (finish
#: the edit in flight, take no new one, exit 0), e.g. when its configuration is outdated.
WORKER_CONTROL_PREFIX = "editflow.worker.control"
HEARTBEAT_SECONDS = 2.0
#: A worker not heard from for this long is treated as gone.
HEARTBEAT_EXPIRY_SECONDS = 3 * HEARTBEAT_SECONDS + 1.0
#: The error code of an attempt that reached more workers than ``max_deliveries`` allows
#: (each died holding it): it is not run again, and the EditJob ends NeedsReview.
POISON_EDIT_CODE = "poison_edit"
#: The error code of a worker whose model did not load (the heartbeat's ``error``).
MODEL_LOAD_FAILED_CODE = "model_load_failed"

WorkerState = Literal["loading", "idle", "busy", "draining", "stopped", "failed"]


class WorkerHeartbeat(BaseModel):
    """One warm worker's state, as it last said."""

    model_config = ConfigDict(extra="ignore")

    pod: str = Field(..., min_length=1, max_length=253)
    namespace: str
    model: str
    state: WorkerState
    #: The attempt being run (state ``busy`` or ``draining`` with an edit in flight).
    edit_id: str | None = None
    attempt: int | None = None
    #: How often JetStream delivered that attempt's message (1 on the first delivery).
    deliveries: int | None = None
    #: Unix time the current state (for busy: the current edit) began.
    since: float = 0.0
    #: Unix time the worker process started.
    started_at: float = 0.0
    #: The operator's configuration hash the worker's Pod was created with.
    config_hash: str = ""
    handled: int = 0
    #: Why the worker failed (state ``failed``: the model did not load).
    error: str | None = Field(None, max_length=1000)


class WorkerControl(BaseModel):
    """A request to one warm worker: ``retire`` after the edit in flight, or ``cancel`` the
    edit in flight (``edit_id`` and ``attempt`` name it; another edit is left alone)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["retire", "cancel"]
    reason: str = Field("", max_length=300)
    edit_id: str | None = Field(None, max_length=253)
    attempt: int | None = Field(None, ge=1, le=100)


def worker_status_subject(namespace: str, model: str) -> str:
    return f"{WORKER_STATUS_PREFIX}.{_token('namespace', namespace)}.{_token('model', model)}"


def worker_control_subject(namespace: str, pod: str) -> str:
    return f"{WORKER_CONTROL_PREFIX}.{_token('namespace', namespace)}.{pod}"
