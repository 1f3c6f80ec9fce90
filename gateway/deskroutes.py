"""The desk's HTTP API (``/v1/desk/...``): thin handlers over :mod:`.desk` and :mod:`.reviewers`.

Every route identifies the reviewer first (401 without a valid identity; the OA token is no
reviewer identity and the guard leaves these paths to this module), then holds the tenant
boundary (403 for a namespace not theirs). Refusals a reviewer must see at once come back
synchronously as problem documents naming what is wrong: 409 for a claim someone else holds
(with who), 410 for an edit that has finished or was deleted, 413/422 for an upload that is
too large or not an image; the same action id twice is answered as already done (200).
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import PIL.Image
from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from pydantic import BaseModel, Field, ValidationError

from editflow.events.desk import LANES, Ticket
from editflow.gateway.claims import HeldByOther, NotClaimed
from editflow.gateway.desk import ALLOWED, Desk, Gone, WrongLane
from editflow.gateway.problems import FieldError, ProblemError, from_pydantic
from editflow.gateway.reviewers import NotAReviewer, OutsideNamespaces, Reviewer, ReviewerDirectory

desk_api = APIRouter(prefix="/v1/desk", tags=["desk"])

Namespace = Annotated[str, Path(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
Name = Annotated[str, Path(pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")]
ActionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$", description="from the page")]
_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]")
_IMAGE_TYPES = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


def _desk(request: Request) -> tuple[Desk, ReviewerDirectory]:
    return request.app.state.desk, request.app.state.reviewers


def reviewer_of(request: Request) -> Reviewer:
    _, directory = _desk(request)
    try:
        return directory.identify(
            authorization=request.headers.get("authorization"),
            headers=request.headers,
            peer=request.client.host if request.client else None,
        )
    except NotAReviewer as exc:
        raise ProblemError(
            401, "unauthorized", str(exc), headers={"www-authenticate": 'Bearer realm="desk"'}
        ) from None


def _within(reviewer: Reviewer, namespace: str) -> None:
    try:
        reviewer.require(namespace)
    except OutsideNamespaces as exc:
        raise ProblemError(403, "forbidden", str(exc)) from None


async def _open_ticket(desk: Desk, namespace: str, name: str) -> Ticket:
    try:
        return await desk.ticket(namespace, name)
    except Gone as exc:
        raise ProblemError(410, "edit_finished", str(exc)) from None


def _conflict(exc: Exception) -> ProblemError:
    if isinstance(exc, HeldByOther):
        return ProblemError(409, "claim_held", str(exc))
    if isinstance(exc, NotClaimed):
        return ProblemError(409, "not_claimed", str(exc))
    return ProblemError(409, "wrong_lane", str(exc))


def _holder(claim: Any) -> dict[str, Any] | None:
    if claim is None:
        return None
    return {"reviewer": claim.reviewer.model_dump(), "until": claim.until.isoformat()}


def _summary(desk: Desk, ticket: Ticket, holder: Any) -> dict[str, Any]:
    waited = desk.waiting_seconds(ticket)
    return {
        "namespace": ticket.namespace,
        "name": ticket.name,
        "lane": ticket.lane,
        "since": ticket.since.isoformat() if ticket.since else None,
        "waiting_seconds": waited,
        "overdue": waited is not None and waited > desk.settings.gateway.desk_waiting_seconds,
        "reason": ticket.reason,
        "department": ticket.department,
        "usage": ticket.usage,
        "model": ticket.model,
        "template": ticket.template,
        "instruction": ticket.instruction,
        "applicant": ticket.applicant.model_dump() if ticket.applicant else None,
        "holder": _holder(holder),
    }


@desk_api.get("/me", summary="Who the desk thinks you are, your namespaces and its settings")
async def me(request: Request) -> dict[str, Any]:
    desk, _ = _desk(request)
    reviewer = reviewer_of(request)
    gw = desk.settings.gateway
    return {
        "reviewer": reviewer.as_person(),
        "namespaces": sorted(reviewer.namespaces),
        "claim_seconds": gw.desk_claim_seconds,
        "waiting_seconds": gw.desk_waiting_seconds,
    }


@desk_api.get("/tickets", summary="The queue: open tickets in three lanes, oldest first")
async def queue(
    request: Request,
    department: Annotated[str | None, Query(max_length=200)] = None,
    usage: Annotated[str | None, Query(max_length=200)] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    namespace: Annotated[str | None, Query(max_length=63)] = None,
) -> dict[str, Any]:
    desk, _ = _desk(request)
    reviewer = reviewer_of(request)
    if namespace is not None:
        _within(reviewer, namespace)
    namespaces = [namespace] if namespace else sorted(reviewer.namespaces)
    everything: list[Ticket] = []
    for ns in namespaces:
        everything += await desk.tickets(ns)
    everything.sort(key=lambda t: (t.since.timestamp() if t.since else float("inf"), t.name))
    options = {
        "department": sorted({t.department for t in everything if t.department}),
        "usage": sorted({t.usage for t in everything if t.usage}),
        "model": sorted({t.model for t in everything if t.model}),
    }
    wanted = {"department": department, "usage": usage, "model": model}
    shown = [t for t in everything if all(not v or getattr(t, k) == v for k, v in wanted.items())]
    lanes: dict[str, Any] = {lane: {"count": 0, "tickets": []} for lane in LANES}
    for ticket in shown:
        holder = await desk.claims.holder(ticket.namespace, ticket.name)
        lanes[ticket.lane]["tickets"].append(_summary(desk, ticket, holder))
        lanes[ticket.lane]["count"] += 1
    return {"lanes": lanes, "filters": options}


@desk_api.get("/tickets/{namespace}/{name}", summary="One edit: images, people, attempts, gate")
async def one(request: Request, namespace: Namespace, name: Name) -> dict[str, Any]:
    desk, _ = _desk(request)
    reviewer = reviewer_of(request)
    _within(reviewer, namespace)
    ticket = await _open_ticket(desk, namespace, name)
    holder = await desk.claims.holder(namespace, name)
    return {
        **_summary(desk, ticket, holder),
        "phase": ticket.phase,
        "message": ticket.message,
        "original_instruction": ticket.original_instruction,
        "approvers": [p.model_dump() for p in ticket.approvers],
        "input_url": desk.presign(ticket, ticket.input_key),
        "results": [
            {"index": r.index, "url": desk.presign(ticket, r.result_key)} for r in ticket.results
        ],
        "attempts": [a.model_dump() for a in ticket.attempts],
        "gate": ticket.gate.model_dump() if ticket.gate else None,
        "review_attempts": ticket.review_attempts,
        "actions": ["claim", *sorted(ALLOWED[ticket.lane])],
        "mine": holder is not None and holder.reviewer.id == reviewer.id,
    }


@desk_api.post("/tickets/{namespace}/{name}/claim", summary="Claim (or renew) a ticket")
async def claim(request: Request, namespace: Namespace, name: Name) -> dict[str, Any]:
    desk, _ = _desk(request)
    reviewer = reviewer_of(request)
    _within(reviewer, namespace)
    ticket = await _open_ticket(desk, namespace, name)
    try:
        held = await desk.claim(ticket, reviewer)
    except HeldByOther as exc:
        raise _conflict(exc) from None
    return {"holder": _holder(held)}


@desk_api.post("/tickets/{namespace}/{name}/release", summary="Give your claim back")
async def release(request: Request, namespace: Namespace, name: Name) -> dict[str, Any]:
    desk, _ = _desk(request)
    reviewer = reviewer_of(request)
    _within(reviewer, namespace)
    try:
        await desk.claims.release(namespace, name, reviewer)
    except HeldByOther as exc:
        raise _conflict(exc) from None
    return {"holder": None}


class ActionRequest(BaseModel):
    """A rerun, send_back or verdict (an upload goes to ``.../upload`` with its file)."""

    action_id: ActionId
    action: Literal["rerun", "send_back", "verdict"]
    instruction: str | None = None
    message: str | None = None
    verdict: Literal["good", "poor"] | None = None
    better_instruction: str | None = None


class ActionView(BaseModel):
    action_id: str
    action: str
    already_done: bool = Field(description="the same action id was done before (a stale page)")
    result_key: str | None = None
    done_at: datetime | None = None


async def _already(desk: Desk, namespace: str, action_id: str) -> ActionView | None:
    if (done := await desk.claims.done(namespace, action_id)) is None:
        return None
    return ActionView(action_id=action_id, action=str(done.get("action")), already_done=True)


async def _checked(
    request: Request, namespace: str, name: str, action: Any
) -> tuple[Desk, Reviewer, Ticket]:
    desk, _ = _desk(request)
    reviewer = reviewer_of(request)
    _within(reviewer, namespace)
    ticket = await _open_ticket(desk, namespace, name)
    try:
        await desk.check_action(ticket, reviewer, action)
    except (HeldByOther, NotClaimed, WrongLane) as exc:
        raise _conflict(exc) from None
    return desk, reviewer, ticket


@desk_api.post("/tickets/{namespace}/{name}/actions", summary="Re-run, send back, or a verdict")
async def act(
    request: Request, namespace: Namespace, name: Name, body: ActionRequest
) -> ActionView:
    desk, _ = _desk(request)
    # 401 and 403 before anything else, even for a repeated action id.
    _within(reviewer_of(request), namespace)
    if (done := await _already(desk, namespace, body.action_id)) is not None:
        return done
    desk, reviewer, ticket = await _checked(request, namespace, name, body.action)
    fields = body.model_dump(exclude={"action_id"}, exclude_none=True)
    try:
        published = await desk.publish(ticket, reviewer, body.action_id, **fields)
    except ValidationError as exc:
        raise from_pydantic(exc) from None
    return ActionView(
        action_id=published.action_id, action=body.action, already_done=published.duplicate
    )


def _image(data: bytes, limit_pixels: int) -> str:
    """The upload's format extension, after decoding it with Pillow (422 naming ``file``)."""
    if not data:
        raise ProblemError(422, "invalid_input", "file: the upload is empty")
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            width, height = img.size
            if width * height > limit_pixels:
                raise ProblemError(
                    413,
                    "content_too_large",
                    f"file: {width}x{height} is more than {limit_pixels} pixels",
                    errors=[FieldError(field="file", message="too many pixels")],
                )
            img.load()
    except ProblemError:
        raise
    except (PIL.Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ProblemError(
            422,
            "not_an_image",
            f"file: not an image Pillow can decode ({exc})",
            errors=[FieldError(field="file", message="not an image")],
        ) from None
    if fmt not in _IMAGE_TYPES:
        raise ProblemError(
            422,
            "not_an_image",
            f"file: a {fmt or 'unknown'} image; send PNG, JPEG, WebP, GIF or BMP",
            errors=[FieldError(field="file", message="unsupported image format")],
        )
    return _IMAGE_TYPES[fmt]


@desk_api.post(
    "/tickets/{namespace}/{name}/upload",
    summary="Hand back a fixed image (NeedsReview only): it becomes the edit's result",
)
async def upload(
    request: Request,
    namespace: Namespace,
    name: Name,
    action_id: Annotated[str, Form(pattern=r"^[A-Za-z0-9_-]{8,64}$")],
    file: Annotated[UploadFile, File(description="the fixed image")],
) -> ActionView:
    desk, _ = _desk(request)
    _within(reviewer_of(request), namespace)
    if (done := await _already(desk, namespace, action_id)) is not None:
        return done
    desk, reviewer, ticket = await _checked(request, namespace, name, "upload")
    data = await file.read()
    gw = desk.settings.gateway
    if len(data) > gw.max_upload_bytes:
        raise ProblemError(
            413, "content_too_large", f"file: larger than {gw.max_upload_bytes} bytes"
        )
    ext = _image(data, desk.settings.worker.max_pixels)
    stem = _SAFE_FILE.sub("_", (file.filename or "fixed").rsplit(".", 1)[0])[:80] or "fixed"
    key = desk.upload_key(ticket, action_id, f"{stem}.{ext}")
    ctype = "image/jpeg" if ext == "jpg" else f"image/{ext}"
    await desk.store.put_upload(key, data, ctype)
    desk.metrics.uploads.inc(len(data))
    published = await desk.publish(ticket, reviewer, action_id, action="upload", result_key=key)
    return ActionView(
        action_id=action_id, action="upload", already_done=published.duplicate, result_key=key
    )
