"""Which NATS subjects an approval may name as its callback (``callback.nats_subject``).

The operator publishes the completion to that subject with its own NATS
credentials, so an unchecked subject is a way in: ``$JS.API.STREAM.DELETE.…``
would call the JetStream API, ``_INBOX.…`` would answer someone else's
request, ``editflow.work.…`` or the approvals subject would forge editflow's
own traffic. A callback subject is therefore accepted only when it

* lies under the configured prefix (``events.callback_subject_prefix``,
  default ``oa.callbacks.``) with at least one token after it, and
* is none of the NATS system namespaces (``$…``, ``_INBOX.…``) nor one of
  editflow's own subjects (approvals, withdrawals, completions, reviews,
  dead letters, work, worker results, heartbeats and control), whatever the prefix says.

:meth:`CallbackSubjects.problem` is the one check; the event validation
(:mod:`editflow.events.validation`), the gateway and the operator call it.
"""

from __future__ import annotations

from dataclasses import dataclass

from editflow.core.settings import EventsSettings
from editflow.events.worker_contract import (
    RESULT_SUBJECT_PREFIX,
    WORK_SUBJECT_PREFIX,
    WORKER_CONTROL_PREFIX,
    WORKER_STATUS_PREFIX,
)

#: NATS' own namespaces: the JetStream/system/KV/object APIs and reply inboxes.
SYSTEM_PREFIXES = ("$", "_INBOX.")


def _under(subject: str, prefix: str) -> bool:
    base = prefix.rstrip(".")
    return subject == base or subject.startswith(base + ".")


@dataclass(frozen=True)
class CallbackSubjects:
    """The callback subject rule of one installation."""

    prefix: str = "oa.callbacks."
    #: editflow's own subjects and subject prefixes (never a callback, whatever the prefix).
    own: tuple[str, ...] = (WORK_SUBJECT_PREFIX, RESULT_SUBJECT_PREFIX)

    @classmethod
    def from_settings(cls, events: EventsSettings) -> CallbackSubjects:
        return cls(
            prefix=events.callback_subject_prefix,
            own=(
                events.approval_subject,
                events.withdraw_subject,
                events.completion_subject_prefix,
                events.review_subject_prefix,
                events.dlq_subject_prefix,
                WORK_SUBJECT_PREFIX,
                RESULT_SUBJECT_PREFIX,
                WORKER_STATUS_PREFIX,
                WORKER_CONTROL_PREFIX,
            ),
        )

    def problem(self, subject: str) -> str | None:
        """Why ``subject`` may not be a callback (``None``: it may)."""
        if subject.startswith(SYSTEM_PREFIXES):
            return (
                f"{subject!r} is a NATS system subject ($JS., $SYS., $KV., _INBOX. ...); "
                f"use a subject under {self.prefix!r}"
            )
        for own in self.own:
            if _under(subject, own):
                return f"{subject!r} is one of editflow's own subjects ({own}); use {self.prefix!r}"
        base = self.prefix.rstrip(".")
        if not subject.startswith(base + "."):
            return (
                f"{subject!r} is not under the callback prefix {self.prefix!r} "
                f"(e.g. {base}.my-oa.done)"
            )
        return None
