"""A fast worker that really uploads: the contract of ``editflow worker run`` without torch.

The fault suite needs a hundred attempts that each write their result to
MinIO (so MinIO can be stopped while an upload is in flight) and can be
SIGKILLed mid-edit. It reads ``--request`` like the real worker, marks its
progress in ``STUB_MARK_DIR`` (``<edit>-a<n>.started`` holds its pid,
``.uploading`` while it writes, ``.done`` once finished), puts the image and then
the result JSON (S3 puts are atomic: a reader sees a whole object or none) with the real
worker's write, retried while S3 is away, and writes the result as its termination message.
A worker that cannot upload within ``STUB_UPLOAD_PATIENCE`` exits 75 (retriable).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

from PIL import Image

from editflow.core.errors import UpstreamError
from editflow.core.settings import S3Settings, Settings
from editflow.inference.output import put_bytes


def _png() -> bytes:
    """A real (decodable) PNG: the suite decodes every stored image to find partial ones."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (30, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


def put_with_patience(settings: S3Settings, key: str, data: bytes, ctype: str) -> None:
    """The real worker's write (retried while S3 is away), and its exit code when it gives up."""
    patience = float(os.environ.get("STUB_UPLOAD_PATIENCE", "60"))
    try:
        put_bytes(settings, key, data, ctype, retry_seconds=patience)
    except UpstreamError:
        raise SystemExit(75) from None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--request", required=True)
    parser.add_argument("--termination-log", required=True)
    args = parser.parse_args()
    request = json.loads(args.request)
    edit, attempt = request["edit_id"], request["attempt"]
    marks = Path(os.environ.get("STUB_MARK_DIR", "/tmp"))
    (marks / f"{edit}-a{attempt}.started").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("STUB_WORKER_SECONDS", "1")))
    # The product's own S3 client factory and settings: the attempt's session keys, the region.
    settings = Settings().s3
    bucket = settings.bucket
    prefix = f"{request.get('output', {}).get('key_prefix', 'results')}/{edit}/attempt-{attempt}"
    uploading = marks / f"{edit}-a{attempt}.uploading"
    uploading.write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("STUB_UPLOAD_SECONDS", "0")))  # a large image's upload
    put_with_patience(settings, f"{prefix}/result.png", PNG, "image/png")
    result = {
        "status": "success",
        "edit_id": edit,
        "attempt": attempt,
        "model": request.get("model", "stub"),
        "bucket": bucket,
        "result_key": f"{prefix}/result.png",
        "cost": {"total": 0.01},
    }
    body = json.dumps(result).encode()
    put_with_patience(settings, f"{prefix}/result.json", body, "application/json")
    uploading.unlink(missing_ok=True)
    (marks / f"{edit}-a{attempt}.started").rename(marks / f"{edit}-a{attempt}.done")
    Path(args.termination_log).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
