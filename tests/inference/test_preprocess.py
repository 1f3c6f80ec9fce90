"""Golden tests of the image rules (brief §4), every fixture generated in code."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageCms

from editflow.core.errors import ImageRejectedError
from editflow.inference.preprocess import preprocess, target_size

MAX_PIXELS = 40_000_000


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_rotated_phone_jpeg_is_turned_upright_and_loses_its_exif() -> None:
    # A phone stores a portrait photo as landscape pixels plus Orientation=6 (rotate 90 CW).
    stored = Image.new("RGB", (4032, 3024), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 200, 200))  # a red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "PhoneMaker"
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=90)

    prepared = preprocess(data, max_pixels=MAX_PIXELS)

    assert prepared.size == (768, 1024)  # portrait now; short side 768, long side 1024
    assert prepared.source_size == (3024, 4032)
    assert prepared.image.getexif() == {} and prepared.image.info == {}
    # Orientation 6: the stored top-left ends up at the top-right.
    assert prepared.image.getpixel((760, 5))[0] > 200
    assert prepared.image.getpixel((5, 5))[2] > 200


def test_rgba_png_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    image.paste((0, 128, 0, 255), (0, 0, 400, 800))
    prepared = preprocess(encode(image, "PNG"), max_pixels=MAX_PIXELS)
    assert prepared.image.mode == "RGB" and prepared.size == (768, 768)
    assert prepared.image.getpixel((700, 400)) == (255, 255, 255)
    assert prepared.image.getpixel((100, 400)) == (0, 128, 0)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (1000, 800), (0, 255, 255, 0))  # pure red in CMYK
    prepared = preprocess(encode(cmyk, "JPEG", quality=95), max_pixels=MAX_PIXELS)
    assert prepared.image.mode == "RGB"
    assert prepared.size == (960, 768)
    red, green, blue = prepared.image.getpixel((480, 384))
    assert red > 200 and green < 60 and blue < 60


def test_animated_gif_uses_its_first_frame() -> None:
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    frames = [Image.new("RGB", (120, 80), c) for c in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    prepared = preprocess(data, max_pixels=MAX_PIXELS)
    assert prepared.frames == 3 and prepared.source_format == "GIF"
    assert prepared.size == (112, 80)  # small images are never upscaled; sides floored to 16
    assert prepared.image.getpixel((50, 30)) == (255, 0, 0)


def test_palette_png_with_transparency() -> None:
    image = Image.new("P", (200, 100), 0)
    image.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 100, 100))
    prepared = preprocess(encode(image, "PNG", transparency=0), max_pixels=MAX_PIXELS)
    assert prepared.image.getpixel((150, 50)) == (255, 255, 255)
    assert prepared.image.getpixel((50, 50)) == (200, 0, 0)


def test_16_bit_grey_png_keeps_its_tones() -> None:
    image = Image.new("I;16", (256, 256), 32768)  # mid-grey in 16 bits
    prepared = preprocess(encode(image, "PNG"), max_pixels=MAX_PIXELS)
    value = prepared.image.getpixel((10, 10))
    assert value[0] == value[1] == value[2] and 120 <= value[0] <= 135


def test_icc_profile_and_metadata_are_dropped() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (900, 900), (10, 200, 10))
    data = encode(image, "JPEG", icc_profile=srgb, comment=b"secret")
    prepared = preprocess(data, max_pixels=MAX_PIXELS)
    assert "icc_profile" not in prepared.image.info and "comment" not in prepared.image.info


def test_one_pixel_image_is_rejected_as_too_small() -> None:
    with pytest.raises(ImageRejectedError, match="below the minimum"):
        preprocess(encode(Image.new("RGB", (1, 1)), "PNG"), max_pixels=MAX_PIXELS)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` (1-bit) with one empty IDAT: a bomb's shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )  # fmt: skip


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(ImageRejectedError, match="too many pixels"):
        preprocess(_png_header_only(20000, 20000), max_pixels=MAX_PIXELS)


def test_the_configured_pixel_cap_applies_below_pillows_own() -> None:
    with pytest.raises(ImageRejectedError, match="8000x6000"):
        preprocess(_png_header_only(8000, 6000), max_pixels=MAX_PIXELS)


def test_truncated_jpeg_is_refused() -> None:
    data = encode(Image.effect_noise((800, 600), 50).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(ImageRejectedError, match="truncated or corrupt"):
        preprocess(data[: len(data) // 2], max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    "data",
    [b"", b"<html><body>not an image</body></html>", b"%PDF-1.7\n" + b"0" * 100,
     b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"],
)  # fmt: skip
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(ImageRejectedError):
        preprocess(data, max_pixels=MAX_PIXELS)


def test_content_decides_not_the_name() -> None:
    # The same bytes are a JPEG whatever the URL said: nothing here sees a name at all.
    data = encode(Image.new("RGB", (800, 800), (1, 2, 3)), "JPEG")
    assert preprocess(data, max_pixels=MAX_PIXELS).source_format == "JPEG"


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((4032, 3024), (1024, 768)),
        ((3024, 4032), (768, 1024)),
        ((1000, 1000), (768, 768)),
        ((3000, 1000), (1024, 336)),  # long side wins over short side 768
        ((500, 300), (496, 288)),  # never upscaled, floored to 16
        ((1920, 1080), (1024, 576)),
    ],
)
def test_target_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert target_size(*size) == expected
    width, height = expected
    assert width % 16 == 0 and height % 16 == 0 and max(expected) <= 1024


def test_iphone_heic_is_decoded_and_turned_upright() -> None:
    pytest.importorskip("pillow_heif").register_heif_opener()
    stored = Image.new("RGB", (1600, 1200), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "HEIF", quality=90, exif=exif.tobytes())
    assert data[4:12] == b"ftypheic"
    prepared = preprocess(data, max_pixels=MAX_PIXELS)
    assert prepared.source_format == "HEIF"
    assert prepared.size == (768, 1024)  # rotated once: by libheif or by EXIF, never twice
    assert prepared.image.getpixel((760, 5))[0] > 200  # the stored top-left is now top-right
    assert prepared.image.info == {}


@pytest.mark.parametrize("fmt", ["WEBP", "AVIF", "BMP", "TIFF"])
def test_other_common_formats(fmt: str) -> None:
    data = encode(Image.new("RGB", (1800, 1200), (20, 120, 220)), fmt)
    prepared = preprocess(data, max_pixels=MAX_PIXELS)
    assert prepared.source_format == fmt and prepared.size == (1024, 672)
