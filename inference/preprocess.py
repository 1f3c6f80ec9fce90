"""Step 2: turn fetched bytes into the clean RGB image the model edits.

In order: decide by *content* that the bytes are an image of an allowed
format (HEIC too, when ``pillow-heif`` is installed); refuse more pixels
than ``max_pixels`` before decoding anything (decompression bombs); decode
fully (truncated files fail here); take the first frame of an animation;
apply the EXIF orientation; convert to sRGB through an embedded ICC profile
when there is one; flatten every mode (CMYK, palette, 16-bit, grey, alpha
composited on white) to 8-bit RGB; drop all metadata (EXIF with GPS, ICC,
XMP, comments) by rebuilding the image from its pixels; resize so the short
side is 768 px and the long side at most 1024 px, keeping the aspect ratio
and never upscaling; round both sides down to the model's multiple.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from editflow.core.errors import ImageRejectedError

SHORT_SIDE = 768
LONG_SIDE_MAX = 1024
#: After resizing, a side shorter than this carries too little to edit.
MIN_SIDE = 32
#: Formats we decode. Everything else (EPS/PS through Ghostscript, PSD, ICO...)
#: is refused: fewer decoders, fewer surprises.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")  # JPEG opens MPO too
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # RGB, no metadata, final size
    source_format: str
    source_size: tuple[int, int]  # after EXIF orientation
    frames: int

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def target_size(
    width: int,
    height: int,
    *,
    multiple: int = 16,
    short_side: int = SHORT_SIDE,
    long_side_max: int = LONG_SIDE_MAX,
) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is brought to (pure)."""
    scale = min(1.0, short_side / min(width, height))
    if max(width, height) * scale > long_side_max:
        scale = long_side_max / max(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    if min(new_w, new_h) < max(MIN_SIDE, multiple):
        raise ImageRejectedError(
            f"the image is {width}x{height}: after fitting it into {long_side_max} px its short "
            f"side would be {min(new_w, new_h)} px, below the minimum of {max(MIN_SIDE, multiple)}"
            " px. Use a larger image or a less extreme aspect ratio",
            field="source",
        )
    return (new_w // multiple * multiple, new_h // multiple * multiple)


def _formats() -> tuple[str, ...]:
    """Allowed formats, plus HEIF (iPhone photos) when pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        return ALLOWED_FORMATS
    pillow_heif.register_heif_opener()  # idempotent
    return (*ALLOWED_FORMATS, "HEIF")


def _draft(image: Image.Image, short_side: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays above ``short_side``.

    A 12 MP phone JPEG decodes several times faster at 1/2 or 1/4 scale, and since the
    draft never goes below the size we resize to (both sides keep at least their final
    length), LANCZOS still does the final downscale. Sizes are rotation-invariant here.
    """
    width, height = image.size
    scale = min(1.0, short_side / min(width, height), LONG_SIDE_MAX / max(width, height))
    if scale < 0.5:
        image.draft("RGB", (max(1, int(width * scale) + 1), max(1, int(height * scale) + 1)))


def open_image(data: bytes, *, max_pixels: int, draft_short_side: int | None = None) -> Image.Image:
    """Identify and fully decode ``data`` (first frame), refusing bombs and truncation."""
    if not data:
        raise ImageRejectedError("the source is empty (0 bytes)", field="source")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejectedError(
                    f"the image has too many pixels: {width}x{height} = {width * height}, more "
                    f"than the limit of {max_pixels}; downscale it before uploading",
                    field="source",
                )
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                image.seek(0)
            image.info["_source_size"] = image.size
            if draft_short_side and image.format == "JPEG":
                _draft(image, draft_short_side)
            image.load()
    except ImageRejectedError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejectedError(
            f"the source is not an image in a supported format ({', '.join(_formats())})",
            field="source",
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejectedError(
            f"the image has too many pixels (decompression bomb guard): {exc}", field="source"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejectedError(
            f"the image is truncated or corrupt and cannot be decoded: {exc}", field="source"
        ) from exc
    image.info["_frames"] = frames
    return image


def _to_srgb(image: Image.Image) -> Image.Image:
    """Colour-manage through the embedded ICC profile when it exists and works."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, src, dst, outputMode=mode) or image
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # a broken profile is not worth refusing the image for


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey ("I;16", "I", "F") to 8-bit "L" by value range, not clipping."""
    import numpy as np

    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    if image.mode == "F" and array.max() <= 1.0:
        top = 1.0
    scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB, alpha composited onto white, metadata dropped."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_bit_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    image = _to_srgb(image)
    if image.mode in ("LA", "PA", "La", "RGBa", "RGBA") or (
        image.mode in ("L", "RGB") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    # Rebuilding from raw pixels guarantees no EXIF/ICC/XMP/comment survives.
    return Image.frombytes("RGB", image.size, image.tobytes())


#: A preview (an approver's first look) is edited at about a quarter of the pixels.
PREVIEW_SHORT_SIDE = 384
PREVIEW_LONG_SIDE_MAX = 512


def preprocess(
    data: bytes, *, max_pixels: int, multiple: int = 16, preview: bool = False
) -> PreparedImage:
    """Fetched bytes -> :class:`PreparedImage` (see the module docstring for the order)."""
    image = open_image(data, max_pixels=max_pixels, draft_short_side=SHORT_SIDE)
    source_format = image.format or "unknown"
    frames = int(image.info.get("_frames", 1))
    source_size = image.info.get("_source_size", image.size)
    if image.getexif().get(0x0112) in (5, 6, 7, 8):  # orientations that swap the sides
        source_size = (source_size[1], source_size[0])
    try:
        oriented = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, KeyError, SyntaxError):
        oriented = image  # an unreadable EXIF block: keep the pixels as stored
    rgb = to_rgb(oriented)
    sides = (
        {"short_side": PREVIEW_SHORT_SIDE, "long_side_max": PREVIEW_LONG_SIDE_MAX}
        if preview
        else {}
    )
    size = target_size(*rgb.size, multiple=multiple, **sides)
    resized = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.LANCZOS)
    return PreparedImage(
        image=resized, source_format=source_format, source_size=source_size, frames=frames
    )
