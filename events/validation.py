"""Decide whether an event off the wire is one editflow will act on.

:func:`parse_event` is the one door into the system for NATS messages::

    event = parse_event(msg.data, msg.headers, subject=msg.subject, policy=policy)

It returns a typed model (:class:`~editflow.events.models.ApprovalEvent`, …)
or raises :class:`~editflow.events.problems.EventRejected` listing *every*
problem with its path: size over the limit, a charset other than UTF-8,
unparsable JSON, an unknown ``specversion`` or ``type``, an event on a
subject its type may not use, a missing or wrong signature (when a signing
key is configured), and every schema violation in attributes and data.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from editflow.core.settings import EventsSettings
from editflow.events.binding import decode
from editflow.events.callback_subjects import CallbackSubjects
from editflow.events.models import (
    APPROVAL_V1,
    EVENT_TYPES,
    OA_EVENT_TYPES,
    REVIEW_ACTION_V1,
    SELECT_V1,
    SPECVERSION,
    WITHDRAW_V1,
    CloudEvent,
    Event,
)
from editflow.events.problems import EventRejected, Problem, Reason
from editflow.events.signing import SIGNATURE_ATTRIBUTE, verify

_GENERIC = CloudEvent  # unknown type: still check the envelope, to report every problem


@dataclass(frozen=True)
class Policy:
    """What a receiver accepts. Build it from settings with :meth:`from_settings`."""

    max_event_bytes: int = 64 * 1024
    signing_key: str | None = None
    #: event type -> the only subject it may arrive on (types not listed: any subject).
    subjects: Mapping[str, str] = field(default_factory=dict)
    #: the types this receiver accepts (``None``: every known type).
    accept: Collection[str] | None = None
    #: the rule for an approval's ``callback.nats_subject`` (``None``: only the schema's).
    callback_subjects: CallbackSubjects | None = None

    @classmethod
    def from_settings(
        cls, events: EventsSettings, *, accept: Collection[str] | None = None
    ) -> Policy:
        return cls(
            max_event_bytes=events.max_event_bytes,
            signing_key=events.signing_key.get_secret_value() if events.signing_key else None,
            subjects={
                APPROVAL_V1: events.approval_subject,
                WITHDRAW_V1: events.withdraw_subject,
                SELECT_V1: events.select_subject or f"{events.approval_subject}.select",
                REVIEW_ACTION_V1: events.review_action_subject
                or f"{events.approval_subject}.review",
            },
            accept=accept,
            callback_subjects=CallbackSubjects.from_settings(events),
        )


def message_size(body: bytes, headers: Mapping[str, str] | None) -> int:
    """Bytes an event occupies on the wire: payload plus header names and values."""
    return len(body) + sum(len(k) + len(v.encode()) for k, v in (headers or {}).items())


def parse_event(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    subject: str | None = None,
    policy: Policy | None = None,
) -> Event:
    """Validate and type one event; raise :class:`EventRejected` with all its problems."""
    policy = policy or Policy()
    size = message_size(body, headers)
    if size > policy.max_event_bytes:
        raise EventRejected(
            [
                Problem(
                    Reason.TOO_LARGE,
                    "",
                    f"event is {size} bytes; the limit is {policy.max_event_bytes} bytes "
                    "(send large inputs by URL, not inline)",
                )
            ]
        )
    raw = decode(body, headers)
    attrs, data = raw.attributes, raw.data
    event_id = attrs.get("id") if isinstance(attrs.get("id"), str) else None
    event_type = attrs.get("type") if isinstance(attrs.get("type"), str) else None
    problems: list[Problem] = []

    specversion = attrs.get("specversion")
    if specversion is None:
        problems.append(Problem(Reason.INVALID, "specversion", "required attribute is missing"))
    elif specversion != SPECVERSION:
        problems.append(
            Problem(
                Reason.UNSUPPORTED_SPECVERSION,
                "specversion",
                f"{specversion!r} is not supported; expected {SPECVERSION!r}",
            )
        )

    for required in ("id", "type"):
        # The models fill these in for a producer; a received event must bring its own.
        if attrs.get(required) in (None, ""):
            problems.append(Problem(Reason.INVALID, required, "required attribute is missing"))
        elif not isinstance(attrs[required], str):
            problems.append(
                Problem(
                    Reason.INVALID, required, f"must be a string (got {_short(attrs[required])})"
                )
            )

    accepted = set(policy.accept) if policy.accept is not None else set(EVENT_TYPES)
    model: type[CloudEvent] = _GENERIC
    if event_type is None:
        pass  # reported above
    elif event_type not in EVENT_TYPES or event_type not in accepted:
        problems.append(
            Problem(
                Reason.UNKNOWN_TYPE,
                "type",
                f"{event_type!r} is not accepted here; expected one of {sorted(accepted)}",
            )
        )
    else:
        model = EVENT_TYPES[event_type]
        expected_subject = policy.subjects.get(event_type)
        if subject is not None and expected_subject is not None and subject != expected_subject:
            problems.append(
                Problem(
                    Reason.WRONG_SUBJECT,
                    "",
                    f"{event_type} events are accepted only on {expected_subject!r}, "
                    f"not {subject!r}",
                )
            )
        if policy.signing_key and event_type in OA_EVENT_TYPES:
            problems.extend(_signature_problems(policy.signing_key, attrs, data))

    if model is EVENT_TYPES[APPROVAL_V1] and policy.callback_subjects is not None:
        problems.extend(_callback_subject_problems(policy.callback_subjects, data))

    # Attributes already reported (a wrong specversion, a missing id) are not repeated.
    reported = {p.path for p in problems if p.path}
    problems.extend(
        p for p in _schema_problems(model, attrs, data) if p.path.split(".")[0] not in reported
    )
    if problems:
        raise EventRejected(problems, event_id=event_id, event_type=event_type)
    return model.model_validate({**attrs, "data": data})  # type: ignore[return-value]


def _signature_problems(key: str, attrs: Mapping[str, Any], data: Any) -> list[Problem]:
    signature = attrs.get(SIGNATURE_ATTRIBUTE)
    if not signature:
        return [
            Problem(
                Reason.UNSIGNED,
                SIGNATURE_ATTRIBUTE,
                "a signing key is configured, so OA events must carry a 'signature' attribute "
                "(v1=<hex HMAC-SHA256>)",
            )
        ]
    if not isinstance(signature, str) or not verify(key, attrs, data, signature):
        return [
            Problem(
                Reason.BAD_SIGNATURE,
                SIGNATURE_ATTRIBUTE,
                "does not match the event (wrong key, or the event was changed after signing)",
            )
        ]
    return []


def _callback_subject_problems(rule: CallbackSubjects, data: Any) -> list[Problem]:
    callback = data.get("callback") if isinstance(data, dict) else None
    subject = callback.get("nats_subject") if isinstance(callback, dict) else None
    if not isinstance(subject, str) or subject.startswith(("$", "_INBOX.")):
        return []  # absent, or refused by the schema already (reported once, from there)
    if why := rule.problem(subject):
        return [Problem(Reason.INVALID, "data.callback.nats_subject", why)]
    return []


def _schema_problems(model: type[CloudEvent], attrs: Mapping[str, Any], data: Any) -> list[Problem]:
    candidate = {**attrs, "data": data}
    if data is None and model is not _GENERIC:
        candidate.pop("data")
    try:
        model.model_validate(candidate)
    except ValidationError as exc:
        return _problems_from(exc)
    return []


def _problems_from(exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        path = _path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against docs/schemas)"
        elif error["type"] not in ("value_error", "assertion_error"):
            message = f"{message} (got {_short(error.get('input'))})"
        problems.append(Problem(Reason.INVALID, path, message))
    return problems


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(value: Any) -> str:
    if isinstance(value, str | bytes | list | dict) and len(value) > 60:
        return f"a {type(value).__name__} of length {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
