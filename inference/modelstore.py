"""Where published weights live, and the operator's four operations on them.

A store is an S3 prefix (``s3://<bucket>/<prefix>/<model>/``, what workers download from,
:mod:`editflow.inference.weights`) or a directory (``<dir>/<model>/``, a PVC that workers
mount as ``models_root``). A published model is its files plus ``manifest.json`` (the
sha256 and size of each file, and the XXH3-128 of each 64 MiB chunk for streamed loads),
written **last**: a model without its manifest is an
unfinished push, which no worker loads.

* :func:`push` validates the snapshot first (:mod:`editflow.inference.snapshot`), hashes
  it, and uploads only what is not there yet: an object whose size and recorded sha256
  (S3 metadata ``sha256``; for a directory, the file's own hash) match is kept, so a push
  that was interrupted resumes where it stopped. The old manifest goes first, so no worker
  mixes two versions while files change.
* :func:`list_models`, :func:`verify` (every file hashed again against the manifest) and
  :func:`remove` (the manifest first).

Written here rather than with a sync tool (``mc mirror``, ``aws s3 sync``): those compare
sizes and times, not the hashes the workers check, and do not know the manifest's place in
the protocol.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from editflow.core.errors import InvalidInputError
from editflow.inference.snapshot import Snapshot
from editflow.inference.weights import (
    CHUNK_HASH,
    COMPLETE_MARKER,
    MANIFEST,
    MANIFEST_CHUNK,
    chunk_hasher,
    sha256_file,
)

#: Called with the bytes just hashed, uploaded or verified (a progress bar's advance).
Progress = Callable[[int], None]
CHUNK = 1 << 20
#: Files of the snapshot that are not weights of the model (the worker's own markers).
IGNORED = frozenset({MANIFEST, COMPLETE_MARKER})


class ModelStoreError(InvalidInputError):
    """A store operation that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Published:
    """One model in a store: its manifest's files and version, or unfinished."""

    name: str
    files: int = 0
    size: int = 0
    version: str = ""
    complete: bool = True


@dataclass
class PushReport:
    uploaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    version: str = ""


class Throttled(io.RawIOBase):
    """A reader that reports progress and, with ``rate`` (bytes/s), reads no faster: a push
    over a link shared with production traffic."""

    def __init__(self, raw: BinaryIO, progress: Progress, rate: float | None = None) -> None:
        self.raw, self.progress, self.rate = raw, progress, rate
        self.started, self.sent = time.monotonic(), 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(CHUNK if size is None or size < 0 else min(size, CHUNK))
        self.sent += len(data)
        self.progress(len(data))
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
        return data


def hash_stream(chunks: Iterator[bytes], progress: Progress) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        progress(len(chunk))
    return digest.hexdigest(), size


def hash_file(path: Path, progress: Progress) -> dict[str, Any]:
    """A manifest entry: the file's sha256 and size, and the :data:`CHUNK_HASH` of each
    :data:`MANIFEST_CHUNK` bytes (the last chunk shorter), in one read.

    The chunk hashes let a streamed load check each range read as it arrives instead of
    after the whole file (:mod:`.streamload`); the whole-file hash stays for ``verify``,
    the download path and workers that predate chunks.
    """
    new_chunk = chunk_hasher(CHUNK_HASH, str(path))
    whole, size, chunks = hashlib.sha256(), 0, []
    chunk, in_chunk = new_chunk(), 0
    with path.open("rb") as handle:
        # Never read across a chunk boundary, whatever the two sizes are.
        while block := handle.read(min(CHUNK, MANIFEST_CHUNK - in_chunk)):
            whole.update(block)
            chunk.update(block)
            size += len(block)
            in_chunk += len(block)
            progress(len(block))
            if in_chunk == MANIFEST_CHUNK:
                chunks.append(chunk.hexdigest())
                chunk, in_chunk = new_chunk(), 0
    if in_chunk or not chunks:
        chunks.append(chunk.hexdigest())
    return {
        "sha256": whole.hexdigest(),
        "size": size,
        "chunk_size": MANIFEST_CHUNK,
        "chunk_hash": CHUNK_HASH,
        "chunks": chunks,
    }


def build_manifest(snapshot: Snapshot, progress: Progress) -> dict[str, Any]:
    """The manifest of ``snapshot`` (the format :mod:`.weights` checks), hashing every file."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(snapshot.root.rglob("*")):
        if not path.is_file() or path.name in IGNORED:
            continue
        files[str(path.relative_to(snapshot.root))] = hash_file(path, progress)
    return {
        "version": 1,
        "model": snapshot.model,
        "pipeline_class": snapshot.pipeline_class,
        "files": files,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def version_of(raw: bytes) -> str:
    """A published version's id: the manifest's hash (the worker's cache directory name)."""
    return hashlib.sha256(raw).hexdigest()[:16]


class Store(Protocol):
    def describe(self, name: str) -> str: ...
    def holds(self, name: str, rel: str, size: int, sha: str) -> bool: ...
    def upload(self, name: str, rel: str, size: int, sha: str, reader: Throttled) -> None: ...
    def manifest(self, name: str) -> bytes | None: ...
    def write_manifest(self, name: str, raw: bytes) -> None: ...
    def drop_manifest(self, name: str) -> None: ...
    def names(self) -> list[str]: ...
    def chunks(self, name: str, rel: str) -> Iterator[bytes]: ...
    def remove(self, name: str) -> int: ...


class S3Store:
    """``s3://<bucket>/<prefix>/<model>/``."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def _key(self, name: str, rel: str = "") -> str:
        return f"{self.prefix}/{name}/{rel}" if rel else f"{self.prefix}/{name}/"

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def holds(self, name: str, rel: str, size: int, sha: str) -> bool:
        """The object is there with this size and the sha256 its upload recorded."""
        from minio.error import S3Error

        try:
            stat = self.client.stat_object(self.bucket, self._key(name, rel))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        return int(stat.size) == size and meta.get("x-amz-meta-sha256") == sha

    def upload(self, name: str, rel: str, size: int, sha: str, reader: Throttled) -> None:
        self.client.put_object(
            self.bucket,
            self._key(name, rel),
            reader,
            length=size,
            metadata={"sha256": sha},
            part_size=64 * CHUNK,
        )

    def manifest(self, name: str) -> bytes | None:
        from minio.error import S3Error

        try:
            return b"".join(self.chunks(name, MANIFEST))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise

    def write_manifest(self, name: str, raw: bytes) -> None:
        self.client.put_object(
            self.bucket,
            self._key(name, MANIFEST),
            io.BytesIO(raw),
            len(raw),
            content_type="application/json",
        )

    def drop_manifest(self, name: str) -> None:
        self.client.remove_object(self.bucket, self._key(name, MANIFEST))

    def names(self) -> list[str]:
        found = self.client.list_objects(self.bucket, prefix=f"{self.prefix}/", recursive=False)
        return sorted(o.object_name.rstrip("/").rsplit("/", 1)[-1] for o in found if o.is_dir)

    def chunks(self, name: str, rel: str) -> Iterator[bytes]:
        response = self.client.get_object(self.bucket, self._key(name, rel))
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    def remove(self, name: str) -> int:
        from minio.deleteobjects import DeleteObject

        keys = [
            o.object_name
            for o in self.client.list_objects(self.bucket, prefix=self._key(name), recursive=True)
        ]
        errors = list(self.client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            raise ModelStoreError(f"could not remove {errors[0].name}: {errors[0].message}")
        return len(keys)


class DirStore:
    """``<root>/<model>/``: a PVC the workers mount as their models root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, name: str) -> str:
        return str(self.root / name)

    def holds(self, name: str, rel: str, size: int, sha: str) -> bool:
        """The file is there with this size and content (hashed only when the size matches)."""
        path = self.root / name / rel
        return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha

    def upload(self, name: str, rel: str, size: int, sha: str, reader: Throttled) -> None:
        target = self.root / name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with partial.open("wb") as out:
            shutil.copyfileobj(reader, out, CHUNK)
        os.replace(partial, target)

    def manifest(self, name: str) -> bytes | None:
        path = self.root / name / MANIFEST
        return path.read_bytes() if path.is_file() else None

    def write_manifest(self, name: str, raw: bytes) -> None:
        path = self.root / name / MANIFEST
        partial = path.with_name(f".{MANIFEST}.partial")
        partial.write_bytes(raw)
        os.replace(partial, path)

    def drop_manifest(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name / MANIFEST).unlink()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def chunks(self, name: str, rel: str) -> Iterator[bytes]:
        with (self.root / name / rel).open("rb") as handle:
            yield from iter(lambda: handle.read(CHUNK), b"")

    def remove(self, name: str) -> int:
        path = self.root / name
        count = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
        shutil.rmtree(path, ignore_errors=True)
        return count


def push(
    snapshot: Snapshot,
    store: Store,
    *,
    hashing: Progress = lambda n: None,
    sending: Progress = lambda n: None,
    rate: float | None = None,
) -> PushReport:
    """Publish ``snapshot`` to ``store`` (module docstring); resumes an interrupted push."""
    name = snapshot.model
    manifest = build_manifest(snapshot, hashing)
    raw = manifest_bytes(manifest)
    report = PushReport(version=version_of(raw))
    if store.manifest(name) == raw:
        report.kept = list(manifest["files"])
        return report  # already published, byte for byte
    store.drop_manifest(name)  # workers see no model, never a mix of two versions
    for rel, meta in manifest["files"].items():
        size, sha = meta["size"], meta["sha256"]
        if store.holds(name, rel, size, sha):  # sent before an interruption: kept
            report.kept.append(rel)
            sending(size)
            continue
        with (snapshot.root / rel).open("rb") as handle:
            store.upload(name, rel, size, sha, Throttled(handle, sending, rate))
        report.uploaded.append(rel)
        report.bytes_sent += meta["size"]
    store.write_manifest(name, raw)
    return report


def total_bytes(snapshot: Snapshot) -> int:
    return sum(
        p.stat().st_size for p in snapshot.root.rglob("*") if p.is_file() and p.name not in IGNORED
    )


def list_models(store: Store) -> list[Published]:
    out = []
    for name in store.names():
        raw = store.manifest(name)
        if raw is None:
            out.append(Published(name, complete=False))
            continue
        files = json.loads(raw)["files"]
        size = sum(int(m["size"]) for m in files.values())
        out.append(Published(name, len(files), size, version_of(raw)))
    return out


def read_manifest(store: Store, name: str) -> dict[str, Any]:
    raw = store.manifest(name)
    if raw is None:
        raise ModelStoreError(
            f"{store.describe(name)} has no {MANIFEST}: {name} is not published (or its push "
            f"did not finish: run `editflow models push DIR --name {name}` again)"
        )
    return json.loads(raw)


def verify(store: Store, name: str, progress: Progress = lambda n: None) -> list[str]:
    """Every file of ``name`` hashed again; returns what differs from the manifest."""
    bad = []
    for rel, meta in read_manifest(store, name)["files"].items():
        try:
            sha, size = hash_stream(store.chunks(name, rel), progress)
        except Exception as exc:  # a missing object: reported with the others
            bad.append(f"{rel}: unreadable ({exc.__class__.__name__})")
            continue
        if size != meta["size"]:
            bad.append(f"{rel}: {size} bytes, the manifest says {meta['size']}")
        elif sha != meta["sha256"]:
            bad.append(f"{rel}: sha256 {sha[:16]}…, the manifest says {meta['sha256'][:16]}…")
    return bad


def remove(store: Store, name: str) -> int:
    """Unpublish ``name`` (the manifest first, so no worker starts a download of it)."""
    if store.manifest(name) is None and name not in store.names():
        raise ModelStoreError(f"{store.describe(name)}: nothing is published as {name}")
    store.drop_manifest(name)
    return store.remove(name)
