"""Cancelling the edit a warm worker runs, from its control subscription (issue 20 §6).

A withdrawn or deleted edit must free its GPU within seconds, and the worker must stay up for
the next one. The control handler runs on the event loop; the edit runs in its own thread.
They share one :class:`Cancellation` per edit, found by the edit's code through a context
variable (the edit thread runs in a copy of the caller's context, see ``serve.py``):

* before the model runs, the edit checks it between its steps (fetch, preprocess);
* while the model runs, cancelling sets the pipeline's ``_interrupt``, which diffusers'
  denoising loops (LongCat's among them) check at every step: the remaining steps are skipped;
* after the model returns, the edit checks again and raises instead of uploading a result.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from editflow.core.errors import EditCancelledError


class Cancellation:
    """One edit's cancel request; thread-safe (an Event and a reference swap)."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self.reason = ""
        self._pipe: Any = None

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def cancel(self, reason: str) -> None:
        self.reason = reason or "cancelled"
        self._requested.set()
        pipe = self._pipe
        if pipe is not None:
            pipe._interrupt = True  # diffusers' denoising loop skips the remaining steps

    def attach(self, pipe: Any) -> None:
        """The model about to run: a cancel from now on interrupts it."""
        self._pipe = pipe
        if self.requested:
            pipe._interrupt = True

    def detach(self) -> None:
        self._pipe = None

    def check(self) -> None:
        if self.requested:
            raise EditCancelledError(f"the edit was cancelled while it ran: {self.reason}")


CURRENT: contextvars.ContextVar[Cancellation | None] = contextvars.ContextVar(
    "editflow_cancellation", default=None
)


def check() -> None:
    """Raise :class:`EditCancelledError` if the edit of this context was cancelled."""
    token = CURRENT.get()
    if token is not None:
        token.check()
