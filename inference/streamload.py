"""Streamed loading: S3 weights read with parallel range reads straight into tensors.

When a model's weights live under the S3 weights prefix and this version is not in the
node cache yet (:mod:`.weights`), the stock path downloads every file, hashes it, and then
``from_pretrained`` reads it back from disk: three passes over 12-30 GB. Here there is one:

* every file of the manifest is split into its manifest chunks (64 MiB,
  :data:`~.weights.MANIFEST_CHUNK`) and the chunks are fetched by a pool of
  ``stream_concurrency`` threads with HTTP range reads, each one straight into the file's
  host buffer, which is the memory the tensors are then built on (``torch.frombuffer``);
* each chunk is hashed in the thread that read it, against the manifest's per-chunk sha256,
  as soon as it arrives, so verifying overlaps the reads of the other chunks. A manifest
  without chunk hashes (pushed before they existed) is still accepted: its whole-file hash is
  checked once the file is complete. A mismatch fails the load with
  :class:`WeightsIntegrityError`, which names the file and the chunk;
* each verified chunk is written at its offset into a staging copy of the file in the cache
  directory, and the staging directory is renamed into place (with the manifest and the
  completion marker of :mod:`.weights`) only after every file verified, so the next start
  loads from local files, and a failed stream leaves nothing in the cache;
* :mod:`.assemble` builds the pipeline's model components from those tensors.

Why not a kept library. Run:ai's ``runai-model-streamer`` fits the shape (its
``FileStreamer`` hands out raw byte ranges, which could be hashed per chunk), but its S3
backend ``runai-model-streamer-s3`` requires boto3, whose botocore requires
``python-dateutil<3``, while this project pins ``python-dateutil==4.0.0`` (pip backtracks
for minutes, then cannot resolve). ``fastsafetensors`` reads only local files. So this is
the smallest loader that does the job, on the one S3 client the project already has
(``minio``, :func:`editflow.core.s3.s3_client`): ranged GETs in threads (hashlib, the socket
reads and ``os.pwrite`` release the GIL) and a safetensors header parser of a dozen lines.

Memory: the host buffers are the model's own tensors (nothing is copied a second time on
the CPU); beyond them each thread holds one 1 MiB read block. On a GPU the components are
then moved to the device like any CPU-loaded pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editflow.core.errors import ModelError
from editflow.core.filelock import exclusive
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference.weights import (
    MANIFEST_CHUNK,
    Published,
    cached_copy,
    evict_for,
    read_published,
    resolve_model_dir,
    s3_weights_errors,
    staging_dir,
)

#: One read of a response body: what a thread holds besides the destination buffer.
READ_BLOCK = 1 << 20
#: safetensors' dtype names (the header's ``dtype``) and torch's.
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}

#: Tensors by file (path relative to the model directory), then by tensor name.
Tensors = dict[str, dict[str, Any]]


class WeightsIntegrityError(ModelError):
    """A streamed file differs from its manifest; the message names the file and chunk."""


@dataclass
class Located:
    """Where a model's files are, and its tensors when they were streamed in this process."""

    model_dir: Path
    tensors: Tensors | None = None
    #: Bytes read from S3 and seconds spent (streamed loads only).
    bytes_read: int = 0
    seconds: float = 0.0


@dataclass
class _File:
    rel: str
    size: int
    sha256: str
    chunk_size: int
    chunks: list[str] | None
    buffer: bytearray = field(repr=False)
    fd: int = -1

    @property
    def parts(self) -> int:
        return -(-self.size // self.chunk_size)


def _plan(published: Published, staging: Path) -> list[_File]:
    files = []
    for rel, meta in published.files():
        chunks = meta.get("chunks")
        size = int(meta["size"])
        chunk_size = int(meta.get("chunk_size") or MANIFEST_CHUNK) if chunks else MANIFEST_CHUNK
        if chunks is not None and len(chunks) != max(1, -(-size // chunk_size)):
            raise WeightsIntegrityError(
                f"manifest of {published.name}: {rel} lists {len(chunks)} chunk hashes for "
                f"{size} bytes in chunks of {chunk_size}: re-publish the model"
            )
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        files.append(_File(rel, size, meta["sha256"], chunk_size, chunks, bytearray(size), fd))
    return files


def _read_part(published: Published, file: _File, index: int) -> int:
    """Range-read chunk ``index`` of ``file`` into its buffer, verify it, write it to the cache."""
    start = index * file.chunk_size
    length = min(file.chunk_size, file.size - start)
    view = memoryview(file.buffer)[start : start + length]
    response = published.client.get_object(
        published.bucket, published.key(file.rel), offset=start, length=length
    )
    got = 0
    try:
        for block in response.stream(READ_BLOCK):
            if got + len(block) > length:
                break
            view[got : got + len(block)] = block
            got += len(block)
    finally:
        response.close()
        response.release_conn()
    if got != length:
        raise WeightsIntegrityError(
            f"weights file {file.rel} of {published.name}: chunk {index} (bytes {start}.."
            f"{start + length}) came back with {got} bytes: the object is shorter than its "
            "manifest says (a partial upload?); re-publish the model"
        )
    if file.chunks is not None:
        digest = hashlib.sha256(view).hexdigest()
        if digest != file.chunks[index]:
            raise WeightsIntegrityError(
                f"weights file {file.rel} of {published.name}: chunk {index} of {file.parts} "
                f"(bytes {start}..{start + length}) has sha256 {digest[:16]}…, the manifest "
                f"says {file.chunks[index][:16]}…: the object is corrupt or changed after its "
                f"push; push the snapshot again (`editflow models push DIR --name "
                f"{published.name}`)"
            )
    os.pwrite(file.fd, view, start)
    return length


def _verify_whole(published: Published, file: _File) -> None:
    """A manifest without chunk hashes: the whole file's hash, once all of it arrived."""
    if file.chunks is None and hashlib.sha256(file.buffer).hexdigest() != file.sha256:
        raise WeightsIntegrityError(
            f"weights file {file.rel} of {published.name} does not match its manifest "
            "(whole-file sha256; the manifest has no chunk hashes): the object is corrupt or "
            "partially uploaded; re-publish the model"
        )


def tensors_from_buffer(buffer: bytearray, where: str) -> dict[str, Any]:
    """The tensors of a safetensors file held in ``buffer``, as views of it (no copy).

    The format: an 8-byte little-endian header length, a JSON header mapping each tensor
    to its dtype, shape and ``data_offsets`` (relative to the end of the header), the data.
    """
    import torch

    (length,) = struct.unpack_from("<Q", buffer, 0)
    if length > len(buffer) - 8:
        raise WeightsIntegrityError(f"{where}: not a safetensors file (header of {length} bytes)")
    header = json.loads(bytes(memoryview(buffer)[8 : 8 + length]))
    base = 8 + length
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, DTYPES.get(info["dtype"], ""), None)
        if dtype is None:
            raise WeightsIntegrityError(f"{where}: tensor {name!r} has dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        shape = info["shape"]
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin)
        out[name] = flat.reshape(shape)
    return out


def stream_into_cache(published: Published, cache: Path, concurrency: int) -> tuple[Path, Tensors]:
    """Stream every file of ``published`` (module docstring); returns the cached copy's
    directory and the tensors of its safetensors files. Call with the model's cache lock."""
    tensors: Tensors = {}
    with staging_dir(published, cache) as staging:
        files = _plan(published, staging)
        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="stream") as pool:
                futures = [
                    pool.submit(_read_part, published, file, index)
                    for file in sorted(files, key=lambda f: -f.size)
                    for index in range(file.parts)
                ]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
                for future in done:
                    future.result()  # the first failure, with its file and chunk
        finally:
            for file in files:
                os.close(file.fd)
        for file in files:
            _verify_whole(published, file)
            if file.rel.endswith(".safetensors"):
                where = f"weights file {file.rel} of {published.name}"
                tensors[file.rel] = tensors_from_buffer(file.buffer, where)
    return published.final(cache), tensors


def locate_weights(name: str, worker: WorkerSettings, s3: S3Settings) -> Located:
    """The worker's weights lookup (:mod:`.weights`), streaming what S3 holds and the cache
    does not (unless ``stream_weights`` is off): the model's directory, plus its tensors
    when they were streamed now (the pipeline is then built from them, not from disk)."""
    local = Path(worker.models_root) / name
    if (local / "model_index.json").is_file() or not (
        worker.weights_s3_prefix and worker.stream_weights
    ):
        return Located(resolve_model_dir(name, worker, s3))
    published = read_published(name, worker, s3)
    cache = Path(worker.cache_dir)
    began = time.perf_counter()
    with (
        s3_weights_errors(name, published.bucket, published.prefix),
        exclusive(cache / f".{name}.lock"),
    ):
        found = cached_copy(published, cache)
        if found is not None:
            return Located(found)
        final, tensors = stream_into_cache(published, cache, worker.stream_concurrency)
    seconds = time.perf_counter() - began
    evict_for(final, worker)
    size = sum(int(meta["size"]) for meta in published.manifest["files"].values())
    return Located(final, tensors, size, seconds)
