"""The EditJob's phases and what each final one means to OA: shared by every layer.

The caches, the work index, the outbox and the decision function all need to know which
phases are final; keeping that here lets the lower layers stop importing the decision module.
"""

from __future__ import annotations

from typing import Any, Literal

FINAL_PHASES = ("Succeeded", "Failed", "NeedsReview", "Cancelled")
#: The completion event's status for each final phase.
OUTCOMES: dict[str, Literal["success", "failed", "needs_review", "cancelled"]] = {
    "Succeeded": "success",
    "Failed": "failed",
    "NeedsReview": "needs_review",
    "Cancelled": "cancelled",
}


def gpu_seconds(status: dict[str, Any]) -> float:
    """What an EditJob cost in GPU-seconds, all attempts (``costSeconds`` before gpuSeconds)."""
    if status.get("gpuSeconds") is not None:
        return float(status["gpuSeconds"])
    return float(status.get("costSeconds") or 0.0)


def delivered(status: dict[str, Any]) -> bool:
    """The final outcome in ``status`` reached OA: published, and recorded after publishing.

    ``completionEventId`` is written with the final phase (the outcome to deliver), and
    ``completionPublishedAt`` in the one write after the delivery (BRIEF §3);
    ``callbackDelivery`` stays ``pending`` while a webhook waits for its next try.
    """
    return bool(
        status.get("completionEventId")
        and status.get("completionPublishedAt")
        and status.get("callbackDelivery") != "pending"
    )
