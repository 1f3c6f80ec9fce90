"""Exponential backoff between retries, in one place.

Every loop that restarts or retries after trouble (the operator's supervised loops, the
approval bridge, the informers' watches, JetStream pulls, publishes and connects, the
gateway's NATS connection, S3 writes) waits the same way: ``initial``, doubled after
each failure up to ``maximum``, back to ``initial`` after a success. A library (tenacity,
backoff) would wrap each call in a decorator, but most of these loops are long-lived and
reset on success rather than give up, which a five-line class says more plainly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The delay before the next retry: :attr:`delay`, then :meth:`grow` after waiting it."""

    initial: float
    maximum: float
    delay: float = field(init=False)

    def __post_init__(self) -> None:
        self.delay = self.initial

    def grow(self) -> float:
        """The delay to wait now; the next one is twice as long (up to ``maximum``)."""
        current = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return current

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self.delay = self.initial
