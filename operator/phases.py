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
