"""The automatic quality gate: does the result look like the edit the instruction asked for?

The first deployment checked quality by hand, 5 % of edits sampled daily. This gate looks
at every result, with three figures computed from the preprocessed input and the result
(both in the worker, before upload), all pure functions of two images and an instruction:

* ``changed_fraction``: the share of pixels that changed, from a *blurred* difference map
  (Gaussian blur first, so resampling noise and JPEG ringing at edges do not count as a
  change; a pixel counts when its blurred luminance moved by more than ``pixel_delta``);
* ``ssim``: the global structural similarity of the two (mean of the SSIM map over 7x7
  windows, luminance, the standard constants), 1.0 for identical images;
* ``spread``: how evenly the change spreads over the image, the normalised entropy of the
  changed pixels over an 8x8 grid: near 0 when the change sits in one place, 1.0 when every
  cell changed alike.

Verdicts: ``ok``; ``no_visible_change`` (the edit did nothing: almost no pixel changed and
the structure is the same); ``global_change`` (a *local* instruction, yet the change covers
much of the image and spreads evenly over it: the model repainted the picture).
Instructions about the background, the style or the colour of the whole image are *global*
and exempt from ``global_change``, by template (``replace-background``, ``change-season``)
and by keywords of a free instruction. What counts as "little" differs by kind of edit: a
watermark or text edit changes a few percent of the image (*subtle*), an object edit more
(*local*), a background swap most of it (*global*); each kind has its own thresholds
(:data:`DEFAULT_THRESHOLDS`), configurable (``EDITFLOW_WORKER__GATE_THRESHOLDS``).

What the operator does with the verdict is its ``gate.mode``: ``advisory`` records it (and
samples every flagged edit for review), ``enforce`` sends flagged edits to NeedsReview.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

from editflow.events.worker_contract import QualityReport

EditKind = Literal["subtle", "local", "global"]  # == editflow.core.settings.GATE_KINDS

#: The side the figures are computed at: enough for a verdict, cheap on any CPU.
ANALYSIS_SIDE = 256
#: Gaussian blur radius (pixels at :data:`ANALYSIS_SIDE`) before differencing.
BLUR_RADIUS = 1.5
#: Luminance change (0..1) above which a blurred pixel counts as changed.
PIXEL_DELTA = 0.06
GRID = 8


@dataclass(frozen=True)
class GateThresholds:
    """When a result of one kind of edit is flagged."""

    #: At most this changed fraction, with ``ssim`` at least ``no_change_ssim``: no change.
    no_change_fraction: float
    no_change_ssim: float
    #: At least this changed fraction, spread at least ``global_spread``: a global change.
    #: None: this kind of edit may change the whole image.
    global_fraction: float | None
    global_spread: float = 0.85


DEFAULT_THRESHOLDS: dict[EditKind, GateThresholds] = {
    # A watermark removed or a word replaced: a change of well under 1 % is still a change.
    "subtle": GateThresholds(0.0005, 0.995, global_fraction=0.5),
    "local": GateThresholds(0.002, 0.99, global_fraction=0.6),
    # A new background or style changes most of the image by design.
    "global": GateThresholds(0.01, 0.98, global_fraction=None),
}

#: Templates of the gateway's catalogue (gateway/templates.py) and the kind of edit they are.
TEMPLATE_KINDS: dict[str, EditKind] = {
    "replace-background": "global",
    "change-season": "global",
    "remove-watermark": "subtle",
    "replace-text": "subtle",
    "add-text": "subtle",
    "change-colour": "local",
    "remove-object": "local",
    "replace-object": "local",
}

# Keywords of free instructions, Chinese and English, checked in this order.
_GLOBAL = re.compile(
    r"背景|风格|画风|滤镜|色调|整体|整张|全图|季节|黑白|油画|水彩|卡通|动漫|复古|"
    r"background|backdrop|\bstyle\b|\bfilter\b|colou?r (?:grade|tone|scheme)|"
    r"(?:whole|entire|full) (?:image|picture|photo)|\bseason\b|black and white|"
    r"\bsepia\b|oil painting|watercolou?r|cartoon|anime|vintage",
    re.IGNORECASE,
)
_SUBTLE = re.compile(
    r"水印|文字|文本|字样|标志|logo|watermark|\btext\b|\bword|\bcaption|\blabel\b|\bsign\b",
    re.IGNORECASE,
)


def edit_kind(instruction: str, template: str | None = None) -> EditKind:
    """The kind of edit: by its template when it has one, else by keywords of the text."""
    if template in TEMPLATE_KINDS:
        return TEMPLATE_KINDS[template]
    if _GLOBAL.search(instruction):
        return "global"
    if _SUBTLE.search(instruction):
        return "subtle"
    return "local"


def _luminance(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    small = image.convert("L").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float64) / 255.0


def _analysis_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    scale = ANALYSIS_SIDE / max(width, height)
    return max(GRID, round(width * scale)), max(GRID, round(height * scale))


def _box_mean(values: np.ndarray, window: int = 7) -> np.ndarray:
    """Mean over every ``window`` x ``window`` block (valid region), by an integral image."""
    integral = np.pad(values, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    total = (
        integral[window:, window:]
        - integral[:-window, window:]
        - integral[window:, :-window]
        + integral[:-window, :-window]
    )
    return total / (window * window)


def structural_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Global SSIM of two luminance arrays in 0..1 (Wang et al. 2004, 7x7 uniform windows)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _box_mean(a), _box_mean(b)
    var_a = _box_mean(a * a) - mu_a**2
    var_b = _box_mean(b * b) - mu_b**2
    cov = _box_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


def change_map(before: Image.Image, after: Image.Image) -> np.ndarray:
    """Boolean map of changed pixels at the analysis size, from blurred luminance."""
    size = _analysis_size(before)
    blur = ImageFilter.GaussianBlur(BLUR_RADIUS)
    a = _luminance(before.convert("RGB").filter(blur), size)
    b = _luminance(after.convert("RGB").resize(before.size).filter(blur), size)
    return np.abs(a - b) > PIXEL_DELTA


def spread_of(changed: np.ndarray) -> float:
    """Normalised entropy (0..1) of the changed pixels over a GRID x GRID partition."""
    total = int(changed.sum())
    if total == 0:
        return 0.0
    rows = np.array_split(np.arange(changed.shape[0]), GRID)
    cols = np.array_split(np.arange(changed.shape[1]), GRID)
    counts = np.array([changed[np.ix_(r, c)].sum() for r in rows for c in cols], dtype=np.float64)
    shares = counts[counts > 0] / total
    return float(-(shares * np.log(shares)).sum() / math.log(GRID * GRID))


def assess(
    before: Image.Image,
    after: Image.Image,
    instruction: str,
    *,
    template: str | None = None,
    thresholds: dict[str, GateThresholds] | None = None,
) -> QualityReport:
    """The gate's figures and verdict for ``after`` as an edit of ``before``."""
    kind = edit_kind(instruction, template)
    limits = (thresholds or {}).get(kind) or DEFAULT_THRESHOLDS[kind]
    changed = change_map(before, after)
    size = changed.shape[1], changed.shape[0]
    fraction = float(changed.mean())
    ssim = structural_similarity(_luminance(before, size), _luminance(after, size))
    spread = spread_of(changed)
    if fraction <= limits.no_change_fraction and ssim >= limits.no_change_ssim:
        verdict, reason = (
            "no_visible_change",
            f"only {fraction:.2%} of the image changed (SSIM {ssim:.3f}): the edit did nothing "
            "visible",
        )
    elif (
        limits.global_fraction is not None
        and fraction >= limits.global_fraction
        and spread >= limits.global_spread
    ):
        verdict, reason = (
            "global_change",
            f"a {kind} instruction changed {fraction:.0%} of the image, evenly (spread "
            f"{spread:.2f}): the whole picture was repainted",
        )
    else:
        verdict, reason = "ok", f"{fraction:.1%} of the image changed ({kind} edit)"
    return QualityReport(
        verdict=verdict,
        kind=kind,
        changed_fraction=round(fraction, 4),
        ssim=round(ssim, 4),
        spread=round(spread, 3),
        reason=reason,
    )


def thresholds_from_settings(raw: dict[str, Any] | None) -> dict[str, GateThresholds]:
    """``{"subtle": {"no_change_fraction": 0.001, ...}}`` over the defaults, per kind
    (the names were checked when the settings loaded: WorkerSettings.gate_thresholds)."""
    merged: dict[str, GateThresholds] = dict(DEFAULT_THRESHOLDS)
    for kind, overrides in (raw or {}).items():
        base = DEFAULT_THRESHOLDS[kind]  # type: ignore[index]
        merged[kind] = GateThresholds(**{**base.__dict__, **overrides})
    return merged
