"""The quality gate as pure code, on synthetic images whose answer is known by construction."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from editflow.core.settings import WorkerSettings
from editflow.inference.quality import (
    DEFAULT_THRESHOLDS,
    assess,
    edit_kind,
    spread_of,
    thresholds_from_settings,
)


def poster(size: tuple[int, int] = (768, 512), square: str = "red") -> Image.Image:
    """Sky gradient, ground, one coloured square: structure for SSIM to see."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    width, height = size
    for y in range(height):
        shade = int(80 + 150 * y / height)
        draw.line([(0, y), (width, y)], fill=(shade // 2, shade // 2 + 30, shade))
    draw.rectangle([0, int(height * 0.75), width, height], fill=(90, 140, 70))
    draw.rectangle([300, 180, 420, 300], fill=square, outline="white", width=4)
    return image


def jpeg_roundtrip(image: Image.Image, quality: int = 85) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def repainted(size: tuple[int, int] = (768, 512)) -> Image.Image:
    """Every region of the image different: what a model that ignored the input returns."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 255, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)


def test_an_unchanged_result_is_no_visible_change_even_after_jpeg_encoding() -> None:
    before = poster()
    for after in (before.copy(), jpeg_roundtrip(before)):
        report = assess(before, after, "make the red square blue")
        assert report.verdict == "no_visible_change", report
        assert report.changed_fraction < 0.002 and report.ssim > 0.99
    assert "did nothing" in report.reason


def test_a_local_edit_of_a_local_instruction_is_ok_and_concentrated() -> None:
    report = assess(poster(), poster(square="blue"), "make the red square blue")
    assert report.verdict == "ok", report
    assert report.kind == "local"
    assert 0.01 < report.changed_fraction < 0.1
    assert report.spread < 0.5  # one place of the image


def test_a_repainted_image_for_a_local_instruction_is_a_global_change() -> None:
    report = assess(poster(), repainted(), "make the red square blue")
    assert report.verdict == "global_change", report
    assert report.changed_fraction > 0.6 and report.spread > 0.85
    assert "repainted" in report.reason


@pytest.mark.parametrize(
    ("instruction", "template"),
    [
        ("把背景换成海边日落", None),
        ("Replace the background with a beach at sunset", None),
        ("turn it into an oil painting", None),
        ("把整张图片改成黑白", None),
        ("make it look like winter", "change-season"),  # the template decides
    ],
)
def test_instructions_about_the_whole_image_are_exempt_from_global_change(
    instruction: str, template: str | None
) -> None:
    report = assess(poster(), repainted(), instruction, template=template)
    assert report.kind == "global"
    assert report.verdict == "ok", report


def test_the_kind_of_edit_sets_how_little_change_is_still_a_change() -> None:
    """A watermark removal touches a sliver of the image: a change for a subtle edit, while
    the same sliver for an object edit means the object did not change."""
    before = poster()
    after = before.copy()
    ImageDraw.Draw(after).rectangle([20, 20, 34, 28], fill="white")  # ~0.05 % of the image
    subtle = assess(before, after, "去掉图片上的水印")
    local = assess(before, after, "replace the red square with a green ball")
    assert (subtle.kind, subtle.verdict) == ("subtle", "ok")
    assert (local.kind, local.verdict) == ("local", "no_visible_change")


@pytest.mark.parametrize(
    ("instruction", "template", "kind"),
    [
        ("把背景换成海边", None, "global"),
        ("change the photo's colour grade to warm", None, "global"),
        ("去掉右下角的水印", None, "subtle"),
        ('replace the text "Spring" with "Summer"', None, "subtle"),
        ("把杯子换成一杯橙汁", None, "local"),
        ("remove the person on the left", None, "local"),
        ("anything at all", "remove-watermark", "subtle"),
        ("anything at all", "replace-background", "global"),
        ("anything at all", "no-such-template", "local"),
    ],
)
def test_edit_kind_by_template_then_keywords(instruction: str, template: str | None, kind: str):
    assert edit_kind(instruction, template) == kind


def test_a_result_at_another_size_is_compared_at_the_input_framing() -> None:
    report = assess(poster((768, 512)), poster((1152, 768), square="blue"), "make it blue")
    assert report.verdict == "ok" and report.changed_fraction < 0.1


def test_spread_is_zero_for_no_change_low_for_one_blob_and_one_for_even_change() -> None:
    nothing = np.zeros((64, 64), dtype=bool)
    one_cell, four_cells = nothing.copy(), nothing.copy()
    one_cell[1:7, 1:7] = True  # inside one of the 8x8 grid's cells (8 px each here)
    four_cells[4:12, 4:12] = True  # evenly over four cells: log 4 / log 64
    everywhere = np.ones((64, 64), dtype=bool)
    assert spread_of(nothing) == 0.0
    assert spread_of(one_cell) == 0.0
    assert spread_of(four_cells) == pytest.approx(1 / 3)
    assert spread_of(everywhere) == pytest.approx(1.0)


def test_thresholds_are_configurable_per_kind_and_bad_names_are_refused_by_name() -> None:
    settings = WorkerSettings(gate_thresholds={"local": {"global_fraction": None}})
    merged = thresholds_from_settings(settings.gate_thresholds)
    assert merged["local"].global_fraction is None
    assert merged["subtle"] == DEFAULT_THRESHOLDS["subtle"]
    # With global changes allowed for local edits, the repainted image passes.
    report = assess(poster(), repainted(), "make the red square blue", thresholds=merged)
    assert report.verdict == "ok"
    with pytest.raises(ValidationError, match="unknown kind of edit 'huge'"):
        WorkerSettings(gate_thresholds={"huge": {}})
    with pytest.raises(ValidationError, match=r"unknown field.*no_change"):
        WorkerSettings(gate_thresholds={"local": {"no_change": 0.1}})
