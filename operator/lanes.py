"""Lanes of the namespace GPU cap: approvers' previews get a share of their own.

A preview (``spec.preview``: Turbo, 8 steps, reduced size) is what a level-2 approver
looks at before approving; it must not wait behind a backlog of full edits, and a burst
of previews must not starve the full edits either. So the cap
``max_running_per_namespace`` is split: ``preview_slots`` of it for previews, the rest for
full edits. Each lane has its own queue and in-flight count in the
:class:`~editflow.operator.workindex.WorkIndex`, which keys them as namespaces: the preview
lane of ``edits`` is ``edits|preview`` (``|`` is never part of a namespace name).
With ``preview_slots`` 0 previews share the full edits' lane and cap.
"""

from __future__ import annotations

from typing import Any

from editflow.core.settings import OperatorSettings
from editflow.operator.names import LABEL_LANE, LANE_PREVIEW

SEPARATOR = "|"


def is_preview(obj: dict[str, Any] | None) -> bool:
    """An EditJob (spec.preview) or one of its Jobs (the lane label) of a preview."""
    if not obj:
        return False
    if (obj.get("spec") or {}).get("preview"):
        return True
    return (obj.get("metadata", {}).get("labels") or {}).get(LABEL_LANE) == LANE_PREVIEW


def lane(namespace: str, obj: dict[str, Any] | None, settings: OperatorSettings) -> str:
    """The work index's key for ``obj``'s lane in ``namespace``."""
    if settings.preview_slots and is_preview(obj):
        return f"{namespace}{SEPARATOR}{LANE_PREVIEW}"
    return namespace


def lanes(namespace: str, settings: OperatorSettings) -> list[str]:
    return [namespace] + (
        [f"{namespace}{SEPARATOR}{LANE_PREVIEW}"] if settings.preview_slots else []
    )


def namespace_of(lane_key: str) -> str:
    return lane_key.split(SEPARATOR, 1)[0]


def cap(lane_key: str, settings: OperatorSettings) -> int:
    """Attempts that may run at once in this lane."""
    if SEPARATOR in lane_key:
        return settings.preview_slots
    return settings.max_running_per_namespace - settings.preview_slots
