"""The log lines of one warm attempt, kept for its result (the designer's desk shows them).

A Job-mode attempt has a Pod of its own, and Kubernetes keeps the end of its log as the
termination message, where the operator's desk finds it. A warm worker runs many attempts
in one Pod, so it keeps each attempt's own lines itself: :func:`capture` installs one
handler on the root logger that appends a record to the list of the attempt whose context
logged it (a context variable, which the worker copies into the edit's thread), so
the lines of the heartbeat loop, of other attempts or of other threads never mix in.

Only editflow's own loggers are kept (the worker's structured lines, which already leave
URL signatures, credentials and tokens out), rendered without their tracebacks (a
traceback's frames can hold a presigned URL or a key); at most :data:`MAX_LINES` lines
(the last ones) of at most :data:`MAX_LINE_CHARS` characters, each still a JSON object
(its longest text fields shortened first).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime

from editflow.events.desk import MAX_LOG_LINE_CHARS, MAX_LOG_LINES

MAX_LINES = MAX_LOG_LINES
MAX_LINE_CHARS = MAX_LOG_LINE_CHARS
#: Loggers whose records are the worker's own lines.
OWN_LOGGERS = "editflow"
#: Fields every line of one attempt carries anyway (the result names the attempt).
_SAME_FOR_EVERY_LINE = frozenset({"edit_id", "attempt", "event_id"})
#: A text field is never shortened below this many characters.
_SHORTEST = 24

_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

_LINES: contextvars.ContextVar[deque[str] | None] = contextvars.ContextVar(
    "editflow_attempt_log", default=None
)


def line(record: logging.LogRecord) -> str:
    """One record as a short JSON line: time, level, message and its ``extra=`` fields."""
    payload: dict[str, object] = {
        "ts": datetime.fromtimestamp(record.created, tz=UTC).strftime("%H:%M:%S"),
        "level": record.levelname.lower(),
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        skipped = key in _STANDARD or key in _SAME_FOR_EVERY_LINE or key.startswith("_")
        if not skipped and value is not None:
            payload[key] = value
    return _within_limit(payload)


def _within_limit(payload: dict[str, object]) -> str:
    """The JSON of ``payload`` in MAX_LINE_CHARS, still JSON: the longest text fields are
    shortened first (a long error message gives way to the prompt beside it)."""
    text = json.dumps(payload, default=str, ensure_ascii=False)
    if len(text) > MAX_LINE_CHARS:  # nested values become text, so they can be shortened too
        for key, value in payload.items():
            if isinstance(value, dict | list | tuple):
                payload[key] = json.dumps(value, default=str, ensure_ascii=False)
        text = json.dumps(payload, default=str, ensure_ascii=False)
    while len(text) > MAX_LINE_CHARS:
        texts = [k for k, v in payload.items() if isinstance(v, str) and k not in ("ts", "level")]
        longest = max(texts, key=lambda k: len(str(payload[k])), default=None)
        # Each pass makes the line strictly shorter: a field is cut only to under its length.
        if longest is None or len(str(payload[longest])) <= _SHORTEST + 1:
            break
        value = str(payload[longest])
        keep = max(_SHORTEST, len(value) - (len(text) - MAX_LINE_CHARS) - 1)
        payload[longest] = value[:keep] + "…"
        text = json.dumps(payload, default=str, ensure_ascii=False)
    return text[:MAX_LINE_CHARS]


class _AttemptHandler(logging.Handler):
    """Appends each own record to the list of the attempt that logged it, if any."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = _LINES.get()
        if lines is None or not record.name.startswith(OWN_LOGGERS):
            return
        try:
            lines.append(line(record))
        except Exception:  # a record that cannot be rendered is not worth failing an edit
            self.handleError(record)


_HANDLER = _AttemptHandler()


@contextlib.contextmanager
def capture() -> Iterator[deque[str]]:
    """Keep the lines logged in this context (and threads run in a copy of it) meanwhile.

    The caller must start the attempt's thread inside the block, with
    ``contextvars.copy_context()``, so that its records find this list.
    """
    root = logging.getLogger()
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    lines: deque[str] = deque(maxlen=MAX_LINES)
    token = _LINES.set(lines)
    try:
        yield lines
    finally:
        _LINES.reset(token)
