"""The HTTP API's request and response bodies (they are the OpenAPI document's schemas).

Field rules reuse the approval event's types (:mod:`editflow.events.models`),
so a request the gateway accepts is an event the operator accepts.
Requests of the versioned API reject unknown fields (a typo must not
silently become a default); the legacy ``POST /edit`` ignores them, as the
first deployment did.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from editflow.events.models import MAX_INSTRUCTION_CHARS, Generation, Priority
from editflow.events.worker_contract import MODEL_NAMES as MODELS

SlugStr = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
UrlStr = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
_IMAGE_URL = re.compile(r"^(https?|s3)://[^/?#\s]+")
_HTTPS_URL = re.compile(r"^https://[^/?#\s]+")


def _image_url(value: str) -> str:
    # Lowercase schemes only: the EditJob schema (and so the operator) accepts nothing else.
    if not _IMAGE_URL.match(value):
        raise ValueError("must be an http://, https:// or s3:// URL with a host (lowercase scheme)")
    return value


def _https_url(value: str) -> str:
    if not _HTTPS_URL.match(value):
        raise ValueError("must be an https:// URL with a host (lowercase scheme)")
    return value


ImageUrlStr = Annotated[
    str,
    StringConstraints(max_length=4096),
    AfterValidator(_image_url),
    WithJsonSchema({"type": "string", "maxLength": 4096, "pattern": _IMAGE_URL.pattern}),
]
HttpsUrlStr = Annotated[
    str,
    StringConstraints(max_length=2048),
    AfterValidator(_https_url),
    WithJsonSchema({"type": "string", "maxLength": 2048, "pattern": _HTTPS_URL.pattern}),
]
#: The models the EditJob schema accepts (one list, defined by the operator's CRD).
ModelName = Literal[MODELS]  # type: ignore[valid-type]
PromptStr = Annotated[str, StringConstraints(max_length=MAX_INSTRUCTION_CHARS)]
RefStr = Annotated[str, StringConstraints(min_length=1, max_length=256)]
#: ``rejected``: the approval event was dead-lettered (it never became an EditJob).
Status = Literal["pending", "rejected", "success", "failed", "needs_review", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateChoice(_Strict):
    """A catalogue template and its values; rendered into the prompt when ``prompt`` is unset."""

    id: SlugStr = Field(description="template id from GET /v1/templates", examples=["add-text"])
    params: dict[SlugStr, Annotated[str, StringConstraints(max_length=500)]] = Field(
        default_factory=dict, max_length=20, examples=[{"text": "夏日特惠", "colour": "白色"}]
    )
    lang: Literal["zh", "en"] = Field("zh", description="language the prompt is rendered in")


# What the field types cannot say: exactly one image source, and a prompt or a template.
_EDIT_RULES: dict[str, Any] = {
    "allOf": [
        {
            "oneOf": [
                {
                    "required": ["image_url"],
                    "properties": {"image_url": {"type": "string"}, "image_key": {"type": "null"}},
                },
                {
                    "required": ["image_key"],
                    "properties": {"image_key": {"type": "string"}, "image_url": {"type": "null"}},
                },
            ]
        },
        {
            "anyOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {"required": ["template"], "properties": {"template": {"type": "object"}}},
            ]
        },
    ]
}


class EditRequest(_Strict):
    """``POST /v1/edits``: one image, one instruction (or a template), and options."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_EDIT_RULES)

    image_url: ImageUrlStr | None = Field(
        None,
        description="http(s) URL of the source image (or s3://<bucket>/<upload prefix>/...)",
        examples=["https://oa.example.com/f/1.png"],
    )
    image_key: RefStr | None = Field(
        None, description="key returned by POST /v1/uploads (instead of image_url)"
    )
    prompt: PromptStr | None = Field(
        None,
        description="one concrete edit instruction (zh or en)",
        examples=["把背景换成海边日落"],
    )
    template: TemplateChoice | None = None
    usage: SlugStr = Field("default", description="output profile, see GET /v1/usages")
    model: ModelName | None = Field(None, description="model registry name; default if unset")
    parameters: Generation | None = Field(None, description="steps, guidance_scale, seed")
    priority: Priority = "normal"
    callback_url: HttpsUrlStr | None = Field(
        None, description="https webhook that receives the completion event"
    )
    callback_subject: RefStr | None = Field(
        None, description="NATS subject that receives the completion event"
    )
    form_id: RefStr | None = Field(None, description="OA form id (generated if unset)")
    approval_id: RefStr | None = Field(None, description="OA approval instance id")
    applicant: RefStr | None = Field(None, description="OA user id of the applicant")
    department: RefStr | None = Field(
        None, description="the applicant's department: GPU cost is attributed to it"
    )
    cost_center: RefStr | None = Field(None, description="the cost centre the edit is charged to")
    variants: int = Field(
        1, ge=1, le=4, description="results from one pipeline call (1..4); pick one with /select"
    )
    preview: bool = Field(
        False,
        description="an approver's approximate preview (Turbo, 8 steps, reduced size) instead "
        "of the edit itself",
    )


class SelectRequest(_Strict):
    """``POST /v1/edits/{id}/select``: the applicant's pick among the edit's variants."""

    variant: int = Field(ge=1, le=4, description="the chosen variant, 1-based")
    selected_by: RefStr | None = Field(None, description="OA user id of who picked it")


class VariantView(BaseModel):
    index: int
    seed: int | None = None
    result_url: str | None = None
    result_key: str | None = None
    quality: str | None = Field(None, description="the quality gate's verdict on this variant")


class LegacyEditRequest(BaseModel):
    """``POST /edit``: the first deployment's request, plus the options a caller expects.

    ``model``, ``steps``, ``guidance``, ``seed`` and ``usage`` are validated like
    the versioned API's (a bad one is a 422 naming it, never a silent default
    that spends a GPU run); any other field is ignored, as the first
    deployment did, and named in one log line per request
    (:attr:`ignored_fields`).
    """

    model_config = ConfigDict(extra="ignore")

    image_url: ImageUrlStr = Field(examples=["https://oa.example.com/f/1.png"])
    prompt: PromptStr = Field(examples=["把背景换成海边日落"])
    model: ModelName | None = Field(None, description="model registry name; default if unset")
    steps: int | None = Field(None, ge=1, le=200, description="denoising steps")
    guidance: float | None = Field(
        None, ge=0, le=30, allow_inf_nan=False, description="guidance scale (finite)"
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    usage: SlugStr = Field("default", description="output profile, see GET /v1/usages")

    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _note_ignored(cls, data: Any, handler: Any) -> LegacyEditRequest:
        model = handler(data)
        if isinstance(data, dict):
            model._ignored = tuple(sorted(str(k) for k in data if k not in cls.model_fields))
        return model  # type: ignore[no-any-return]

    @property
    def ignored_fields(self) -> tuple[str, ...]:
        """Fields the caller sent that editflow has no use for (ignored, for compatibility)."""
        return self._ignored

    def parameters(self) -> Generation | None:
        """``steps``/``guidance``/``seed`` as the approval event's generation parameters."""
        if self.steps is None and self.guidance is None and self.seed is None:
            return None
        return Generation(steps=self.steps, guidance_scale=self.guidance, seed=self.seed)


class LegacyEditResponse(BaseModel):
    """``POST /edit``'s answer, as in the first deployment (plus the edit ``id``)."""

    result_url: str | None = None
    cost_time: float | None = Field(None, description="seconds the edit took")
    status: Literal["success", "failed"]
    error: str | None = None
    id: str = Field(description="the edit id: GET /v1/edits/{id} reports it later")


class ErrorBody(BaseModel):
    code: str
    message: str
    retriable: bool
    field: str | None = None


class EditLinks(BaseModel):
    self: str
    result: str


class EditView(BaseModel):
    """An edit as the API reports it: ``pending`` until the completion event arrives."""

    id: str
    status: Status
    created_at: datetime | None = None
    finished_at: datetime | None = None
    prompt: str | None = None
    usage: str | None = None
    model: str | None = None
    template_id: str | None = None
    source_url: str | None = Field(None, description="the source image (presigned if uploaded)")
    result_url: str | None = Field(None, description="presigned URL of the result image")
    result_url_expires_at: datetime | None = None
    result_key: str | None = None
    cost_seconds: float | None = None
    attempts: int | None = None
    error: ErrorBody | None = None
    message: str | None = None
    variants: list[VariantView] = Field(
        default_factory=list, description="every result when more than one was asked for"
    )
    selected_variant: int | None = Field(None, description="the variant the applicant picked")
    stage: str = Field("final", description="preview: an approver's approximate preview")
    approximate: bool = False
    phase: Literal["queued", "running"] | None = Field(
        None, description="while pending: queued (see queue_position) or running on a GPU"
    )
    queue_position: int | None = Field(None, description="while queued: 1 = the next to start")
    worker: str | None = Field(None, description="while running: the worker Pod")
    quality: str | None = Field(
        None, description="the quality gate's verdict: ok, no_visible_change or global_change"
    )
    links: EditLinks


class ResultView(BaseModel):
    id: str
    result_url: str
    result_url_expires_at: datetime
    result_key: str


class UploadView(BaseModel):
    image_key: str = Field(description="pass as image_key to POST /v1/edits")
    size: int
    content_type: str
    sha256: str


class TemplateParamView(BaseModel):
    name: str
    label: dict[str, str]
    example: dict[str, str]
    quoted: bool


class TemplateView(BaseModel):
    id: str
    title: dict[str, str] = Field(description="by language: zh, en")
    text: dict[str, str] = Field(description="the instruction with {param} placeholders")
    params: list[TemplateParamView]


class UsageView(BaseModel):
    id: str
    label: dict[str, str]


class InfoView(BaseModel):
    version: str
    auth: Literal["bearer", "none"]
    max_json_bytes: int
    max_upload_bytes: int
    rate_limit_per_minute: int
    wait_timeout_seconds: float


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
