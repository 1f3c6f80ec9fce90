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

import json
import logging
import sys
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
    root.addHandler(handler)
    root.setLevel(level.upper())
    debug = root.getEffectiveLevel() <= logging.DEBUG
    for name in PER_REQUEST_LOGGERS:
        # NOTSET at DEBUG: they follow the root again when a person asks for everything.
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
