"""The CloudEvents 1.0 that cross the bus, as pydantic models: one schema for producer and consumer.

Four event types, each versioned in its ``type`` name (a breaking change is a
new type, e.g. ``…approval.v2``, consumed side by side with ``v1``; unknown
types are rejected, never guessed at)::

    io.editflow.approval.v1     OA -> editflow   an approved image-edit request
    io.editflow.withdraw.v1     OA -> editflow   the OA side revoked that approval
    io.editflow.select.v1       OA -> editflow   the applicant picked one of the variants
    io.editflow.completion.v1   editflow -> OA   the outcome: success|failed|needs_review|cancelled
    io.editflow.selection.v1    editflow -> OA   the recorded choice, wherever it was made
    io.editflow.progress.v1     editflow -> OA   queued (with its place) / running; best effort
    io.editflow.review.v1       editflow -> designers   a failed edit needs a person
    io.editflow.review.action.v1  desk -> editflow     a reviewer acted on a ticket (docs/desk.md)

The CloudEvent ``id`` is the idempotency key end to end: it is the
``Nats-Msg-Id`` JetStream deduplicates on, the operator derives the EditJob
name from it, and the completion event carries it back as
``data.approval_event_id``. The completion event's own ``id`` is derived from
the EditJob's identity and the outcome (:func:`completion_event_id`), so
publishing it again after a crash yields the same id and is dropped as a
duplicate.

Extension attributes (``[a-z0-9]{1,20}`` names, as the spec requires) are
kept; ``signature`` is ours (see :mod:`editflow.events.signing`).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

SPECVERSION = "1.0"
DATACONTENTTYPE = "application/json"

APPROVAL_V1 = "io.editflow.approval.v1"
WITHDRAW_V1 = "io.editflow.withdraw.v1"
COMPLETION_V1 = "io.editflow.completion.v1"
REVIEW_V1 = "io.editflow.review.v1"
SELECT_V1 = "io.editflow.select.v1"
SELECTION_V1 = "io.editflow.selection.v1"
PROGRESS_V1 = "io.editflow.progress.v1"
REVIEW_ACTION_V1 = "io.editflow.review.action.v1"

#: Longest instruction accepted (characters). The text encoder's budget is in
#: tokens; this bound keeps a pasted document out of the GPU queue up front.
MAX_INSTRUCTION_CHARS = 2000

#: Image URL schemes: ``s3://bucket/key`` for objects already in S3, http(s) otherwise.
IMAGE_URL_SCHEMES = frozenset({"http", "https", "s3"})

_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NATS_SUBJECT = re.compile(r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$")

#: Namespace of the uuid5 ids this package derives (stable forever: ids are keys).
ID_NAMESPACE = uuid.UUID("7d1b1b6e-2f0c-5c55-9a8e-6564697466c6")


def _no_control_chars(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def _image_url(value: str) -> str:
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in IMAGE_URL_SCHEMES:
        raise ValueError(
            f"URL scheme {parts.scheme or '(none)'!r} is not allowed; expected one of "
            + ", ".join(sorted(IMAGE_URL_SCHEMES))
        )
    if not parts.netloc:
        raise ValueError("URL must name a host (or, for s3://, a bucket)")
    if scheme == "s3" and not parts.path.strip("/"):
        raise ValueError("s3:// URL must name an object key after the bucket")
    return value


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise ValueError("callback webhook must be an https:// URL with a host")
    return value


def _nats_subject(value: str) -> str:
    if not _NATS_SUBJECT.match(value):
        raise ValueError("must be a NATS subject without wildcards, e.g. oa.callbacks.done")
    # NATS' own namespaces are never a callback, whatever the installation allows; the
    # configured prefix is checked on receipt (editflow.events.callback_subjects).
    if value.startswith(("$", "_INBOX.")):
        raise ValueError("must not be a NATS system subject ($JS., $SYS., $KV., _INBOX. ...)")
    return value


Id = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, strip_whitespace=False),
    AfterValidator(_no_control_chars),
    AfterValidator(_not_blank),
]
Text = Annotated[str, StringConstraints(max_length=256), AfterValidator(_no_control_chars)]
Slug = Annotated[str, StringConstraints(pattern=_SLUG)]
ImageUrl = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_image_url)]
Instruction = Annotated[
    str, StringConstraints(max_length=MAX_INSTRUCTION_CHARS), AfterValidator(_not_blank)
]
EditStatus = Literal["success", "failed", "needs_review", "cancelled"]
Priority = Literal["low", "normal", "high"]


class _Data(BaseModel):
    """Event payloads reject unknown fields: a typo must not silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Person(_Data):
    """Someone on the OA side: the applicant or an approver."""

    id: Id = Field(description="the OA user id")
    name: Text | None = Field(None, description="display name, for audit logs and tickets")
    email: Text | None = None


class Template(_Data):
    """A prompt template from the catalogue and the values the OA form filled in."""

    id: Slug
    params: dict[Slug, Annotated[str, StringConstraints(max_length=500)]] = Field(
        default_factory=dict, max_length=20
    )


class Callback(_Data):
    """Where, besides the completions stream, the outcome is delivered: exactly one of the two."""

    nats_subject: (
        Annotated[str, StringConstraints(max_length=256), AfterValidator(_nats_subject)] | None
    ) = None
    webhook_url: (
        Annotated[str, StringConstraints(max_length=2048), AfterValidator(_https_url)] | None
    ) = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Callback:
        if (self.nats_subject is None) == (self.webhook_url is None):
            raise ValueError("set exactly one of nats_subject or webhook_url")
        return self


class Generation(_Data):
    """Generation parameters; ``None`` means the model's own default."""

    steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0, le=30)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)


class ErrorDetail(_Data):
    """The wire form of :class:`editflow.core.errors.ErrorInfo`."""

    code: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    message: Annotated[str, StringConstraints(max_length=4000)]
    retriable: bool
    field: str | None = None

    @classmethod
    def from_info(cls, info: Any) -> ErrorDetail:
        """From an ``ErrorInfo`` (or anything with its four attributes)."""
        return cls(code=info.code, message=info.message, retriable=info.retriable, field=info.field)


class EditJobRef(_Data):
    """Which EditJob produced an outcome (its identity, not its spec)."""

    namespace: Id
    name: Id
    uid: Id


class ApprovalData(_Data):
    """An approved image-edit request (brief §3)."""

    form_id: Id = Field(description="the OA form id")
    approval_id: Id = Field(description="the approval instance id")
    applicant: Person
    approvers: list[Person] = Field(default_factory=list, max_length=20)
    image_url: ImageUrl | None = Field(None, description="http(s):// or s3://bucket/key")
    image_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        None, description="object key in the platform bucket (instead of image_url)"
    )
    instruction: Instruction = Field(description="one concrete edit instruction (zh or en)")
    usage: Slug = Field("default", description="output profile, e.g. wechat-article")
    template: Template | None = None
    priority: Priority = "normal"
    callback: Callback | None = None
    model: Slug | None = Field(None, description="model registry name; default model if unset")
    generation: Generation | None = None
    department: Id | None = Field(
        None, description="the applicant's department: GPU cost is attributed to it"
    )
    cost_center: Id | None = Field(None, description="the cost centre the edit is charged to")
    variants: int = Field(
        1,
        ge=1,
        le=4,
        description="results to produce from one pipeline call (1..4); the applicant picks one",
    )
    stage: Literal["final", "preview"] = Field(
        "final",
        description="final: the edit itself (after the last approval); preview: an approximate "
        "edit for the next approver (Turbo model, 8 steps, reduced size), published as a "
        "preview completion",
    )

    @model_validator(mode="after")
    def _one_image(self) -> ApprovalData:
        if (self.image_url is None) == (self.image_key is None):
            raise ValueError("set exactly one of image_url or image_key")
        return self


class WithdrawData(_Data):
    """The OA side revoked an approval: cancel its edit (same ids as the approval)."""

    form_id: Id
    approval_id: Id
    approval_event_id: Id | None = Field(
        None, description="the approval event to cancel; all edits of the approval if unset"
    )
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None
    withdrawn_by: Person | None = None


class QualityGate(_Data):
    """What the automatic quality gate saw in the result (advisory unless enforced)."""

    verdict: Literal["ok", "no_visible_change", "global_change"]
    kind: str = Field(description="kind of edit whose thresholds applied: subtle, local, global")
    changed_fraction: float = Field(ge=0, le=1, description="share of the image that changed")
    ssim: float = Field(ge=-1, le=1, description="global structural similarity")
    spread: float = Field(ge=0, le=1, description="0: the change is in one place; 1: everywhere")
    reason: str = ""


class VariantRef(_Data):
    """One of several results of an edit (``variants`` > 1 in the approval)."""

    index: int = Field(ge=1, le=4)
    seed: int | None = Field(None, ge=0)
    result_url: str | None = None
    result_key: str | None = None
    quality: Literal["ok", "no_visible_change", "global_change"] | None = None


class CompletionData(_Data):
    """The outcome of one approval's edit (brief §3)."""

    approval_event_id: Id = Field(description="the id of the approval event (idempotency key)")
    form_id: Id
    approval_id: Id
    status: EditStatus
    result_url: str | None = Field(None, description="presigned URL of the result image")
    result_url_expires_at: datetime | None = None
    result_key: str | None = Field(None, description="object key of the result in the bucket")
    cost_seconds: float | None = Field(None, ge=0)
    attempts: int = Field(0, ge=0)
    error: ErrorDetail | None = None
    message: Annotated[str, StringConstraints(max_length=4000)] | None = None
    editjob: EditJobRef | None = None
    quality: QualityGate | None = Field(
        None, description="the automatic quality gate's verdict on the result, when it ran"
    )
    stage: Literal["final", "preview"] = Field(
        "final", description="preview: the approximate edit an approval stage asked for"
    )
    approximate: bool = Field(
        False,
        description="true for a preview: a Turbo 8-step edit at a reduced size does not "
        "reproduce the full edit, even with its seed",
    )
    variants: list[VariantRef] = Field(
        default_factory=list,
        max_length=4,
        description="every result when the approval asked for more than one (variant 1 is "
        "result_url); the applicant's choice follows as a selection event",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CompletionData:
        if self.status == "success" and not (self.result_url or self.result_key):
            raise ValueError("a success carries result_url or result_key")
        if self.status in ("failed", "needs_review") and self.error is None:
            raise ValueError(f"status {self.status} carries an error")
        return self


class SelectData(_Data):
    """The applicant picked one of an edit's variants (on the try-it page, or in the OA form)."""

    form_id: Id
    approval_id: Id
    approval_event_id: Id = Field(description="the approval event whose edit it is")
    variant: int = Field(ge=1, le=4, description="the chosen variant, 1-based")
    selected_by: Person | None = None


class SelectionData(_Data):
    """The choice as editflow recorded it: the OA form learns which result counts."""

    approval_event_id: Id
    form_id: Id
    approval_id: Id
    variant: int = Field(ge=1, le=4)
    result_url: str | None = None
    result_key: str | None = None
    seed: int | None = None
    selected_by: Id | None = None
    selected_at: datetime
    editjob: EditJobRef | None = None


class ProgressData(_Data):
    """Where an edit is before its outcome: queued (with its place) or running.

    Best effort and rate-limited (a phase change at once, a new queue position at most every
    few seconds): the completion is the contract, progress is for the people waiting.
    """

    approval_event_id: Id
    form_id: Id
    approval_id: Id
    phase: Literal["queued", "running"]
    queue_position: int | None = Field(None, ge=1, description="1: the next to start")
    attempt: int = Field(0, ge=0)
    worker: str | None = Field(None, description="the worker Pod running it")
    message: Annotated[str, StringConstraints(max_length=4000)] | None = None
    editjob: EditJobRef | None = None


class ReviewData(_Data):
    """A designer must take over: the model or infrastructure failed after all retries."""

    approval_event_id: Id
    form_id: Id
    approval_id: Id
    applicant: Person | None = None
    image_url: str | None = None
    image_key: str | None = None
    instruction: str
    attempts: int = Field(ge=0)
    error: ErrorDetail
    editjob: EditJobRef | None = None


class Reviewer(_Data):
    """A desk reviewer, as the gateway identified them (never as the page claimed)."""

    id: Id
    name: Text | None = None


class ReviewActionData(_Data):
    """What a reviewer did on the desk (docs/desk.md, "Actions"): one field set per action.

    The schema checks each action carries its own field and no other's, so the operator
    only has to check the action against the EditJob's current state.
    """

    action: Literal["upload", "rerun", "send_back", "verdict"]
    namespace: Id
    editjob: Id
    reviewer: Reviewer
    result_key: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = Field(
        None, description="upload: results/<ns>/<editjob>/review-<action id>/<file>"
    )
    instruction: Instruction | None = Field(None, description="rerun: the corrected instruction")
    message: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = Field(
        None, description="send_back: what the applicant should change"
    )
    verdict: Literal["good", "poor"] | None = None
    better_instruction: Instruction | None = Field(
        None, description="verdict: an optional better instruction for the template owners"
    )

    @model_validator(mode="after")
    def _fields_of_the_action(self) -> ReviewActionData:
        own = {
            "upload": {"result_key"},
            "rerun": {"instruction"},
            "send_back": {"message"},
            "verdict": {"verdict", "better_instruction"},
        }
        required = {"upload": "result_key", "rerun": "instruction", "send_back": "message"}
        required["verdict"] = "verdict"
        if getattr(self, required[self.action]) is None:
            raise ValueError(f"action {self.action} needs data.{required[self.action]}")
        optional = {"result_key", "instruction", "message", "verdict", "better_instruction"}
        stray = sorted(f for f in optional - own[self.action] if getattr(self, f) is not None)
        if stray:
            raise ValueError(f"action {self.action} takes no {', '.join(stray)}")
        return self


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 envelope shared by every editflow event.

    Required attributes follow the spec (``id``, ``source``, ``specversion``,
    ``type``); ``time`` defaults to now; ``datacontenttype`` is always JSON.
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    event_type: ClassVar[str]

    specversion: Literal["1.0"] = SPECVERSION
    id: Id = Field(default_factory=lambda: str(uuid.uuid4()))
    source: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="URI-reference of the producer, e.g. /oa/forms or https://oa.example.com"
    )
    type: str
    subject: Text | None = None
    time: datetime = Field(default_factory=_utcnow)
    datacontenttype: str = Field(
        DATACONTENTTYPE,
        description="application/json, optionally with charset=utf-8",
        json_schema_extra={"pattern": r"^application/json\s*(;.*)?$"},
    )
    dataschema: str | None = None
    signature: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="extension: 'v1=<hex HMAC-SHA256>' (see editflow.events.signing)"
    )
    data: Any

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        expected = getattr(cls, "event_type", None)
        if expected is not None and value != expected:
            raise ValueError(f"expected {expected!r}")
        return value

    @field_validator("datacontenttype")
    @classmethod
    def _json_data(cls, value: str) -> str:
        media, _, params = value.partition(";")
        if media.strip().lower() != DATACONTENTTYPE:
            raise ValueError(f"{value!r}: data must be {DATACONTENTTYPE}")
        charset = params.partition("charset=")[2].strip().strip('"').lower()
        if charset and charset not in ("utf-8", "utf8"):
            raise ValueError(f"{value!r}: data must be UTF-8")
        return value

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a timezone (RFC 3339), e.g. 2026-01-01T08:00:00Z")
        return value

    @model_validator(mode="after")
    def _extensions(self) -> CloudEvent:
        for name, value in (self.model_extra or {}).items():
            if not _EXTENSION_NAME.match(name):
                raise ValueError(
                    f"extension attribute {name!r}: names are 1-20 lowercase letters or digits"
                )
            if isinstance(value, dict | list):
                raise ValueError(f"extension attribute {name!r} must be a scalar")
        return self

    def attributes(self) -> dict[str, Any]:
        """Context attributes (all but ``data``), ``time`` as RFC 3339 with ``Z``, no Nones."""
        attrs = self.model_dump(mode="json", exclude={"data"}, exclude_none=True)
        attrs["time"] = format_time(self.time)
        return attrs

    def data_json(self) -> Any:
        """``data`` as plain JSON values."""
        return self.model_dump(mode="json", include={"data"}, exclude_none=True)["data"]


class ApprovalEvent(CloudEvent):
    event_type: ClassVar[str] = APPROVAL_V1
    type: str = APPROVAL_V1
    data: ApprovalData


class WithdrawEvent(CloudEvent):
    event_type: ClassVar[str] = WITHDRAW_V1
    type: str = WITHDRAW_V1
    data: WithdrawData


class CompletionEvent(CloudEvent):
    event_type: ClassVar[str] = COMPLETION_V1
    type: str = COMPLETION_V1
    data: CompletionData


class ReviewEvent(CloudEvent):
    event_type: ClassVar[str] = REVIEW_V1
    type: str = REVIEW_V1
    data: ReviewData


class SelectEvent(CloudEvent):
    event_type: ClassVar[str] = SELECT_V1
    type: str = SELECT_V1
    data: SelectData


class ProgressEvent(CloudEvent):
    event_type: ClassVar[str] = PROGRESS_V1
    type: str = PROGRESS_V1
    data: ProgressData


class ReviewActionEvent(CloudEvent):
    event_type: ClassVar[str] = REVIEW_ACTION_V1
    type: str = REVIEW_ACTION_V1
    data: ReviewActionData


class SelectionEvent(CloudEvent):
    event_type: ClassVar[str] = SELECTION_V1
    type: str = SELECTION_V1
    data: SelectionData


Event = (
    ApprovalEvent
    | WithdrawEvent
    | SelectEvent
    | CompletionEvent
    | SelectionEvent
    | ReviewEvent
    | ReviewActionEvent
)

#: Every supported ``type`` and its model; anything else is rejected as unknown.
EVENT_TYPES: dict[str, type[CloudEvent]] = {
    cls.event_type: cls
    for cls in (
        ApprovalEvent,
        WithdrawEvent,
        SelectEvent,
        CompletionEvent,
        SelectionEvent,
        ProgressEvent,
        ReviewEvent,
        ReviewActionEvent,
    )
}

#: Types the OA side produces (and that a signing key, when configured, must sign).
OA_EVENT_TYPES = frozenset({APPROVAL_V1, WITHDRAW_V1, SELECT_V1})


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, the form every producer here emits."""
    text = value.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def approval_event_id(source: str, form_id: str, approval_id: str) -> str:
    """The default approval event id: one per (OA source, form, approval instance).

    Deterministic, so an OA system that retries a publish (or a process that
    restarts mid-hook) reuses the id and the edit runs once.
    """
    return str(uuid.uuid5(ID_NAMESPACE, f"approval\0{source}\0{form_id}\0{approval_id}"))


def preview_event_id(source: str, form_id: str, approval_id: str) -> str:
    """The default id of a preview approval: its own, so the final approval (whose default
    id :func:`approval_event_id` derives from the same ids) is not dropped as its duplicate."""
    return str(uuid.uuid5(ID_NAMESPACE, f"preview\0{source}\0{form_id}\0{approval_id}"))


def completion_event_id(*, namespace: str, name: str, uid: str, status: EditStatus) -> str:
    """The completion event's id, derived from the EditJob's identity and its outcome.

    Same EditJob and outcome -> same id, so a republish after a crash between
    "published" and "recorded in status" is a JetStream duplicate; a later,
    different outcome (a designer resolves ``needs_review`` to ``success``)
    gets its own id.
    """
    return str(uuid.uuid5(ID_NAMESPACE, f"completion\0{namespace}\0{name}\0{uid}\0{status}"))


def subject_token(event_id: str) -> str:
    """A NATS-subject-safe token for an event id (ids may contain dots or spaces)."""
    return hashlib.sha256(event_id.encode("utf-8")).hexdigest()[:40]


def selection_event_id(approval_event_id: str, variant: int) -> str:
    """The selection event's id: one per (approval, variant), so a redelivery is a duplicate."""
    return str(uuid.uuid5(ID_NAMESPACE, f"selection\0{approval_event_id}\0{variant}"))
