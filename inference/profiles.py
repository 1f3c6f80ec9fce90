"""OA usage -> output profile (format, quality, size cap): the brief's §5 table.

Precedence for a request: fields the operator set explicitly in
``request.output`` win; otherwise the usage's profile; otherwise the
:class:`~editflow.events.worker_contract.OutputSpec` defaults (PNG).
A profile's ``max_long_side`` only ever shrinks the result below the
preprocessed input's size, never enlarges it.
"""

from __future__ import annotations

from dataclasses import dataclass

from editflow.events.worker_contract import OutputFormat, WorkerRequest


@dataclass(frozen=True)
class OutputProfile:
    format: OutputFormat
    quality: int = 95
    max_long_side: int | None = None


USAGE_PROFILES: dict[str, OutputProfile] = {
    # Article bodies: photographic JPEG, the platform recompresses above ~2 MB anyway.
    "wechat-article": OutputProfile("jpeg", quality=90),
    # Mini-program pages are laid out 750 px wide.
    "mini-program": OutputProfile("jpeg", quality=85, max_long_side=750),
    # Printed or large-screen display boards: lossless.
    "display-board": OutputProfile("png"),
    "poster": OutputProfile("png"),
    "web-banner": OutputProfile("jpeg", quality=90),
    "e-commerce": OutputProfile("jpeg", quality=92),
}


def output_profile(request: WorkerRequest) -> OutputProfile:
    """The encoding for ``request`` (explicit output fields > usage profile > defaults)."""
    base = USAGE_PROFILES.get((request.usage or "").strip().lower())
    explicit = request.output.model_fields_set
    if base is None:
        return OutputProfile(request.output.format, request.output.quality)
    return OutputProfile(
        format=request.output.format if "format" in explicit else base.format,
        quality=request.output.quality if "quality" in explicit else base.quality,
        max_long_side=base.max_long_side,
    )
