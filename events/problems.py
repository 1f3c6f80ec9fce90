"""Why an event was rejected: every problem at once, each with its field path.

An OA developer whose event bounces should fix it in one round, so
validation collects all problems (like the cloudevents SDK's
``CloudEventValidationError``) instead of stopping at the first. The one
exception type, :class:`EventRejected`, is a
:class:`~editflow.core.errors.InvalidInputError` (permanent: retrying the
same bytes can never succeed) and carries a :class:`Reason` code that
programs match on and that the dead letter records.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from editflow.core.errors import ErrorInfo, InvalidInputError


class Reason(StrEnum):
    """Why an event was refused, most fundamental first (the first problem's reason wins)."""

    TOO_LARGE = "too_large"
    WRONG_CHARSET = "wrong_charset"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    MALFORMED = "malformed"
    UNSUPPORTED_SPECVERSION = "unsupported_specversion"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_SUBJECT = "wrong_subject"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    INVALID = "invalid"


_ORDER = {reason: index for index, reason in enumerate(Reason)}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an event: where (``data.image_url``), what, and what was expected."""

    reason: Reason
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "path": self.path, "message": self.message}


class EventRejected(InvalidInputError):
    """An event that editflow will not act on; ``problems`` lists everything wrong with it."""

    code = "invalid_event"

    def __init__(
        self,
        problems: list[Problem],
        *,
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> None:
        if not problems:
            raise ValueError("EventRejected needs at least one problem")
        self.problems = sorted(problems, key=lambda p: _ORDER[p.reason])
        self.reason: Reason = self.problems[0].reason
        self.event_id = event_id
        self.event_type = event_type
        text = "; ".join(str(p) for p in self.problems)
        super().__init__(
            f"event rejected ({self.reason.value}): {text}", field=self.problems[0].path or None
        )

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            code=f"{self.code}.{self.reason.value}",
            message=self.message,
            retriable=False,
            field=self.field,
        )
