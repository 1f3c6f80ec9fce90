"""Where a model's weights come from: a local directory, a PVC mount, or an S3 prefix.

Lookup for model ``NAME`` (settings in :class:`editflow.core.settings.WorkerSettings`):

1. ``<models_root>/NAME`` (``EDITFLOW_WORKER__MODELS_ROOT``), when it holds a
   ``model_index.json``: a local directory or a mounted PVC, used in place;
2. else, when ``EDITFLOW_WORKER__WEIGHTS_S3_PREFIX`` is set, the objects under
   ``<prefix>/NAME/`` are downloaded once into ``<cache_dir>/NAME/<version>``
   (``EDITFLOW_WORKER__CACHE_DIR``; the version is the manifest's hash), each file
   checked against the sha256 and size in ``<prefix>/NAME/manifest.json``; the
   finished copy is renamed into place atomically and stamped with the manifest's
   hash, so a crash halfway leaves nothing that looks complete and a second process
   (another Pod on the node, when the cache is a node-level volume) waits on a lock
   and then uses the first one's copy;
3. else a :class:`ModelError` that names both places.

With ``EDITFLOW_WORKER__STREAM_WEIGHTS`` (the default) step 2 is not a download followed by
a load when the version is not cached yet: :mod:`editflow.inference.streamload` reads the
objects with parallel range reads straight into the tensors the pipeline is built from,
checks each chunk against the manifest as it arrives and fills the same cache directory
behind them (the same staging, marker and rename as here).

The cache is managed as it fills (:func:`_evict`, under a cache-wide lock): a
version is immutable once in place, so a Pod still loading an older version is
not disturbed by a newer download until that older version is evicted; older
versions of a model are evicted once a newer one is complete; models that are no
longer configured (``cache_models``) are evicted; and with ``cache_max_bytes`` the
least recently used models go until the cache fits (a model larger than the
limit is refused before anything is downloaded, with both sizes).

Nothing here ever reaches a model hub. :func:`write_manifest` and
:func:`publish_to_s3` are how an operator puts weights on S3 in that layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.core.errors import ModelError, UpstreamError
from editflow.core.filelock import exclusive
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference.tiny import MODEL_CONFIG_FILE

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
COMPLETE_MARKER = ".editflow-complete"
#: A manifest's per-chunk hashes (``chunk_size``, ``chunks``) cover this many bytes each, so
#: that a streamed load verifies each range as it arrives (:mod:`.streamload`).
MANIFEST_CHUNK = 64 << 20
#: The hash of a manifest's chunks (a file entry's ``chunk_hash``), written by every push.
#:
#: Why XXH3-128, a non-cryptographic hash: the chunk hashes catch what goes wrong between a
#: push and a load (a failed or partial upload, an object changed or corrupted since, a short
#: range read), and XXH3-128 misses such an accident with odds of 2^-128. Against someone who
#: can write the weights prefix no chunk hash protects anything, whatever its strength: the
#: manifest lies beside the files, unsigned, and is rewritten with them (workers cannot write
#: the prefix: their S3 credentials are per attempt, issue 20). What must withstand tampering
#: is the node cache, which every namespace's workers share (issue 20 §8): a copy gets its
#: completion marker only once each file's sha256 matches the manifest, and a cache workers
#: can write is checked the same way each time a copy is found. A streamed load verifies every
#: byte as it arrives on the cores the reads use (on a small node, the S3 endpoint's too), so
#: the hash is what such a load pays beyond the read. Measured on the 2-core dev machine, a
#: 1 MiB block in cache: XXH3-128 44 GiB/s per core, BLAKE3 5.8 (what pushes used before;
#: still read), sha256 1.7 (manifests pushed before ``chunk_hash`` existed; still read).
CHUNK_HASH = "xxh3-128"
#: Each chunk hash a manifest may name, by the module and constructor that compute it.
CHUNK_HASHERS = {"xxh3-128": ("xxhash", "xxh3_128"), "blake3": ("blake3", "blake3")}


def chunk_hasher(name: str, where: str) -> Callable[..., Any]:
    """The constructor of the hash a manifest names for its chunks (``hashlib`` style:
    ``new(data)``, ``update``, ``hexdigest``); ``where`` names the manifest in the error."""
    if name == "sha256":
        return hashlib.sha256
    if name not in CHUNK_HASHERS:
        known = ", ".join(repr(n) for n in (*CHUNK_HASHERS, "sha256"))
        raise ModelError(
            f"{where}: unknown chunk_hash {name!r} (expected one of {known}): pushed by a newer "
            "editflow? Upgrade this worker, or push the snapshot again with this version"
        )
    module, constructor = CHUNK_HASHERS[name]
    try:
        return getattr(importlib.import_module(module), constructor)
    except ImportError as exc:  # pragma: no cover - the inference extra installs both
        raise ModelError(
            f"{where}: its chunks are hashed with {name}, whose module {module} is not "
            "installed here: pip install -c constraints.txt 'editflow[inference]'"
        ) from exc


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


CACHE_LOCK = ".editflow-cache.lock"
LAST_USED = ".editflow-last-used"


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def touch(version_dir: Path) -> None:
    """Stamp a model's use: the size limit evicts the least recently used first."""
    with contextlib.suppress(OSError):  # a read-only cache (one trusted writer) keeps no stamp
        (version_dir.parent / LAST_USED).touch()


def _writable(cache: Path) -> bool:
    """Whether this worker could have changed the cache (so could any other worker).

    A cache mounted read-only for workers has one trusted writer (the prestage DaemonSet):
    its files are what that writer verified. A writable one is checked on every load.
    """
    return os.access(cache, os.W_OK)


def _matches(version_dir: Path, manifest: dict[str, Any]) -> bool:
    """Every file of ``manifest`` present with its size and sha256, and no file besides."""
    expected = set(manifest["files"]) | {MANIFEST, COMPLETE_MARKER}
    present = {
        str(p.relative_to(version_dir))
        for p in version_dir.rglob("*")
        if p.is_file() or p.is_symlink()
    }
    if present != expected:
        return False
    for rel, meta in manifest["files"].items():
        path = version_dir / rel
        if path.is_symlink() or path.stat().st_size != meta["size"]:
            return False
        if sha256_file(path) != meta["sha256"]:
            return False
    return True


def _last_used(model: Path) -> float:
    stamp = model / LAST_USED
    return stamp.stat().st_mtime if stamp.exists() else 0.0


def _evict(cache: Path, keep: Path, worker: WorkerSettings) -> list[str]:
    """Make the cache fit its policy, never touching ``keep`` (the version just resolved).

    Returns what went, for the log. Called with the cache-wide lock held.
    """
    gone: list[str] = []
    models = [d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")]
    for model in models:
        configured = not worker.cache_models or model.name in worker.cache_models
        for version in [v for v in model.iterdir() if v.is_dir()]:
            superseded = model == keep.parent and version != keep
            if version != keep and (superseded or not configured):
                shutil.rmtree(version, ignore_errors=True)
                gone.append(f"{model.name}/{version.name}")
        if not any(v.is_dir() for v in model.iterdir()):
            shutil.rmtree(model, ignore_errors=True)
    if worker.cache_max_bytes:
        others = [d for d in cache.iterdir() if d.is_dir() and d != keep.parent]
        others = [d for d in others if not d.name.startswith(".")]
        others.sort(key=_last_used)
        total = _tree_bytes(cache)
        while others and total > worker.cache_max_bytes:
            victim = others.pop(0)
            total -= _tree_bytes(victim)
            shutil.rmtree(victim, ignore_errors=True)
            gone.append(f"{victim.name} (least recently used)")
    return gone


@dataclass(frozen=True)
class Published:
    """A model's manifest as read from S3, and where its verified copy goes in the cache."""

    name: str
    client: Any
    bucket: str
    prefix: str
    manifest_bytes: bytes
    manifest: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    def final(self, cache: Path) -> Path:
        return cache / self.name / self.digest[:16]

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def files(self) -> list[tuple[str, dict[str, Any]]]:
        """The manifest's files, each path checked before anything is written under it."""
        for rel in self.manifest["files"]:
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ModelError(f"manifest of {self.name} names an unsafe path: {rel!r}")
        return list(self.manifest["files"].items())


@contextlib.contextmanager
def s3_weights_errors(name: str, bucket: str, prefix: str) -> Iterator[None]:
    """S3 and network failures while reading weights, mapped to the worker's taxonomy."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        yield
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            raise ModelError(
                f"no weights for {name}: s3://{bucket}/{prefix}/{MANIFEST} does not exist"
            ) from exc
        raise UpstreamError(f"S3 failed while fetching weights of {name}: {exc.code}") from exc
    except (OSError, Urllib3Error) as exc:
        raise UpstreamError(f"could not download weights of {name}: {exc}") from exc


def read_published(name: str, worker: WorkerSettings, s3: S3Settings) -> Published:
    """The manifest of ``name`` under the weights prefix (size limit checked before any read)."""
    from editflow.core.s3 import s3_client, weights_s3_settings

    assert worker.weights_s3_prefix is not None
    bucket = worker.weights_s3_bucket or s3.bucket
    prefix = f"{worker.weights_s3_prefix.strip('/')}/{name}"
    client = s3_client(weights_s3_settings(worker, s3))
    with s3_weights_errors(name, bucket, prefix):
        response = client.get_object(bucket, f"{prefix}/{MANIFEST}")
        try:
            raw = response.read()
        finally:
            response.close()
            response.release_conn()
    published = Published(name, client, bucket, prefix, raw, json.loads(raw))
    size = sum(int(meta["size"]) for meta in published.manifest["files"].values())
    if worker.cache_max_bytes and size > worker.cache_max_bytes:
        raise ModelError(
            f"weights of {name} take {size / 1e9:.1f} GB, more than the cache limit of "
            f"{worker.cache_max_bytes / 1e9:.1f} GB (EDITFLOW_WORKER__CACHE_MAX_BYTES, "
            "chart models.nodeCache.maxBytes): raise the limit"
        )
    return published


def cached_copy(published: Published, cache: Path) -> Path | None:
    """The cache's complete, verified copy of ``published``, else None (call under its lock).

    A copy that differs from its manifest is removed, so that it is fetched again.
    """
    final = published.final(cache)
    marker = final / COMPLETE_MARKER
    if not (marker.exists() and marker.read_text().strip() == published.digest):
        return None
    if not _writable(cache) or _matches(final, published.manifest):
        touch(final)
        return final
    # The node cache is shared by every namespace's workers: a marker proves
    # nothing about the files beside it (issue 20 §8). Fetch them again.
    log.warning(
        "cached weights differ from their manifest; downloading them again",
        extra={"model": published.name, "version": published.digest[:16]},
    )
    shutil.rmtree(final)
    return None


@contextlib.contextmanager
def staging_dir(published: Published, cache: Path) -> Iterator[Path]:
    """A private directory to fill; on success it becomes the cache's version atomically.

    The body writes every file of the manifest into it and verifies them; then the manifest
    and the completion marker go in and the directory is renamed into place. On any error
    it is removed: nothing half-written ever looks like a cached model.
    """
    final = published.final(cache)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{published.name}-", dir=cache))
    try:
        yield staging
        (staging / MANIFEST).write_bytes(published.manifest_bytes)
        (staging / COMPLETE_MARKER).write_text(published.digest)
        if final.exists():  # a copy without its marker: left by a crash
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    touch(final)


def evict_for(final: Path, worker: WorkerSettings) -> None:
    """Apply the cache policy now that ``final`` is in place (:func:`_evict`)."""
    cache = final.parent.parent
    with exclusive(cache / CACHE_LOCK):
        gone = _evict(cache, final, worker)
    if gone:
        log.info("weights cache evicted", extra={"model": final.parent.name, "evicted": gone})


def _download(name: str, worker: WorkerSettings, s3: S3Settings) -> Path:
    published = read_published(name, worker, s3)
    cache = Path(worker.cache_dir)
    with s3_weights_errors(name, published.bucket, published.prefix):
        with exclusive(cache / f".{name}.lock"):
            found = cached_copy(published, cache)
            if found is not None:
                return found
            with staging_dir(published, cache) as staging:
                for rel, meta in published.files():
                    target = staging / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    published.client.fget_object(published.bucket, published.key(rel), str(target))
                    if (
                        target.stat().st_size != meta["size"]
                        or sha256_file(target) != meta["sha256"]
                    ):
                        raise ModelError(
                            f"weights file {rel} of {name} does not match its manifest "
                            "(corrupt or partially uploaded): re-publish the model"
                        )
        final = published.final(cache)
        evict_for(final, worker)
        return final


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
