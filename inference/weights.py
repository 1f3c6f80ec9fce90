"""Where a model's weights come from: a local directory, a PVC mount, or an S3 prefix.

Lookup for model ``NAME`` (settings in :class:`editflow.core.settings.WorkerSettings`):

1. ``<models_root>/NAME`` (``EDITFLOW_WORKER__MODELS_ROOT``), when it holds a
   ``model_index.json``: a local directory or a mounted PVC, used in place;
2. else, when ``EDITFLOW_WORKER__WEIGHTS_S3_PREFIX`` is set, the objects under
   ``<prefix>/NAME/`` are downloaded once into ``<cache_dir>/NAME``
   (``EDITFLOW_WORKER__CACHE_DIR``), each file checked against the sha256 and
   size in ``<prefix>/NAME/manifest.json``; the finished copy is renamed into
   place atomically and stamped with the manifest's hash, so a crash halfway
   leaves nothing that looks complete and a second process waits on a lock;
3. else a :class:`ModelError` that names both places.

Nothing here ever reaches a model hub. :func:`write_manifest` and
:func:`publish_to_s3` are how an operator puts weights on S3 in that layout.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from editflow.core.errors import ModelError, UpstreamError
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference.tiny import MODEL_CONFIG_FILE

MANIFEST = "manifest.json"
COMPLETE_MARKER = ".editflow-complete"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: Path) -> dict[str, Any]:
    """Describe every file of ``model_dir`` (sha256, size) in its ``manifest.json``."""
    files = {
        str(p.relative_to(model_dir)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, COMPLETE_MARKER)
    }
    manifest = {"version": 1, "files": files}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def publish_to_s3(
    model_dir: Path, s3: S3Settings, prefix: str, *, bucket: str | None = None
) -> str:
    """Upload ``model_dir`` under ``<prefix>/`` with its manifest (manifest last)."""
    from editflow.core.s3 import s3_client

    manifest = write_manifest(model_dir)
    client = s3_client(s3)
    bucket = bucket or s3.bucket
    prefix = prefix.strip("/")
    for rel in manifest["files"]:
        client.fput_object(bucket, f"{prefix}/{rel}", str(model_dir / rel))
    client.fput_object(bucket, f"{prefix}/{MANIFEST}", str(model_dir / MANIFEST))
    return prefix


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(name: str, worker: WorkerSettings, s3: S3Settings) -> Path:
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError as Urllib3Error

    from editflow.core.s3 import s3_client, weights_s3_settings

    assert worker.weights_s3_prefix is not None
    bucket = worker.weights_s3_bucket or s3.bucket
    prefix = f"{worker.weights_s3_prefix.strip('/')}/{name}"
    cache = Path(worker.cache_dir)
    final = cache / name
    client = s3_client(weights_s3_settings(worker, s3))
    try:
        response = client.get_object(bucket, f"{prefix}/{MANIFEST}")
        try:
            manifest_bytes = response.read()
        finally:
            response.close()
            response.release_conn()
        manifest_hash = hashlib.sha256(manifest_bytes).hexdigest()
        manifest = json.loads(manifest_bytes)
        with _locked(cache / f".{name}.lock"):
            marker = final / COMPLETE_MARKER
            if marker.exists() and marker.read_text().strip() == manifest_hash:
                return final
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
            try:
                for rel, meta in manifest["files"].items():
                    if rel.startswith("/") or ".." in Path(rel).parts:
                        raise ModelError(f"manifest of {name} names an unsafe path: {rel!r}")
                    target = staging / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.fget_object(bucket, f"{prefix}/{rel}", str(target))
                    if (
                        target.stat().st_size != meta["size"]
                        or sha256_file(target) != meta["sha256"]
                    ):
                        raise ModelError(
                            f"weights file {rel} of {name} does not match its manifest "
                            "(corrupt or partially uploaded): re-publish the model"
                        )
                (staging / MANIFEST).write_bytes(manifest_bytes)
                (staging / COMPLETE_MARKER).write_text(manifest_hash)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return final
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            raise ModelError(
                f"no weights for {name}: s3://{bucket}/{prefix}/{MANIFEST} does not exist"
            ) from exc
        raise UpstreamError(f"S3 failed while fetching weights of {name}: {exc.code}") from exc
    except (OSError, Urllib3Error) as exc:
        raise UpstreamError(f"could not download weights of {name}: {exc}") from exc


def resolve_model_dir(name: str, worker: WorkerSettings, s3: S3Settings) -> Path:
    """The local directory holding ``name``'s saved pipeline (see the module docstring)."""
    local = Path(worker.models_root) / name
    if (local / "model_index.json").is_file():
        return local
    if worker.weights_s3_prefix:
        return _download(name, worker, s3)
    raise ModelError(
        f"no weights for model {name}: {local} has no model_index.json and no S3 weights "
        "prefix is configured (EDITFLOW_WORKER__MODELS_ROOT / EDITFLOW_WORKER__WEIGHTS_S3_PREFIX)"
    )


def model_dir_defaults(model_dir: Path) -> dict[str, Any]:
    """Generation defaults shipped with the weights (``editflow-model.json``), if any."""
    path = model_dir / MODEL_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("defaults", {}))
    except (ValueError, AttributeError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
