"""The ASGI guard in front of the API: rate limit, Bearer token, body limits, content type.

It runs before FastAPI reads a body, so an unauthenticated or rate-limited
client never gets a byte parsed, and an oversize body is refused from its
``Content-Length`` (or, when chunked, as soon as the running count passes
the limit), never buffered whole. Order, per request:

1. rate limit per client IP (edit submissions: ``rate_limit_per_minute``;
   other API calls: ``read_rate_limit_per_minute``) -> 429 + ``Retry-After``
2. Bearer token, when one is configured, compared in constant time -> 401
3. body size (JSON vs image upload limits) -> 413; JSON endpoints take only
   ``application/json`` -> 415

Health, readiness, metrics, the try-it page and the OpenAPI document are
open: a kubelet probe or Prometheus has no token.

Logs: one ``client rate limited`` line when a client starts being refused
(not one per refused request: :class:`LimitedClients`); every request is
counted in the metrics instead.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from editflow.gateway.clients import Client, Network, client_ip, header, identity_for
from editflow.gateway.metrics import GatewayMetrics
from editflow.gateway.problems import PROBLEM_JSON, problem_bytes
from editflow.gateway.ratelimit import RateLimiter, retry_after

log = logging.getLogger("editflow.gateway")

CLIENT_SCOPE_KEY = "editflow.client"

#: Requests that start an edit (they spend GPU time): the strict limit.
SUBMIT_ROUTES = frozenset({("POST", "/edit"), ("POST", "/v1/edits")})
#: JSON endpoints (the others with a body take multipart uploads).
JSON_ROUTES = SUBMIT_ROUTES
UPLOAD_PATH = "/v1/uploads"
#: API paths anyone may read: the page needs them before a token is typed in.
PUBLIC_API = frozenset({"/v1/templates", "/v1/usages", "/v1/info"})
#: The designer's desk API: reviewers have their own identity (gateway.reviewers), not the
#: OA token, so the desk's routes check it themselves.
DESK_API_PREFIX = "/v1/desk/"


def is_desk_upload(path: str) -> bool:
    return path.startswith(DESK_API_PREFIX) and path.endswith("/upload")


def is_api(path: str) -> bool:
    return path == "/edit" or path.startswith("/v1/")


@dataclass
class GuardConfig:
    token: str | None
    trusted: tuple[Network, ...]
    submit_limiter: RateLimiter
    read_limiter: RateLimiter
    max_json_bytes: int
    max_upload_bytes: int


@dataclass
class LimitedClients:
    """Which clients were told they are limited, until when (bounded): one log line each time."""

    keep: int = 10_000
    _until: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)

    def first_refusal(self, scope: str, ip: str, wait: float) -> bool:
        now = time.monotonic()
        key = (scope, ip)
        new = self._until.get(key, 0.0) <= now
        self._until[key] = now + wait
        self._until.move_to_end(key)
        while len(self._until) > self.keep:
            self._until.popitem(last=False)
        return new


class TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class Guard:
    """Pure ASGI middleware (no body buffering, works for streaming uploads)."""

    def __init__(self, app: ASGIApp, *, config: GuardConfig, metrics: GatewayMetrics) -> None:
        self.app = app
        self.config = config
        self.metrics = metrics
        self.limited = LimitedClients()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = scope.get("headers") or []
        peer = (scope.get("client") or (None, None))[0]
        ip = client_ip(peer, header(headers, b"x-forwarded-for"), self.config.trusted)
        token = self.config.token
        scope[CLIENT_SCOPE_KEY] = Client(ip=ip, identity=identity_for(ip, token))
        if not is_api(path) or method == "OPTIONS":
            await self.app(scope, receive, send)
            return

        submit = (method, path) in SUBMIT_ROUTES
        limiter = self.config.submit_limiter if submit else self.config.read_limiter
        wait = await limiter.acquire(ip)
        if wait:
            scope = "submit" if submit else "read"
            self.metrics.rate_limited.labels(scope).inc()
            if self.limited.first_refusal(scope, ip, wait):
                log.info(
                    "client rate limited",
                    extra={
                        "limit": scope,
                        "client_ip": ip,
                        "per_minute": limiter.limit,
                        "retry_after_s": float(retry_after(wait)),
                    },
                )
            what = "edit submissions" if submit else "requests"
            await _problem(
                send,
                429,
                "rate_limited",
                f"too many {what} from {ip}: at most {limiter.limit} per minute; "
                f"retry in {retry_after(wait)} s",
                path,
                {"retry-after": retry_after(wait)},
            )
            return

        if token is not None and path not in PUBLIC_API and not path.startswith(DESK_API_PREFIX):
            supplied = _bearer(header(headers, b"authorization"))
            if supplied is None or not hmac.compare_digest(
                supplied.encode("utf-8"), token.encode("utf-8")
            ):
                self.metrics.unauthorized.inc()
                detail = (
                    "missing Bearer token: send 'Authorization: Bearer <token>'"
                    if supplied is None
                    else "the Bearer token is not valid"
                )
                await _problem(
                    send,
                    401,
                    "unauthorized",
                    detail,
                    path,
                    {"www-authenticate": 'Bearer realm="editflow"'},
                )
                return

        if method in ("POST", "PUT", "PATCH"):
            if (method, path) in JSON_ROUTES:
                ctype = (header(headers, b"content-type") or "").split(";")[0].strip().lower()
                if ctype and ctype != "application/json" and not ctype.endswith("+json"):
                    await _problem(
                        send,
                        415,
                        "unsupported_media_type",
                        f"send the body as application/json, not {ctype}",
                        path,
                    )
                    return
            limit = (
                self.config.max_upload_bytes
                if path == UPLOAD_PATH or is_desk_upload(path)
                else self.config.max_json_bytes
            )
            length = header(headers, b"content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    await _problem(send, 400, "bad_request", "Content-Length is not a number", path)
                    return
                if declared > limit:
                    await _problem(
                        send,
                        413,
                        "content_too_large",
                        f"the request body is {declared} bytes; the limit is {limit} bytes",
                        path,
                    )
                    return
            receive = _counting(receive, limit)
        await self.app(scope, receive, send)


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _counting(receive: Receive, limit: int) -> Receive:
    """A ``receive`` that refuses a body once more than ``limit`` bytes arrived (chunked)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(limit)
        return message

    return wrapped


async def _problem(
    send: Send, status: int, code: str, detail: str, path: str, extra: dict[str, str] | None = None
) -> None:
    body = problem_bytes(status, code, detail, instance=path)
    headers: list[Any] = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
