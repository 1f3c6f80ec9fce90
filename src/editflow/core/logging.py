"""One logger setup for every editflow process: structured JSON lines by default.

Each record is one JSON object with ``ts``, ``level``, ``logger``, ``msg`` and
any ``extra=`` fields, so log pipelines can index edit ids and phases without
parsing prose. ``console`` format is for people at a terminal.

Under load a person must be able to read the log: editflow logs one line per
*decision* (an EditJob created, an edit accepted, a client rate limited),
never one per HTTP request. The libraries that log per request or per
object are therefore held at WARNING unless the level is DEBUG
(:data:`PER_REQUEST_LOGGERS`): httpx/httpcore ("HTTP Request: GET ..." for
every apiserver and webhook call), kopf (a "Handler ... succeeded" line per
object and handler; its warnings and errors still show), and the uvicorn
and aiohttp access logs (the gateway counts every request in its metrics).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


#: Loggers that write a line per HTTP request or per watched object: WARNING unless DEBUG.
PER_REQUEST_LOGGERS = (
    "httpx",
    "httpx2",
    "httpcore",
    "kopf",
    "uvicorn.access",
    "aiohttp.access",
)


#: Fields every record logged in this context carries (``log_context``): a warm worker sets
#: the edit id and attempt around each edit, so each of its lines names the edit it is about.
_CONTEXT: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "editflow_log_context", default=()
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block (this task or thread only).

    Threads do not inherit context variables: code that hands work to a thread runs it
    in ``contextvars.copy_context()`` to keep the fields (editflow.inference.serve does).
    """
    token = _CONTEXT.set(tuple({**dict(_CONTEXT.get()), **fields}.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Copies the :func:`log_context` fields onto each record (a record's own ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object, carrying ``extra=`` fields through."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Install the editflow handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_editflow", False):
            root.removeHandler(existing)
    handler._editflow = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    debug = root.getEffectiveLevel() <= logging.DEBUG
    for name in PER_REQUEST_LOGGERS:
        # NOTSET at DEBUG: they follow the root again when a person asks for everything.
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
