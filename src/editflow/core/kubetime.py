"""Kubernetes timestamps, written and read in one place.

The apiserver's ``metav1.Time`` is RFC 3339 in UTC to the second (``2026-11-25T12:00:00Z``).
EditJob status, conditions, Events and annotations all carry it, so every writer must agree
on the exact format: a ``+00:00`` offset or a fraction would still parse in Go, but would make
two status patches of the same moment differ and cost a write.
"""

from __future__ import annotations

from datetime import UTC, datetime

#: ``metav1.Time``'s serialisation.
FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(moment: datetime | float | None = None) -> str:
    """``moment`` (an aware datetime, a Unix time, or now) as a Kubernetes timestamp."""
    if moment is None:
        moment = datetime.now(UTC)
    elif isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime(FORMAT)


def parse_stamp(value: str | None) -> datetime | None:
    """A Kubernetes timestamp as an aware datetime (``None`` for an empty value); a value in
    another format raises ``ValueError``."""
    if not value:
        return None
    return datetime.strptime(value, FORMAT).replace(tzinfo=UTC)
