"""What :func:`editflow.operator.decide.decide` reads and what it answers, as plain data.

Kept apart from the decision function so that the layers which gather an observation or
carry out a decision (the reconciler, the outbox) depend on these shapes, not on the
decision logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from editflow.core.errors import ErrorInfo
from editflow.operator.attempts import JOB_WORDS, AttemptState, StartWords


@dataclass(frozen=True)
class Observed:
    """Everything :func:`decide` may look at, gathered by the imperative shell."""

    editjob: dict[str, Any]
    now: datetime
    #: The current attempt as its dispatcher observed it (None: it has none, or it is gone).
    attempt: AttemptState | None = None
    #: How the dispatch mode tells that an attempt started (data, not a mode switch).
    words: StartWords = JOB_WORDS
    in_flight: int = 0
    queued_ahead: int = 0
    completion_id: str | None = None
    #: Why the spec must not run at all (a refused URL or callback subject), for new EditJobs.
    refusal: ErrorInfo | None = None
    #: The cap of the EditJob's lane (previews have a share of their own); None: the namespace's.
    cap: int | None = None


@dataclass
class Decision:
    """What to change: a status patch and the side effects, in the order the shell runs them."""

    status: dict[str, Any] = field(default_factory=dict)
    create_job: int | None = None
    delete_job: str | None = None
    publish_completion: bool = False
    publish_review: bool = False
    delete_editjob: bool = False
    #: The EditJob is being deleted and final: hand an undelivered outcome to the outbox,
    #: then remove the operator's finalizer.
    release_finalizer: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None
