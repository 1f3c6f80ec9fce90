"""The gateway's decisions as pure functions: ids, fingerprints, the approval event, the view.

* **Edit id = approval event id.** With an ``Idempotency-Key`` it is a uuid5
  of (client identity, key), so a retried POST — even to a restarted gateway
  or another replica — names the same event: JetStream drops the republish
  (``Nats-Msg-Id``) and the operator's EditJob name is derived from it, so
  one edit runs. With OA ids (``form_id`` + ``approval_id``) and no key it is
  derived from those; otherwise it is random.
* **Fingerprint**: a digest of the request as sent; reusing a key for a
  different request is refused (422) instead of silently returning the
  first edit.
* **Status**: ``pending`` until the completion event exists, then its status.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from editflow.core.errors import InvalidInputError
from editflow.core.settings import Settings
from editflow.events.models import (
    ID_NAMESPACE,
    ApprovalData,
    ApprovalEvent,
    CompletionEvent,
    ProgressEvent,
    SelectionEvent,
    Template,
)
from editflow.gateway import templates
from editflow.gateway.problems import ProblemError, from_pydantic
from editflow.gateway.schemas import EditLinks, EditRequest, EditView, ErrorBody, VariantView


@dataclass(frozen=True)
class Rejection:
    """The approval event of an edit was dead-lettered: it never became an EditJob."""

    reason: str
    message: str
    time: str


GATEWAY_FORM_ID = "gateway"
MAX_IDEMPOTENCY_KEY = 255


def edit_id_for(
    identity: str,
    *,
    idempotency_key: str | None,
    form_id: str | None = None,
    approval_id: str | None = None,
    preview: bool = False,
) -> str:
    """The approval event id of a POST (see the module docstring).

    A preview of a form's approval is an edit of its own: its id differs from the final
    edit's, which the same form and approval ids name later.
    """
    if idempotency_key is not None:
        key = idempotency_key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise InvalidInputError(
                f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
                field="Idempotency-Key",
            )
        return str(uuid.uuid5(ID_NAMESPACE, f"gateway\0{identity}\0key\0{key}"))
    if form_id and approval_id:
        stage = "\0preview" if preview else ""
        return str(
            uuid.uuid5(ID_NAMESPACE, f"gateway\0{identity}\0oa\0{form_id}\0{approval_id}{stage}")
        )
    return str(uuid.uuid4())


def fingerprint(endpoint: str, payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{endpoint}\0{canonical}".encode()).hexdigest()


def instruction_of(request: EditRequest) -> str:
    """The prompt, or the template rendered (the prompt wins when both are given)."""
    if request.prompt is not None:
        if not request.prompt.strip():
            raise InvalidInputError("must not be empty or only whitespace", field="prompt")
        if request.template is not None and request.template.id not in templates.BY_ID:
            raise InvalidInputError(
                f"unknown template {request.template.id!r}; GET /v1/templates lists them",
                field="template.id",
            )
        return request.prompt
    if request.template is None:
        raise InvalidInputError("set prompt, or template with its params", field="prompt")
    return templates.render(request.template.id, request.template.params, request.template.lang)


def upload_root(settings: Settings) -> str:
    """``<upload_prefix>/<namespace>``: uploads belong to the namespace edits run in.

    The operator refuses an ``s3Key`` outside its EditJob's namespace prefix
    (``operator/tenancy.py``), so one tenant cannot name another's image.
    """
    return f"{settings.gateway.upload_prefix.strip('/')}/{settings.namespace}"


def check_source(request: EditRequest, *, upload_prefix: str, bucket: str) -> None:
    """One image source, and from S3 only what was uploaded through the gateway.

    (Any other object of the platform bucket — other applicants' results —
    must not become readable by naming it as a source image.)
    """
    if (request.image_url is None) == (request.image_key is None):
        raise InvalidInputError(
            "set exactly one of image_url or image_key (from POST /v1/uploads)", field="image_url"
        )
    prefix = upload_prefix.strip("/") + "/"
    if request.image_key is not None and not request.image_key.startswith(prefix):
        raise InvalidInputError(
            f"image_key must be a key returned by POST /v1/uploads ({prefix}...)",
            field="image_key",
        )
    url = request.image_url or ""
    if url.startswith("s3://") and not url.startswith(f"s3://{bucket}/{prefix}"):
        raise InvalidInputError(
            f"s3:// images must be uploads in the platform bucket (s3://{bucket}/{prefix}...)",
            field="image_url",
        )


# ApprovalData field -> request field, to name the field the client sent.
_FIELD_NAMES = {
    "instruction": "prompt",
    "generation": "parameters",
    "callback.webhook_url": "callback_url",
    "callback.nats_subject": "callback_subject",
    "applicant.id": "applicant",
}


def approval_event(
    request: EditRequest,
    *,
    edit_id: str,
    source: str,
    client_identity: str,
    upload_prefix: str,
    bucket: str,
) -> ApprovalEvent:
    """The approval event a POST /v1/edits publishes; raises a 422 naming the field."""
    check_source(request, upload_prefix=upload_prefix, bucket=bucket)
    if request.callback_url is not None and request.callback_subject is not None:
        raise InvalidInputError(
            "set callback_url or callback_subject, not both", field="callback_url"
        )
    instruction = instruction_of(request)
    try:
        # Nested values go in as plain data so that errors carry their full path.
        callback: dict[str, str] | None = None
        if request.callback_url is not None:
            callback = {"webhook_url": request.callback_url}
        elif request.callback_subject is not None:
            callback = {"nats_subject": request.callback_subject}
        data = ApprovalData(
            form_id=request.form_id or GATEWAY_FORM_ID,
            approval_id=request.approval_id or edit_id,
            applicant={"id": request.applicant or client_identity},  # type: ignore[arg-type]
            image_url=request.image_url,
            image_key=request.image_key,
            instruction=instruction,
            usage=request.usage,
            template=(
                Template(id=request.template.id, params=request.template.params)
                if request.template
                else None
            ),
            priority=request.priority,
            callback=callback,  # type: ignore[arg-type]
            model=request.model,
            generation=request.parameters,
            department=request.department,
            cost_center=request.cost_center,
            variants=request.variants,
            stage="preview" if request.preview else "final",
        )
    except ValidationError as exc:
        problem = from_pydantic(exc)
        for error in problem.errors:
            if error.field:
                error.field = _FIELD_NAMES.get(error.field, error.field)
        problem.detail = "; ".join(f"{e.field}: {e.message}" for e in problem.errors)
        raise problem from exc
    return ApprovalEvent(
        id=edit_id,
        source=source,
        subject=f"{data.form_id}/{data.approval_id}"[:256],
        data=data,
    )


def record_of(
    event: ApprovalEvent, *, client_identity: str, fingerprint: str, endpoint: str
) -> dict[str, Any]:
    """What the gateway keeps about an edit it accepted (JSON, stored next to the uploads)."""
    data = event.data
    return {
        "id": event.id,
        "created_at": datetime.now(UTC).isoformat(),
        "endpoint": endpoint,
        "client": client_identity,
        "fingerprint": fingerprint,
        "image_url": data.image_url,
        "image_key": data.image_key,
        "prompt": data.instruction,
        "usage": data.usage,
        "model": data.model,
        "template_id": data.template.id if data.template else None,
    }


def check_replay(
    record: dict[str, Any],
    *,
    client_identity: str,
    fingerprint: str,
    ledger_seconds: float | None = None,
    now: datetime | None = None,
) -> None:
    """A stored edit may be returned for this POST only if it is the same request, and only
    while the approval ledger still remembers it.

    A replay republishes the approval when its edit has not finished; past the ledger's
    retention (the approvals stream's max age) nothing would recognise the event id any more,
    and it would run as a second GPU edit (issue 20 §7). So it is refused instead, saying why.
    """
    if record.get("client") != client_identity or record.get("fingerprint") != fingerprint:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key (or form_id/approval_id) was already used for a different "
            "request; send a new key for a new edit",
            edit_id=str(record.get("id")),
        )
    created = _parse_created(record.get("created_at"))
    if ledger_seconds is None or created is None:
        return
    age = ((now or datetime.now(UTC)) - created).total_seconds()
    if age > ledger_seconds:
        days = ledger_seconds / 86400
        raise ProblemError(
            409,
            "replay_expired",
            f"this Idempotency-Key (or form_id/approval_id) was first used on "
            f"{created.date().isoformat()}, more than {days:g} days ago: the approval ledger no "
            "longer remembers it, so replaying it could run the edit a second time; send a new "
            "key for a new edit",
            edit_id=str(record.get("id")),
        )


def _parse_created(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        created = datetime.fromisoformat(value)
    except ValueError:
        return None
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def links(edit_id: str) -> EditLinks:
    return EditLinks(self=f"/v1/edits/{edit_id}", result=f"/v1/edits/{edit_id}/result")


def view(
    edit_id: str,
    *,
    record: dict[str, Any] | None,
    completion: CompletionEvent | None,
    source_url: str | None = None,
    result_url: str | None = None,
    result_url_expires_at: datetime | None = None,
    rejection: Rejection | None = None,
    selection: SelectionEvent | None = None,
    progress: ProgressEvent | None = None,
) -> EditView:
    """The API's view of an edit from the gateway's record and the completion event
    (or, without one, the dead letter of its approval event), and the variant picked."""
    record = record or {}
    out = EditView(
        id=edit_id,
        status="pending",
        created_at=record.get("created_at"),
        prompt=record.get("prompt"),
        usage=record.get("usage"),
        model=record.get("model"),
        template_id=record.get("template_id"),
        source_url=source_url,
        links=links(edit_id),
    )
    if completion is None:
        if rejection is None:
            if progress is None:
                return out
            moving = progress.data
            return out.model_copy(
                update={
                    "phase": moving.phase,
                    "queue_position": moving.queue_position,
                    "worker": moving.worker,
                    "attempts": moving.attempt or None,
                    "message": moving.message,
                }
            )
        return out.model_copy(update={"status": "rejected", "error": rejection_error(rejection)})
    done = completion.data
    error = ErrorBody(**done.error.model_dump()) if done.error else None
    return out.model_copy(
        update={
            "status": done.status,
            "finished_at": completion.time,
            "result_url": result_url or done.result_url,
            "result_url_expires_at": result_url_expires_at or done.result_url_expires_at,
            "result_key": done.result_key,
            "cost_seconds": done.cost_seconds,
            "attempts": done.attempts,
            "error": error,
            "message": done.message,
            "variants": [VariantView(**v.model_dump()) for v in done.variants],
            "selected_variant": selection.data.variant if selection else None,
            "stage": done.stage,
            "approximate": done.approximate,
            "quality": done.quality.verdict if done.quality else None,
        }
    )


def rejection_error(rejection: Rejection) -> ErrorBody:
    return ErrorBody(
        code=rejection.reason,
        message=f"the approval event was refused and kept in the dead letter: {rejection.message}",
        retriable=False,
    )


def legacy_error(completion: CompletionEvent) -> str | None:
    """The ``error`` string of POST /edit for a non-success outcome."""
    done = completion.data
    if done.status == "success":
        return None
    why = done.error.message if done.error else (done.message or done.status)
    if done.status == "needs_review":
        return f"the edit failed after {done.attempts} attempts and went to a designer: {why}"
    if done.status == "cancelled":
        return f"the edit was cancelled: {why}"
    return why
