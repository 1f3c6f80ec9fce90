"""Errors at the HTTP edge: RFC 9457 problem details (``application/problem+json``).

Every error the gateway answers has the same shape, so an OA system matches
on ``code`` and shows ``detail`` to a person::

    {"type": "urn:editflow:problem:invalid_input", "title": "Invalid input",
     "status": 422, "detail": "prompt: must not be empty or only whitespace",
     "instance": "/v1/edits", "code": "invalid_input", "retriable": false,
     "errors": [{"field": "prompt", "message": "must not be empty or only whitespace"}]}

``errors`` lists every wrong field at once (named by its JSON path, e.g.
``template.params.scene``). The taxonomy is the shared one
(:mod:`editflow.core.errors`): permanent errors are 4xx, retriable ones 503
with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from editflow.core.errors import EditflowError, PermanentError, RetriableError

log = logging.getLogger("editflow.gateway")

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class FieldError(BaseModel):
    field: str | None = Field(None, description="JSON path of the wrong field, e.g. template.id")
    message: str


class Problem(BaseModel):
    """The ``application/problem+json`` body (RFC 9457) with editflow's extension members."""

    type: str = Field(description="URI naming the kind of problem")
    title: str
    status: int
    detail: str = Field(description="what is wrong and what to do about it")
    instance: str | None = Field(None, description="the request path")
    code: str = Field(description="stable machine-readable code")
    retriable: bool = Field(description="whether the same request may succeed later")
    errors: list[FieldError] = Field(default_factory=list)
    edit_id: str | None = None


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        retriable: bool = False,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
        edit_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retriable = retriable
        self.errors = list(errors)
        self.headers = headers or {}
        self.edit_id = edit_id


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    retriable: bool = False,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
    edit_id: str | None = None,
) -> JSONResponse:
    body = Problem(
        type=f"urn:editflow:problem:{code}",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        code=code,
        retriable=retriable,
        errors=list(errors),
        edit_id=edit_id,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def problem_bytes(status: int, code: str, detail: str, *, instance: str | None = None) -> bytes:
    """The body of a problem answered outside FastAPI (the ASGI guard middleware)."""
    body = Problem(
        type=f"urn:editflow:problem:{code}",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        code=code,
        retriable=status in (429, 503),
    )
    return json.dumps(body.model_dump(mode="json", exclude_none=True)).encode()


def field_path(loc: Sequence[int | str], *, prefix: str | None = None) -> str | None:
    """``("body", "template", "params", "scene")`` -> ``template.params.scene``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if prefix:
        parts = [prefix, *parts]
    return ".".join(parts) or None


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def field_errors(errors: Sequence[Any], *, prefix: str | None = None) -> list[FieldError]:
    out = []
    for error in errors:
        if error.get("type") == "json_invalid":
            continue
        out.append(
            FieldError(
                field=field_path(error.get("loc", ()), prefix=prefix), message=_message(error)
            )
        )
    return out


def validation_problem(
    errors: Sequence[FieldError], *, instance: str | None = None
) -> JSONResponse:
    detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
    return problem_response(
        422, "invalid_input", detail or "invalid request", instance=instance, errors=errors
    )


def from_pydantic(exc: ValidationError, *, prefix: str | None = None) -> ProblemError:
    """A pydantic error (e.g. from building the approval event) as a 422 naming the fields."""
    errors = field_errors(exc.errors(), prefix=prefix)
    detail = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
    return ProblemError(422, "invalid_input", detail or str(exc), errors=errors)


def install(app: FastAPI) -> None:
    """Route every error the app can raise to a problem document."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            instance=request.url.path,
            retriable=exc.retriable,
            errors=exc.errors,
            headers=exc.headers,
            edit_id=exc.edit_id,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = list(exc.errors())
        broken = [e for e in raw if e.get("type") == "json_invalid"]
        if broken:
            ctx = broken[0].get("ctx") or {}
            why = ctx.get("error") or "cannot be parsed"
            return problem_response(
                400,
                "malformed_json",
                f"the request body is not valid JSON: {why}",
                instance=request.url.path,
            )
        return validation_problem(field_errors(raw), instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "content_too_large",
        }
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        return problem_response(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            detail,
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(EditflowError)
    async def _editflow(request: Request, exc: EditflowError) -> JSONResponse:
        if isinstance(exc, RetriableError):
            return problem_response(
                503,
                exc.code,
                exc.message,
                instance=request.url.path,
                retriable=True,
                headers={"Retry-After": "5"},
            )
        status = 422 if isinstance(exc, PermanentError) else 500
        errors = [FieldError(field=exc.field, message=exc.message)] if exc.field else []
        return problem_response(
            status, exc.code, exc.message, instance=request.url.path, errors=errors
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(
            500,
            "internal",
            "the gateway failed unexpectedly; the error is logged",
            instance=request.url.path,
            retriable=True,
        )
