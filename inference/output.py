"""Step 5: bring the edited image to the promised size, encode it, store it, sign a URL.

The pipeline works at about one megapixel whatever the input, so the result
is resized back to the preprocessed input's size (or smaller, if the usage
profile caps it) before encoding.

Upload atomicity: each object is written with one S3 ``PutObject`` (or one
multipart upload, which S3 and MinIO publish only on
``CompleteMultipartUpload``), and S3 never serves a partially written
object: a reader sees either no object or the whole one. The image is written
before ``result.json``, so a reader who finds the result JSON always finds
the image it names.

Upload patience: an edit is the expensive part (95 s of GPU for LongCat), an S3 write
the cheap one. A write that fails because S3 is unreachable or answers 5xx (a MinIO
restart, a load balancer moving) is retried with backoff for ``retry_seconds``
(``EDITFLOW_WORKER__UPLOAD_RETRY_SECONDS``, 60 by default) instead of throwing the
edited image away; only then does the attempt fail, retriable. A refusal (4xx: access
denied, no such bucket) fails at once: waiting would not change it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from PIL import Image

from editflow.core.backoff import Backoff
from editflow.core.errors import UpstreamError
from editflow.core.settings import S3Settings
from editflow.inference.profiles import OutputProfile

log = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
#: Backoff between retried S3 writes: first and longest wait, in seconds.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 8.0
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def final_size(prepared: tuple[int, int], profile: OutputProfile) -> tuple[int, int]:
    width, height = prepared
    cap = profile.max_long_side
    if cap is None or max(width, height) <= cap:
        return width, height
    scale = cap / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode(image: Image.Image, size: tuple[int, int], profile: OutputProfile) -> Encoded:
    """Resize to ``size`` and encode per ``profile`` (no metadata is written)."""
    rgb = image.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if profile.format == "jpeg":
        rgb.save(buffer, "JPEG", quality=profile.quality, optimize=True, subsampling=0
                 if profile.quality >= 90 else 2)  # fmt: skip
    else:
        # Level 3: lossless like any level, ~2x faster than 6 on photographic content.
        rgb.save(buffer, "PNG", optimize=False, compress_level=3)
    return Encoded(buffer.getvalue(), profile.format, *size)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def object_metadata(
    *,
    edit_id: str,
    attempt: int,
    event_id: str | None,
    prompt: str,
    model: str,
    seed: int,
    usage: str | None = None,
) -> dict[str, str]:
    """``x-amz-meta-*`` fields (ASCII only: free text is percent-encoded)."""
    meta = {
        "edit-id": edit_id,
        "attempt": str(attempt),
        "prompt-sha256": prompt_hash(prompt),
        "model": model,
        "seed": str(seed),
    }
    if event_id:
        meta["event-id"] = quote(event_id, safe="")
    if usage:
        meta["usage"] = quote(usage, safe="")
    return meta


#: Most recent clients kept; a warm worker's attempts each bring their own key (issue 20).
_MAX_CLIENTS = 8
_CLIENTS: OrderedDict[tuple[str, ...], Any] = OrderedDict()


def _client(s3: S3Settings) -> Any:
    """One MinIO client (and so one connection pool) per S3 key and process.

    A warm worker uploads many results; reusing the pool saves a TCP (and TLS) handshake per
    object. The key is part of what identifies a client (``model_dump_json`` masks secrets,
    so it cannot: every key once shared the first client), and the cache is bounded, since
    with per-attempt credentials every attempt brings a new key.
    """
    from editflow.core.s3 import s3_client

    key = (
        s3.endpoint,
        str(s3.secure),
        s3.region,
        s3.access_key.get_secret_value(),
        s3.secret_key.get_secret_value(),
        s3.session_token.get_secret_value() if s3.session_token else "",
    )
    if key in _CLIENTS:
        _CLIENTS.move_to_end(key)
    else:
        _CLIENTS[key] = s3_client(s3)
        while len(_CLIENTS) > _MAX_CLIENTS:
            _CLIENTS.popitem(last=False)
    return _CLIENTS[key]


def _transient(exc: Exception) -> bool:
    """Worth retrying: S3 unreachable or failing (5xx, throttling), not refusing (4xx)."""
    from minio.error import S3Error, ServerError

    if isinstance(exc, ServerError):
        return True
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return status >= 500 or exc.code in ("SlowDown", "RequestTimeout", "ServiceUnavailable")
    return True  # connection refused or reset, a timeout: S3 is away, not saying no


def put_bytes(
    s3: S3Settings,
    key: str,
    data: bytes,
    content_type: str,
    metadata: dict[str, str] | None = None,
    *,
    retry_seconds: float = 0.0,
) -> None:
    """One atomic PutObject, retried for ``retry_seconds`` while S3 is away (module docs)."""
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError as Urllib3Error

    deadline = time.monotonic() + retry_seconds
    backoff = Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS)
    while True:
        try:
            _client(s3).put_object(
                s3.bucket, key, io.BytesIO(data), len(data),
                content_type=content_type, metadata=metadata or None,
            )  # fmt: skip
            return
        except (MinioException, OSError, Urllib3Error) as exc:
            if not _transient(exc) or time.monotonic() + backoff.delay > deadline:
                raise UpstreamError(f"could not write s3://{s3.bucket}/{key}: {exc}") from exc
            log.warning(
                "S3 write failed; retrying",
                extra={"key": key, "error": str(exc)[:300], "retry_in": backoff.delay},
            )
        time.sleep(backoff.grow())


def presign(s3: S3Settings, key: str) -> str:
    """A GET URL on the public endpoint, valid for ``presign_expiry_seconds``."""
    from editflow.core.s3 import presigning_client

    return presigning_client(s3).presigned_get_object(
        s3.bucket, key, expires=timedelta(seconds=s3.presign_expiry_seconds)
    )


def result_image_key(attempt_prefix: str, fmt: str, variant: int = 1) -> str:
    """``result.<ext>``; further variants ``result-<i>.<ext>`` (variant 1 keeps the old key)."""
    stem = "result" if variant == 1 else f"result-{variant}"
    return f"{attempt_prefix}/{stem}.{EXTENSIONS[fmt]}"
