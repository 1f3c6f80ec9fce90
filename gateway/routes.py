"""The HTTP routes: thin handlers over :mod:`.service` (decisions) and :mod:`.backend` (I/O)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, File, Header, Path, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from editflow import __version__
from editflow.core.errors import EditflowError
from editflow.core.settings import Settings
from editflow.events.models import CompletionEvent, ProgressEvent, SelectionEvent
from editflow.gateway import service, templates
from editflow.gateway.backend import EditBus, ObjectStore
from editflow.gateway.clients import Client
from editflow.gateway.guard import CLIENT_SCOPE_KEY
from editflow.gateway.metrics import GatewayMetrics
from editflow.gateway.problems import FieldError, ProblemError
from editflow.gateway.schemas import (
    EditRequest,
    EditView,
    Health,
    InfoView,
    LegacyEditRequest,
    LegacyEditResponse,
    Readiness,
    ResultView,
    SelectRequest,
    TemplateView,
    UploadView,
    UsageView,
)
from editflow.gateway.screen import RequestScreen
from editflow.gateway.service import Rejection

log = logging.getLogger("editflow.gateway")

#: How often a waiting POST /edit looks for a dead letter of its event.
REJECTION_POLL_SECONDS = 3.0


@dataclass
class GatewayState:
    settings: Settings
    bus: EditBus
    store: ObjectStore
    metrics: GatewayMetrics
    screen: RequestScreen


def state(request: Request) -> GatewayState:
    return request.app.state.gateway  # type: ignore[no-any-return]


def client_of(request: Request) -> Client:
    client = request.scope.get(CLIENT_SCOPE_KEY)
    if client is None:  # only if the guard is not installed (never in create_app)
        host = request.client.host if request.client else "unknown"
        return Client(ip=host, identity=f"ip:{host}")
    return client  # type: ignore[no-any-return]


EditId = Annotated[
    str,
    Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$", description="the edit id"),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="retrying a POST with the same key returns the same edit",
    ),
]

ops = APIRouter(tags=["operations"])
api = APIRouter(prefix="/v1", tags=["edits"])
catalogue = APIRouter(prefix="/v1", tags=["catalogue"])
legacy = APIRouter(tags=["legacy"])


# -- operations ---------------------------------------------------------------------------
@ops.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> Health:
    return Health(status="ok")


@ops.get(
    "/readyz",
    summary="Readiness: NATS JetStream and S3 are reachable",
    responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
)
async def readyz(request: Request) -> JSONResponse:
    gw = state(request)
    checks: dict[str, str] = {}
    for name, check in (("nats", gw.bus.check), ("s3", gw.store.check)):
        try:
            checks[name] = await check()
        except Exception as exc:
            checks[name] = exc.message if isinstance(exc, EditflowError) else repr(exc)
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@ops.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


# -- catalogue ----------------------------------------------------------------------------
@catalogue.get("/templates", summary="The prompt-template catalogue (zh and en)")
async def list_templates() -> list[TemplateView]:
    return [TemplateView.model_validate(t.as_json()) for t in templates.CATALOGUE]


@catalogue.get("/usages", summary="OA usages: each selects an output profile")
async def list_usages() -> list[UsageView]:
    return [UsageView(id=uid, label=label) for uid, label in templates.USAGES]


@catalogue.get("/info", summary="What a client needs to know: auth, limits, version")
async def info(request: Request) -> InfoView:
    gw = state(request).settings.gateway
    return InfoView(
        version=__version__,
        auth="bearer" if gw.token else "none",
        max_json_bytes=gw.max_json_bytes,
        max_upload_bytes=gw.max_upload_bytes,
        rate_limit_per_minute=gw.rate_limit_per_minute,
        wait_timeout_seconds=gw.wait_timeout_seconds,
    )


# -- edits --------------------------------------------------------------------------------
async def _submit(
    request: Request, body: EditRequest, idempotency_key: str | None, endpoint: str
) -> tuple[str, dict[str, Any], bool]:
    """Publish the approval event for ``body`` (once); returns (edit id, record, replayed)."""
    gw = state(request)
    client = client_of(request)
    edit_id = service.edit_id_for(
        client.identity,
        idempotency_key=idempotency_key,
        form_id=body.form_id,
        approval_id=body.approval_id,
        preview=body.preview,
    )
    event = service.approval_event(
        body,
        edit_id=edit_id,
        source=gw.settings.gateway.source,
        client_identity=client.identity,
        upload_prefix=service.upload_root(gw.settings),
        bucket=gw.settings.s3.bucket,
    )
    # Unsafe or unresolvable URLs, refused callback subjects: 422 now, before any GPU.
    await gw.screen.check(body)
    fp = service.fingerprint(endpoint, body.model_dump(mode="json"))
    deterministic = idempotency_key is not None or bool(body.form_id and body.approval_id)
    if deterministic and (record := await gw.store.get_record(edit_id)) is not None:
        service.check_replay(
            record,
            client_identity=client.identity,
            fingerprint=fp,
            ledger_seconds=gw.settings.events.max_age_seconds,
        )
        gw.metrics.replayed.inc()
        # The first POST may have died between storing the record and publishing:
        # publish again unless the edit already finished (JetStream drops a duplicate).
        if await gw.bus.completion(edit_id) is None:
            await gw.bus.publish(event)
        _accepted(edit_id, endpoint, client, replayed=True)
        return edit_id, record, True
    record = service.record_of(
        event, client_identity=client.identity, fingerprint=fp, endpoint=endpoint
    )
    await gw.store.put_record(edit_id, record)
    await gw.bus.publish(event)
    gw.metrics.submitted.labels(endpoint).inc()
    _accepted(edit_id, endpoint, client, replayed=False)
    return edit_id, record, False


def _accepted(edit_id: str, endpoint: str, client: Client, *, replayed: bool) -> None:
    """The gateway's one line per accepted edit (its decision; HTTP requests are metrics)."""
    log.info(
        "edit accepted",
        extra={
            "edit_id": edit_id,
            "endpoint": endpoint,
            "client_ip": client.ip,
            "replayed": replayed,
        },
    )


def _signed(gw: GatewayState, key: str | None) -> tuple[str | None, Any]:
    if not key:
        return None, None
    return gw.store.presign(key)


def _view(
    gw: GatewayState,
    edit_id: str,
    record: dict[str, Any] | None,
    done: CompletionEvent | None,
    rejection: Rejection | None = None,
    selection: SelectionEvent | None = None,
    progress: ProgressEvent | None = None,
) -> EditView:
    source_url = (record or {}).get("image_url")
    if not source_url and (record or {}).get("image_key"):
        source_url, _ = gw.store.presign(record["image_key"])  # type: ignore[index]
    result_url, expires = _signed(gw, done.data.result_key if done else None)
    out = service.view(
        edit_id,
        record=record,
        completion=done,
        source_url=source_url,
        result_url=result_url,
        result_url_expires_at=expires,
        rejection=rejection,
        selection=selection,
        progress=progress,
    )
    for variant in out.variants:  # signed for the public endpoint, as the main result is
        variant.result_url = _signed(gw, variant.result_key)[0] or variant.result_url
    return out


@api.post(
    "/edits",
    status_code=202,
    summary="Start an edit; returns its id at once",
    response_description="the edit, status pending (or the existing edit for a replayed key)",
    responses={409: {"description": "a replayed key older than the approval ledger's retention"}},
)
async def create_edit(
    request: Request, response: Response, body: EditRequest, idempotency_key: IdempotencyKey = None
) -> EditView:
    gw = state(request)
    edit_id, record, replayed = await _submit(request, body, idempotency_key, "v1")
    done = await gw.bus.completion(edit_id) if replayed else None
    response.headers["Location"] = f"/v1/edits/{edit_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _view(gw, edit_id, record, done)


@api.get(
    "/edits/{edit_id}",
    summary="An edit's status (pending until its completion event) and result",
)
async def get_edit(request: Request, edit_id: EditId) -> EditView:
    gw = state(request)
    done = await gw.bus.completion(edit_id)
    rejection = await gw.bus.rejection(edit_id) if done is None else None
    record = await gw.store.get_record(edit_id)
    if done is None and record is None and rejection is None:
        raise ProblemError(404, "not_found", f"no edit with id {edit_id!r}", edit_id=edit_id)
    selection = await gw.bus.selection(edit_id) if done and done.data.variants else None
    progress = await gw.bus.progress(edit_id) if done is None and rejection is None else None
    return _view(gw, edit_id, record, done, rejection, selection, progress)


@api.post(
    "/edits/{edit_id}/select",
    status_code=202,
    summary="Pick one of an edit's variants (recorded in status and the audit log, published)",
    responses={409: {"description": "the edit has not succeeded, or has no such variant"}},
)
async def select_variant(request: Request, edit_id: EditId, body: SelectRequest) -> EditView:
    gw = state(request)
    client = client_of(request)
    record = await gw.store.get_record(edit_id)
    if record is not None and record.get("client") != client.identity:
        raise ProblemError(
            403, "forbidden", "only the client that submitted an edit picks its variant"
        )
    done = await gw.bus.completion(edit_id)
    if done is None or done.data.status != "success":
        now = done.data.status if done else "pending"
        detail = f"edit {edit_id} is {now}: a variant can be picked once it succeeded"
        raise ProblemError(409, "not_selectable", detail, edit_id=edit_id)
    count = max(1, len(done.data.variants))
    if body.variant > count:
        detail = f"edit {edit_id} has variants 1 to {count}, not {body.variant}"
        raise ProblemError(
            409,
            "no_such_variant",
            detail,
            errors=[FieldError(field="variant", message=detail)],
            edit_id=edit_id,
        )
    await gw.bus.select(
        form_id=done.data.form_id,
        approval_id=done.data.approval_id,
        edit_id=edit_id,
        variant=body.variant,
        by=body.selected_by or client.identity,
    )
    view = _view(gw, edit_id, record, done)
    view.selected_variant = body.variant  # the operator records it in a moment
    return view


@api.get(
    "/edits/{edit_id}/result",
    summary="A freshly signed URL of the result (re-signs an expired one)",
    responses={
        307: {"description": "redirect to the result image (with ?redirect=true)"},
        409: {"description": "the edit has no result (pending, failed, ...)"},
    },
)
async def get_result(
    request: Request,
    edit_id: EditId,
    redirect: Annotated[bool, Query(description="answer 307 to the image")] = False,
) -> ResultView:
    gw = state(request)
    done = await gw.bus.completion(edit_id)
    if done is None and (rejection := await gw.bus.rejection(edit_id)) is not None:
        raise ProblemError(
            409, "no_result", service.rejection_error(rejection).message, edit_id=edit_id
        )
    if done is None:
        if await gw.store.get_record(edit_id) is None:
            raise ProblemError(404, "not_found", f"no edit with id {edit_id!r}", edit_id=edit_id)
        raise ProblemError(
            409,
            "no_result_yet",
            f"edit {edit_id} is still pending; poll GET /v1/edits/{edit_id}",
            retriable=True,
            headers={"Retry-After": "5"},
            edit_id=edit_id,
        )
    if done.data.status != "success" or not done.data.result_key:
        if done.data.status == "success" and done.data.result_url:
            raise ProblemError(
                409, "result_not_resignable", "the result has no object key to re-sign"
            )
        raise ProblemError(
            409,
            "no_result",
            f"edit {edit_id} ended {done.data.status}: "
            + (done.data.error.message if done.data.error else "no result"),
            edit_id=edit_id,
        )
    url, expires = gw.store.presign(done.data.result_key)
    if redirect:
        return RedirectResponse(url, status_code=307)  # type: ignore[return-value]
    return ResultView(
        id=edit_id, result_url=url, result_url_expires_at=expires, result_key=done.data.result_key
    )


_MAGIC: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png", "png"),
    (b"\xff\xd8\xff", 0, "image/jpeg", "jpg"),
    (b"GIF87a", 0, "image/gif", "gif"),
    (b"GIF89a", 0, "image/gif", "gif"),
    (b"WEBP", 8, "image/webp", "webp"),
    (b"BM", 0, "image/bmp", "bmp"),
)


def sniff(data: bytes) -> tuple[str, str] | None:
    """Content type and extension from the file's first bytes (never from its name)."""
    for magic, offset, ctype, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (ext != "webp" or data[:4] == b"RIFF"):
            return ctype, ext
    return None


@api.post(
    "/uploads",
    status_code=201,
    summary="Upload a source image to the platform bucket; use its image_key in POST /v1/edits",
    responses={415: {"description": "not a PNG, JPEG, WebP, GIF or BMP image"}},
)
async def upload(
    request: Request,
    file: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, GIF, BMP)")],
) -> UploadView:
    gw = state(request)
    data = await file.read()
    if not data:
        raise ProblemError(422, "invalid_input", "file: the upload is empty")
    kind = sniff(data)
    if kind is None:
        raise ProblemError(415, "not_an_image", "file: not a PNG, JPEG, WebP, GIF or BMP image")
    ctype, ext = kind
    digest = hashlib.sha256(data).hexdigest()
    # Content-addressed: the same image uploaded twice is one object.
    key = f"{service.upload_root(gw.settings)}/{digest[:2]}/{digest}.{ext}"
    await gw.store.put_upload(key, data, ctype)
    gw.metrics.uploads.inc(len(data))
    return UploadView(image_key=key, size=len(data), content_type=ctype, sha256=digest)


# -- the first deployment's API -----------------------------------------------------------
@legacy.post(
    "/edit",
    summary="Edit and wait (the first deployment's API)",
    response_description="success with result_url, or failed with error (also on timeout: "
    "the error gives the edit id, and the edit continues)",
)
async def edit_and_wait(
    request: Request, body: LegacyEditRequest, idempotency_key: IdempotencyKey = None
) -> LegacyEditResponse:
    gw = state(request)
    started = time.monotonic()
    if body.ignored_fields:
        log.info(
            "legacy request fields ignored",
            extra={"fields": list(body.ignored_fields), "client_ip": client_of(request).ip},
        )
    modern = EditRequest(
        image_url=body.image_url,
        prompt=body.prompt,
        model=body.model,
        usage=body.usage,
        parameters=body.parameters(),
    )
    edit_id, _, _ = await _submit(request, modern, idempotency_key, "edit")
    timeout = gw.settings.gateway.wait_timeout_seconds
    deadline = started + timeout
    done = None
    # Wait in slices: between them, look whether the event was dead-lettered (then no
    # completion will ever come, and the caller should hear why now, not in 300 s).
    while (remaining := deadline - time.monotonic()) > 0:
        done = await gw.bus.wait(edit_id, min(remaining, REJECTION_POLL_SECONDS))
        if done is not None:
            break
        if (rejection := await gw.bus.rejection(edit_id)) is not None:
            gw.metrics.outcomes.labels("rejected").inc()
            return LegacyEditResponse(
                status="failed",
                error=service.rejection_error(rejection).message,
                cost_time=round(time.monotonic() - started, 3),
                id=edit_id,
            )
    if done is None:
        gw.metrics.outcomes.labels("timeout").inc()
        return LegacyEditResponse(
            status="failed",
            error=f"edit {edit_id} did not finish within {timeout:g} s; it continues: "
            f"GET /v1/edits/{edit_id} reports its outcome",
            cost_time=round(time.monotonic() - started, 3),
            id=edit_id,
        )
    gw.metrics.outcomes.labels(done.data.status).inc()
    result_url, _ = _signed(gw, done.data.result_key)
    if done.data.status == "success":
        return LegacyEditResponse(
            status="success",
            result_url=result_url or done.data.result_url,
            cost_time=done.data.cost_seconds,
            id=edit_id,
        )
    return LegacyEditResponse(
        status="failed",
        error=service.legacy_error(done),
        cost_time=done.data.cost_seconds,
        id=edit_id,
    )
