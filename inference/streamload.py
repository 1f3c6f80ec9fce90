"""Streamed loading: S3 weights read with parallel range reads straight into tensors.

When a model's weights live under the S3 weights prefix and this version is not in the
node cache yet (:mod:`.weights`), the stock path downloads every file, hashes it, and then
``from_pretrained`` reads it back from disk: three passes over 12-30 GB. Here there is one:

* every file of the manifest is split into its manifest chunks (64 MiB,
  :data:`~.weights.MANIFEST_CHUNK`) and the chunks are fetched by a pool of
  ``stream_concurrency`` threads with HTTP range reads, each one straight from the socket
  into the file's host buffer (:func:`read_body_into`), which is the memory the tensors are
  then built on (``torch.frombuffer``). The buffers are anonymous memory that asks for
  transparent huge pages (:func:`host_buffer`);
* each chunk is hashed in the thread that reads it, against the manifest's per-chunk hash
  (XXH3-128, :data:`~.weights.CHUNK_HASH`, which says why it need not be a cryptographic
  hash; BLAKE3 or sha256 in manifests pushed before it), block by
  block as it arrives, so verifying overlaps the reads. A manifest
  without chunk hashes (pushed before they existed) is still accepted: its whole-file hash is
  checked once the file is complete. A mismatch fails the load with
  :class:`WeightsIntegrityError`, which names the file and the chunk;
* the node cache is filled behind the load: configs and tokenizer files are written at once,
  into a staging directory that is renamed into place once every chunk of every file
  verified. The load returns then, with the tensors; two writer threads then write the
  weights chunks from those tensors' buffers (not during the load: on a node whose cores
  the S3 endpoint shares, the copies would slow the reads), every file is hashed again
  as written, and only then do the manifest and the completion marker of :mod:`.weights` go
  in and the model's lock is released (another Pod waits for it and then loads the files).
  A failed read removes the staging directory before the error is raised; a copy whose
  marker never came (a killed process) is fetched again by the next start; a worker whose
  edit finishes first waits for the fill before it exits (the fill thread is no daemon);
* :mod:`.assemble` builds the pipeline's model components from those tensors.

Why not a kept library. Run:ai's ``runai-model-streamer`` fits the shape (its
``FileStreamer`` hands out raw byte ranges, which could be hashed per chunk), but its S3
backend ``runai-model-streamer-s3`` requires boto3, whose botocore requires
``python-dateutil<3``, while this project pins ``python-dateutil==4.0.0`` (pip backtracks
for minutes, then cannot resolve). ``fastsafetensors`` reads only local files. So this is
the smallest loader that does the job, on the one S3 client the project already has
(``minio``, :func:`editflow.core.s3.s3_client`): ranged GETs in threads (the hashes, the socket
reads and ``os.pwrite`` release the GIL) and a safetensors header parser of a dozen lines.

Memory: the host buffers are the model's own tensors (nothing is copied on the CPU: the
kernel writes each socket read into them). On a GPU the components are
then moved to the device like any CPU-loaded pipeline. So a streamed load needs the whole
model in host memory for a moment: a model larger than :data:`MEMORY_SHARE` of the memory
still available (MemAvailable, capped by the Pod's cgroup limit) is downloaded instead and
loaded from the files (``device_map`` then places each tensor as it is read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editflow.core.errors import ModelError
from editflow.core.filelock import exclusive
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference.weights import (
    COMPLETE_MARKER,
    MANIFEST,
    MANIFEST_CHUNK,
    Published,
    cached_copy,
    chunk_hasher,
    evict_for,
    read_published,
    resolve_model_dir,
    s3_weights_errors,
    sha256_file,
    touch,
)

log = logging.getLogger(__name__)

#: One read of a response body, where it cannot go straight into its buffer (see
#: :func:`read_body_into`).
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
#: Cache fills still running behind a load (see :func:`wait_for_cache_fills`).
_FILLS: set[Future[Path]] = set()
#: How long a worker that is done waits for them before it exits anyway.
FILL_WAIT_SECONDS = 300.0


class WeightsIntegrityError(ModelError):
    """A streamed file differs from its manifest; the message names the file and chunk."""


@dataclass
class Located:
    """Where a model's files are, and its tensors when they were streamed in this process."""

    model_dir: Path
    tensors: Tensors | None = None
    #: Bytes read from S3 and seconds until the tensors were verified (streamed loads only).
    bytes_read: int = 0
    seconds: float = 0.0
    #: Done once the node cache holds the streamed copy (its marker written; streamed only).
    filled: Future[Path] | None = None


@dataclass
class _File:
    rel: str
    size: int
    sha256: str
    chunk_size: int
    chunks: list[str] | None
    #: The file's bytes (a numpy uint8 array over :func:`host_buffer`), which its tensors share.
    buffer: Any = field(repr=False)
    fd: int = -1
    #: The manifest's ``chunk_hash`` (sha256 when it names none) and its constructor.
    chunk_hash: str = "sha256"
    new_hash: Callable[..., Any] = field(default=hashlib.sha256, repr=False)

    @property
    def parts(self) -> int:
        return -(-self.size // self.chunk_size)


def host_buffer(size: int) -> Any:
    """``size`` bytes of fresh host memory for a file's tensors, as a numpy uint8 array.

    Why not ``torch.empty``: the threads' socket reads fault the buffer in as they write it,
    and with 4 KiB pages that is one fault per 4 KiB, each costlier under virtualisation (on
    the 2-core dev VM first-touching fresh memory ran at 0.3-1.9 GiB/s, of a load bound by
    CPU). A private anonymous mapping that asks for transparent huge pages (``madvise``; the
    mode most distributions ship) takes a 512th of the faults. No zero-fill pass either.
    """
    import numpy as np

    if size == 0:
        return np.empty(0, dtype=np.uint8)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):  # no THP: 4 KiB pages, still correct
        region.madvise(mmap.MADV_HUGEPAGE)
    # The array holds the mapping; the tensors built on it hold the array.
    return np.frombuffer(region, dtype=np.uint8)


def _plan(published: Published, staging: Path, files: list[_File]) -> None:
    """Open every file of the manifest in ``staging`` and give it its buffer (appended to
    ``files`` one by one, so that a failure halfway closes what was opened)."""
    for rel, meta in published.files():
        chunks = meta.get("chunks")
        size = int(meta["size"])
        chunk_size = int(meta.get("chunk_size") or MANIFEST_CHUNK) if chunks else MANIFEST_CHUNK
        if chunks is not None and len(chunks) != max(1, -(-size // chunk_size)):
            raise WeightsIntegrityError(
                f"manifest of {published.name}: {rel} lists {len(chunks)} chunk hashes for "
                f"{size} bytes in chunks of {chunk_size}: re-publish the model"
            )
        chunk_hash = str(meta.get("chunk_hash") or "sha256")
        new_hash = chunk_hasher(chunk_hash, f"manifest of {published.name}, file {rel}")
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        buffer = host_buffer(size)
        files.append(
            _File(rel, size, meta["sha256"], chunk_size, chunks, buffer, fd, chunk_hash, new_hash)
        )


def read_body_into(response: Any, view: memoryview, digest: Any = None) -> int:
    """Read a ranged GET's body (a urllib3 response, as ``minio`` returns it) into ``view``;
    returns the bytes read, at most ``len(view)``. ``digest`` (a hash object), if given, is
    updated with each block as it lands, while the block is still in the CPU's cache: hashing
    the 64 MiB chunk afterwards would read it all back from memory.

    Why the http.client response under urllib3's (its ``_fp``): urllib3's own ``readinto``
    and ``stream`` read into new bytes objects and copy them (in 2.8, ``read`` → http.client
    ``read`` → a bytearray → bytes → its buffer queue), two to three copies of every byte on
    CPUs the load is bound by. http.client's public ``readinto`` has the kernel write the
    socket's bytes straight into ``view``. A body with a content encoding (never MinIO's or
    S3's for an object; a proxy could add one) goes through urllib3, which decodes it.
    """
    raw = getattr(response, "_fp", None)
    if raw is None or not hasattr(raw, "readinto") or response.headers.get("content-encoding"):
        got = 0
        for block in response.stream(READ_BLOCK):
            if got + len(block) > len(view):
                return got
            view[got : got + len(block)] = block
            if digest is not None:
                digest.update(block)
            got += len(block)
        return got
    got = 0
    while got < len(view):
        count = raw.readinto(view[got : got + READ_BLOCK])
        if not count:
            break
        if digest is not None:
            digest.update(view[got : got + count])
        got += count
    return got


def _read_part(published: Published, file: _File, index: int) -> int:
    """Range-read chunk ``index`` of ``file`` into its buffer and verify it."""
    start = index * file.chunk_size
    length = min(file.chunk_size, file.size - start)
    view = memoryview(file.buffer)[start : start + length]
    hashed = file.new_hash() if file.chunks is not None else None
    response = published.client.get_object(
        published.bucket, published.key(file.rel), offset=start, length=length
    )
    try:
        got = read_body_into(response, view, hashed)
    finally:
        response.close()
        response.release_conn()
    if got != length:
        raise WeightsIntegrityError(
            f"weights file {file.rel} of {published.name}: chunk {index} (bytes {start}.."
            f"{start + length}) came back with {got} bytes: the object is shorter than its "
            "manifest says (a partial upload?); re-publish the model"
        )
    if hashed is not None and file.chunks is not None:
        digest = hashed.hexdigest()
        if digest != file.chunks[index]:
            raise WeightsIntegrityError(
                f"weights file {file.rel} of {published.name}: chunk {index} of {file.parts} "
                f"(bytes {start}..{start + length}) has {file.chunk_hash} {digest[:16]}…, the "
                f"manifest says {file.chunks[index][:16]}…: the object is corrupt or changed "
                f"after its push; push the snapshot again (`editflow models push DIR --name "
                f"{published.name}`)"
            )
    return length


def _verify_whole(published: Published, file: _File) -> None:
    """A manifest without chunk hashes: the whole file's hash, once all of it arrived."""
    if file.chunks is None and hashlib.sha256(file.buffer).hexdigest() != file.sha256:
        raise WeightsIntegrityError(
            f"weights file {file.rel} of {published.name} does not match its manifest "
            "(whole-file sha256; the manifest has no chunk hashes): the object is corrupt or "
            "partially uploaded; re-publish the model"
        )


def tensors_from_buffer(buffer: Any, where: str) -> dict[str, Any]:
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


def _remove_stale_staging(published: Published, cache: Path) -> None:
    """Staging copies of this model left by a killed process (the caller holds the model's
    lock, so no live process is filling one)."""
    for stale in cache.glob(f".{published.name}-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


#: A weights chunk verified and waiting to be written into the node cache: (fd, bytes, offset).
ChunkWrite = tuple[int, memoryview, int]


def _read_all(published: Published, files: list[_File], concurrency: int) -> list[ChunkWrite]:
    """Every chunk read and verified by ``concurrency`` threads. Returns the cache writes of
    the weights chunks, for the fill to make once the load is done; raises the first failure.

    Why the weights are written only after the load: on a machine whose cores the S3
    endpoint shares, every byte copied into the page cache during the load is CPU the
    reads and the hashes do not get (the load is CPU-bound there, not network-bound). The
    chunks stay in memory anyway: they are the tensors.
    """
    writes: list[ChunkWrite] = []

    def part(file: _File, index: int) -> None:
        _read_part(published, file, index)
        start = index * file.chunk_size
        view = memoryview(file.buffer)[start : start + min(file.chunk_size, file.size - start)]
        if file.rel.endswith(".safetensors"):
            writes.append((file.fd, view, start))
        else:  # configs and tokenizer: written now, the pipeline reads them from the copy
            os.pwrite(file.fd, view, start)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="stream") as pool:
        futures = [
            pool.submit(part, file, index)
            for file in sorted(files, key=lambda f: -f.size)
            for index in range(file.parts)
        ]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # the first failure, with its file and chunk
    for file in files:
        _verify_whole(published, file)
    return writes


def _finish_fill(published: Published, final: Path, files: list[_File], writes: list) -> None:
    """Behind the load: the weights chunks are written (two threads), every file is hashed
    again as written (the completion marker vouches for what is on disk, not for what was
    read), then the manifest and the marker. On any failure the copy goes."""
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="cache-fill") as writer:
            for future in [writer.submit(os.pwrite, *write) for write in writes]:
                future.result()
        for file in files:
            if file.size and sha256_file(final / file.rel) != file.sha256:
                raise WeightsIntegrityError(
                    f"weights file {file.rel} of {published.name} differs from its manifest "
                    "as written into the node cache (a failing disk?): not cached"
                )
        (final / MANIFEST).write_bytes(published.manifest_bytes)
        (final / COMPLETE_MARKER).write_text(published.digest)
        touch(final)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        for file in files:
            os.close(file.fd)


def stream_into_cache(
    published: Published, cache: Path, concurrency: int, release: Callable[[bool], None]
) -> tuple[Path, Tensors, Future[Path]]:
    """Stream every file of ``published`` (module docstring). Call with the model's cache
    lock held; ``release(filled)`` lets it go once the cache is filled (True) or the stream
    or the fill failed (False), before the returned future completes.

    Returns the copy's directory, the tensors of its safetensors files, and a future that
    completes once the copy is complete in the cache. The directory already holds every
    file (the small ones complete, so the pipeline's configs and tokenizer load from it)
    but no completion marker until that future is done: another process waits on the lock,
    and a copy without a marker is fetched again after a crash.
    """
    final = published.final(cache)
    files: list[_File] = []
    staging: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(published, cache)
        staging = Path(tempfile.mkdtemp(prefix=f".{published.name}-", dir=cache))
        _plan(published, staging, files)
        writes = _read_all(published, files, concurrency)
        tensors: Tensors = {
            file.rel: tensors_from_buffer(
                file.buffer, f"weights file {file.rel} of {published.name}"
            )
            for file in files
            if file.rel.endswith(".safetensors")
        }
        if final.exists():  # a copy without its marker: left by a crash
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        for file in files:
            os.close(file.fd)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        release(False)
        raise
    filled: Future[Path] = Future()

    def fill() -> None:
        try:
            _finish_fill(published, final, files, writes)
        except BaseException as exc:
            release(False)
            filled.set_exception(exc)
            return
        release(True)
        filled.set_result(final)

    # Not a daemon: a worker that finishes its edit first still completes the cache on exit
    # (and `worker run`, which leaves with os._exit, waits for it: wait_for_cache_fills).
    _FILLS.add(filled)
    filled.add_done_callback(_FILLS.discard)
    threading.Thread(target=fill, name=f"cache-fill-{published.name}").start()
    return final, tensors, filled


def available_memory() -> int | None:
    """Bytes this process may still take: the host's MemAvailable, capped by the cgroup v2
    limit (the Pod's memory limit) less what the cgroup already uses; None if unknown."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(int(limit) - used)
    return min(found) if found else None


#: A streamed load holds the model in host memory while it builds the pipeline: it is only
#: chosen when the model takes at most this share of the memory still available.
MEMORY_SHARE = 0.75


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
    size = sum(int(meta["size"]) for meta in published.manifest["files"].values())
    memory = available_memory()
    if memory is not None and size > MEMORY_SHARE * memory:
        # The download path writes to disk and from_pretrained places each tensor on the
        # device as it reads it: no whole copy in host memory.
        log.info(
            "weights larger than the memory a streamed load may take: downloading instead",
            extra={"model": name, "bytes": size, "available": memory},
        )
        return Located(resolve_model_dir(name, worker, s3))
    cache = Path(worker.cache_dir)
    began = time.perf_counter()
    lock = contextlib.ExitStack()
    with s3_weights_errors(name, published.bucket, published.prefix):
        lock.enter_context(exclusive(cache / f".{name}.lock"))
        try:
            found = cached_copy(published, cache)
        except BaseException:
            lock.close()
            raise
        if found is not None:
            lock.close()
            return Located(found)

        def release(filled: bool) -> None:
            lock.close()
            if filled:  # the cache policy, now that this copy is in place
                try:
                    evict_for(published.final(cache), worker)
                except OSError as exc:  # the copy is fine; the next start evicts again
                    log.warning("weights cache eviction failed", extra={"error": str(exc)})

        final, tensors, filled = stream_into_cache(
            published, cache, worker.stream_concurrency, release
        )
    seconds = time.perf_counter() - began
    return Located(final, tensors, size, seconds, filled)


def wait_for_cache_fills(timeout: float = FILL_WAIT_SECONDS) -> bool:
    """Wait until the cache fills behind this process's streamed loads are done (a worker
    about to exit). False when some were still running after ``timeout`` seconds: their
    copies stay unmarked, and the next start streams the model again."""
    pending = list(_FILLS)
    if not pending:
        return True
    _, still = wait(pending, timeout=timeout)
    if still:
        log.warning("the weights cache was not filled before exit", extra={"timeout": timeout})
    return not still
