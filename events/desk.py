"""The designer's desk contract (docs/desk.md) as code: bucket names, the ticket, the claim and
the review action, shared by the operator (which writes tickets and handles actions) and the
gateway (which reads tickets, keeps claims and publishes actions).

The read model is deliberately tolerant (``extra="ignore"``): an operator one version ahead
may add a field to a ticket without breaking the desk of the gateway still behind it. The
action event is strict, as every event that makes editflow act (see :mod:`.models`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from editflow.events.models import (
    REVIEW_ACTION_V1,
    ReviewActionData,
    ReviewActionEvent,
    Reviewer,
)

__all__ = [
    "LANES",
    "REVIEW_ACTION_V1",
    "Attempt",
    "Claim",
    "Gate",
    "Lane",
    "PersonRef",
    "ResultRef",
    "ReviewActionData",
    "ReviewActionEvent",
    "Reviewer",
    "Ticket",
    "bucket_name",
    "claims_bucket_name",
]

Lane = Literal["needs_review", "flagged", "sample"]
#: The lanes in the order the desk shows them.
LANES: tuple[Lane, ...] = ("needs_review", "flagged", "sample")

#: Most worker log lines a ticket carries per attempt, and the longest line (docs/desk.md).
MAX_LOG_LINES = 20
MAX_LOG_LINE_CHARS = 200

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _bucket_token(namespace: str) -> str:
    if not namespace:
        raise ValueError("a desk bucket needs a namespace, got an empty one")
    return _UNSAFE.sub("_", namespace)


def bucket_name(namespace: str) -> str:
    """The read model's KV bucket of ``namespace``: ``EDITFLOW_DESK_<ns>`` (KV bucket names
    allow only ``[A-Za-z0-9_-]``; Kubernetes namespaces are DNS labels, so nothing collides)."""
    return f"EDITFLOW_DESK_{_bucket_token(namespace)}"


def claims_bucket_name(namespace: str) -> str:
    """The claims' KV bucket of ``namespace``: ``EDITFLOW_DESK_CLAIMS_<ns>``."""
    return f"EDITFLOW_DESK_CLAIMS_{_bucket_token(namespace)}"


class _ReadModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PersonRef(_ReadModel):
    """The applicant or an approver, as the approval named them."""

    id: str
    name: str | None = None


class ResultRef(_ReadModel):
    """One result image (a variant, or the only result) by its object key."""

    index: int = 1
    result_key: str


class Attempt(_ReadModel):
    """One attempt of the edit as a person needs it: who ran it, why it ended, its last log."""

    attempt: int
    worker: str | None = None
    error_code: str | None = None
    message: str | None = None
    log: list[str] = Field(default_factory=list, max_length=MAX_LOG_LINES)


class Gate(_ReadModel):
    """The quality gate's verdict and its figures (changed fraction, SSIM, spread)."""

    verdict: str
    figures: dict[str, float] = Field(default_factory=dict)


class Ticket(_ReadModel):
    """One open ticket of the desk: an EditJob in a lane (docs/desk.md, "Read model")."""

    namespace: str
    name: str
    uid: str
    lane: Lane
    since: datetime | None = Field(None, description="when it entered the lane (finishedAt)")
    phase: str
    reason: str | None = Field(None, description="status.errorCode, e.g. quality_gate")
    message: str | None = None
    approval_event_id: str | None = None
    department: str | None = None
    usage: str | None = None
    model: str | None = None
    template: str | None = None
    instruction: str
    original_instruction: str | None = Field(
        None, description="set once a reviewer re-ran it with a corrected instruction"
    )
    applicant: PersonRef | None = None
    approvers: list[PersonRef] = Field(default_factory=list)
    input_key: str | None = None
    results: list[ResultRef] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    gate: Gate | None = None
    review_attempts: int = 0


class Claim(_ReadModel):
    """A reviewer's claim on a ticket, in ``EDITFLOW_DESK_CLAIMS_<ns>`` (docs/desk.md)."""

    reviewer: Reviewer
    until: datetime
