"""The app factory: routes, the guard, CORS, metrics, problem documents, the try-it page.

Middleware, outermost first::

    Edge     request metrics by route template, security headers
    CORS     the OA origin allowlist (preflights answered here)
    Guard    rate limit -> Bearer token -> body limits (before any body is read)
    FastAPI  validation (problem+json naming the field), routes

``create_app(settings)`` connects to NATS and S3 itself (in the background,
retrying); tests pass their own ``bus``/``store`` to run without either.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from nats.js import JetStreamContext
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from editflow import __version__
from editflow.core.settings import Settings, get_settings
from editflow.core.urlguard import Resolve
from editflow.events.kvlimits import LimitsBucket
from editflow.gateway import problems, routes
from editflow.gateway.backend import Bus, EditBus, ObjectStore, Store
from editflow.gateway.clients import parse_networks
from editflow.gateway.desk import Desk
from editflow.gateway.deskroutes import desk_api
from editflow.gateway.guard import (
    DESK_API_PREFIX,
    JSON_ROUTES,
    PUBLIC_API,
    UPLOAD_PATH,
    Guard,
    GuardConfig,
    is_api,
)
from editflow.gateway.metrics import GatewayMetrics
from editflow.gateway.ratelimit import RateLimiter, SlidingWindowLimiter
from editflow.gateway.reviewers import ReviewerDirectory
from editflow.gateway.screen import RequestScreen
from editflow.gateway.sharedlimit import LimitsStore, SharedLimiter

STATIC = Path(__file__).resolve().parent / "static"

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self'; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class Edge:
    """Counts every response (guard refusals included) and adds security headers."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                path = scope["path"]
                if path in ("/", "/desk") or path.startswith("/static/"):
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                    headers.append((b"x-frame-options", b"DENY"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
            )
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)


_KNOWN_PATHS = frozenset({"/edit", "/v1/edits", "/v1/uploads", "/healthz", "/readyz", "/metrics"})


def create_app(
    settings: Settings | None = None,
    *,
    bus: EditBus | None = None,
    store: ObjectStore | None = None,
    resolve: Resolve | None = None,
    jetstream: Callable[[], JetStreamContext | None] | None = None,
) -> FastAPI:
    """The gateway app; ``bus``/``store`` default to NATS (via the OA SDK) and S3.

    ``resolve`` replaces the system DNS lookup of the URL screen (tests only);
    ``jetstream`` gives the desk its NATS (default: the real :class:`Bus`'s connection; an
    in-process stand-in bus has none, and the desk then answers 503).
    """
    settings = settings or get_settings()
    gw = settings.gateway
    metrics = GatewayMetrics()
    bus = bus or Bus(settings)
    store = store or Store(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        watcher = asyncio.create_task(
            app.state.desk.watch_queues(app.state.reviewers.namespaces()), name="desk-queues"
        )
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await bus.close()

    app = FastAPI(
        title="editflow gateway",
        version=__version__,
        summary="OA-approved image edits over HTTP: the same path as approval events.",
        description=(
            "Every API call needs `Authorization: Bearer <token>` when the gateway has a "
            "token configured. Errors are RFC 9457 problem documents "
            "(`application/problem+json`) that name the wrong field. `POST /edit` is the "
            "first deployment's synchronous call; `POST /v1/edits` answers at once."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.gateway = routes.GatewayState(
        settings=settings,
        bus=bus,
        store=store,
        metrics=metrics,
        screen=RequestScreen(settings, resolve=resolve),
    )
    if jetstream is None:
        jetstream = bus.jetstream if isinstance(bus, Bus) else (lambda: None)
    app.state.desk = Desk(settings, jetstream=jetstream, store=store, metrics=metrics)
    app.state.reviewers = ReviewerDirectory.from_settings(gw)
    problems.install(app)
    app.include_router(desk_api)
    app.include_router(routes.ops)
    app.include_router(routes.catalogue)
    app.include_router(routes.api)
    app.include_router(routes.legacy)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/desk", include_in_schema=False)
    async def desk_page() -> FileResponse:
        return FileResponse(STATIC / "desk.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    submit_limiter, read_limiter = _limiters(settings, bus, metrics)
    app.add_middleware(
        Guard,
        config=GuardConfig(
            token=gw.token.get_secret_value() if gw.token else None,
            trusted=parse_networks(gw.trusted_proxies),
            submit_limiter=submit_limiter,
            read_limiter=read_limiter,
            max_json_bytes=gw.max_json_bytes,
            max_upload_bytes=gw.max_upload_bytes,
        ),
        metrics=metrics,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(gw.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(Edge, metrics=metrics)
    app.openapi = lambda: _openapi(app, auth=gw.token is not None)  # type: ignore[method-assign]
    return app


def _limiters(
    settings: Settings, bus: EditBus, metrics: GatewayMetrics
) -> tuple[RateLimiter, RateLimiter]:
    """Shared through NATS KV whenever the gateway talks to NATS (its real :class:`Bus`);
    per process for in-process stand-ins or with ``rate_limit_shared: false``."""
    gw = settings.gateway
    if not (gw.rate_limit_shared and isinstance(bus, Bus)):
        return (
            SlidingWindowLimiter(gw.rate_limit_per_minute),
            SlidingWindowLimiter(gw.read_rate_limit_per_minute),
        )
    store = LimitsStore(
        bus.jetstream,
        LimitsBucket(
            gw.rate_limit_bucket,
            storage=settings.events.storage,
            replicas=settings.events.replicas,
        ),
        metrics,
    )
    return (
        SharedLimiter("submit", gw.rate_limit_per_minute, store),
        SharedLimiter("read", gw.read_rate_limit_per_minute, store),
    )


def _problem_response(description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
        **extra,
    }


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}


def _openapi(app: FastAPI, *, auth: bool) -> dict[str, Any]:
    """FastAPI's document, with every error response as problem+json and the guard's answers."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem_schema = problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            for code, response in list(responses.items()):
                if code.startswith(("4", "5")) and "content" in response:
                    if "Readiness" in str(response["content"]):
                        continue
                    responses[code] = _problem_response(response.get("description", ""))
            if "422" in responses:
                responses["422"]["description"] = "a field is wrong (named in errors[].field)"
            if not is_api(path):
                continue
            responses["429"] = _problem_response("rate limit exceeded", headers=_RETRY_AFTER)
            if path not in PUBLIC_API:
                responses["503"] = _problem_response(
                    "NATS or S3 unavailable: retry later", headers=_RETRY_AFTER
                )
                if auth:
                    op["security"] = [{"bearer": []}]
                    responses["401"] = _problem_response("missing or wrong Bearer token")
            if method.upper() == "POST":
                responses["413"] = _problem_response("the body is larger than the limit")
                responses.setdefault("422", _problem_response("a field is wrong"))
                if (method.upper(), path) in JSON_ROUTES:
                    responses["400"] = _problem_response("the body is not valid JSON")
                    responses["415"] = _problem_response("the body is not application/json")
                if path == UPLOAD_PATH:
                    responses["415"] = _problem_response("not an image")
            if path.startswith(DESK_API_PREFIX):
                op["security"] = [{"bearer": []}]
                responses["401"] = _problem_response("no valid reviewer identity")
                responses["403"] = _problem_response("a namespace outside the reviewer's")
                if "{name}" in path:
                    responses["410"] = _problem_response("this edit has finished")
                if method.upper() == "POST":
                    responses["409"] = _problem_response("claimed by someone else, or no claim")
            if "{edit_id}" in path:
                responses["404"] = _problem_response("no edit with this id")
    app.openapi_schema = doc
    return doc
