"""One error taxonomy for the operator, the worker, events and the gateway.

Every failure the product reports carries a stable ``code`` (what a program
matches on), a ``message`` (what a person reads: what went wrong and what to
fix) and whether it is ``retriable`` (infrastructure hiccup: try again) or
permanent (the applicant must change the input)::

    EditflowError
    +-- PermanentError          exit code 2..  never retried
    |   +-- InvalidInputError   a field is wrong (names the field)
    |   +-- UnsafeSourceError   SSRF guard refused an address
    |   +-- ImageRejectedError  not an image, truncated, too large
    |   +-- PromptRejectedError empty or over the token budget
    +-- RetriableError          exit code 7x   another attempt may succeed
        +-- UpstreamError       fetch/S3/NATS temporarily unavailable
        +-- ModelError          the model or GPU failed

The worker's exit code is part of the operator contract: the Job's pod
failure policy fails the Job at once on the permanent codes, and the operator
retries only on the retriable ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes of editflow programs (the worker contract)."""

    OK = 0
    INVALID_INPUT = 2
    UNSAFE_SOURCE = 3
    IMAGE_REJECTED = 4
    PROMPT_REJECTED = 5
    UPSTREAM_UNAVAILABLE = 70
    MODEL_FAILED = 71
    UNEXPECTED = 72


#: Exit codes that mean "do not retry": the pod failure policy lists exactly these.
PERMANENT_EXIT_CODES: tuple[int, ...] = tuple(c.value for c in ExitCode if 1 < c.value < 70)


@dataclass(frozen=True)
class ErrorInfo:
    """The serialisable form of an error, used on every wire (CloudEvents, HTTP, results)."""

    code: str
    message: str
    retriable: bool
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retriable": self.retriable,
        }
        if self.field is not None:
            data["field"] = self.field
        return data


class EditflowError(Exception):
    """Base of every error editflow raises on purpose."""

    code: str = "internal"
    retriable: bool = False
    exit_code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            code=self.code, message=self.message, retriable=self.retriable, field=self.field
        )

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"[{self.code}] {where}{self.message}"


class PermanentError(EditflowError):
    """The input is wrong; retrying the same input can never succeed."""

    code = "permanent"
    retriable = False
    exit_code = ExitCode.INVALID_INPUT


class InvalidInputError(PermanentError):
    code = "invalid_input"
    exit_code = ExitCode.INVALID_INPUT


class UnsafeSourceError(PermanentError):
    code = "unsafe_source"
    exit_code = ExitCode.UNSAFE_SOURCE


class ImageRejectedError(PermanentError):
    code = "image_rejected"
    exit_code = ExitCode.IMAGE_REJECTED


class PromptRejectedError(PermanentError):
    code = "prompt_rejected"
    exit_code = ExitCode.PROMPT_REJECTED


class EditCancelledError(PermanentError):
    """The edit was cancelled while it ran (withdrawn, deleted): its result is not wanted."""

    code = "cancelled"
    exit_code = ExitCode.UNEXPECTED


class RetriableError(EditflowError):
    """Something outside the input failed; another attempt may succeed."""

    code = "retriable"
    retriable = True
    exit_code = ExitCode.UPSTREAM_UNAVAILABLE


class UpstreamError(RetriableError):
    code = "upstream_unavailable"
    exit_code = ExitCode.UPSTREAM_UNAVAILABLE


class ModelError(RetriableError):
    code = "model_failed"
    exit_code = ExitCode.MODEL_FAILED


def is_retriable_exit_code(exit_code: int) -> bool:
    """Whether a worker that exited with ``exit_code`` may be tried again.

    Unknown non-zero codes (OOM kill 137, segfault 139, ...) are treated as
    retriable infrastructure failures: a designer reviews them after the last
    attempt instead of the applicant being told their input was wrong.
    """
    if exit_code == 0:
        return False
    return exit_code not in PERMANENT_EXIT_CODES
