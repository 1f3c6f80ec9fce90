"""How close a streamed load comes to what the S3 endpoint can deliver: a benchmark hook.

Issue 23's goal is "streamed load ≥ 0.8× the raw read throughput" of the same objects from
the same MinIO. :func:`measure_stream` measures both in one run, one after the other:

* **raw read**: the manifest's objects fetched with the same ranged GETs, the same number
  of threads and the same socket reads as the loader (:func:`~.streamload.read_body_into`),
  each body read into one buffer per thread that is used again and again, and dropped (no
  hash, no fresh memory, no write, no tensors): the endpoint's and the network's limit on
  this machine;
* **streamed load**: :func:`~.streamload.locate_weights` into an empty cache directory,
  until its tensors are ready and verified (range reads into the tensors' buffers,
  per-chunk XXH3-128, the tensors built); the cache fill runs behind it and is timed
  separately (``filled_seconds``: until the copy is in the cache, re-hashed as written).

The raw read goes first, so both find the same server-side state (MinIO's own page cache
warm after the first); ``repeats`` runs alternate the two and keep the best of each.
"""

from __future__ import annotations

import queue
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference.streamload import locate_weights, read_body_into
from editflow.inference.weights import MANIFEST_CHUNK, Published, read_published


@dataclass(frozen=True)
class StreamMeasure:
    model: str
    bytes: int
    files: int
    concurrency: int
    raw_seconds: float
    load_seconds: float
    #: Until the node cache held the verified copy too (the fill runs behind the load).
    filled_seconds: float

    @property
    def raw_mb_s(self) -> float:
        return self.bytes / self.raw_seconds / 1e6

    @property
    def load_mb_s(self) -> float:
        return self.bytes / self.load_seconds / 1e6

    @property
    def ratio(self) -> float:
        """Streamed load throughput over raw read throughput (the goal: ≥ 0.8)."""
        return self.raw_seconds / self.load_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "raw_mb_s": round(self.raw_mb_s, 1),
            "load_mb_s": round(self.load_mb_s, 1),
            "ratio": round(self.ratio, 3),
        }


def _get_range(
    published: Published, scratch: queue.SimpleQueue[bytearray], rel: str, start: int, length: int
) -> int:
    """One ranged GET read into a scratch buffer taken from ``scratch`` and given back."""
    buffer = scratch.get()
    try:
        response = published.client.get_object(
            published.bucket, published.key(rel), offset=start, length=length
        )
        try:
            return read_body_into(response, memoryview(buffer)[:length])
        finally:
            response.close()
            response.release_conn()
    finally:
        scratch.put(buffer)


def raw_read(published: Published, concurrency: int) -> tuple[int, float]:
    """Every byte of the manifest's files with plain parallel ranged GETs: (bytes, seconds)."""
    ranges = []
    for rel, meta in published.files():
        size, chunk = int(meta["size"]), int(meta.get("chunk_size") or MANIFEST_CHUNK)
        ranges += [(rel, start, min(chunk, size - start)) for start in range(0, size, chunk)]
    # One buffer per thread, zero-filled (so faulted in) before the clock starts.
    scratch: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(concurrency):
        scratch.put(bytearray(max((length for *_, length in ranges), default=0)))
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(lambda r: _get_range(published, scratch, *r), ranges))
    return total, time.perf_counter() - began


def measure_stream(
    name: str, worker: WorkerSettings, s3: S3Settings, *, repeats: int = 1
) -> StreamMeasure:
    """Raw read and streamed load of model ``name`` under ``worker.weights_s3_prefix``."""
    published = read_published(name, worker, s3)
    raw_best = load_best = filled_best = float("inf")
    total = 0
    for _ in range(repeats):
        total, raw_seconds = raw_read(published, worker.stream_concurrency)
        raw_best = min(raw_best, raw_seconds)
        with tempfile.TemporaryDirectory(prefix="editflow-stream-") as cache:
            fresh = worker.model_copy(
                update={
                    "cache_dir": cache,
                    "models_root": str(Path(cache) / "none"),
                    "stream_weights": True,
                }
            )
            began = time.perf_counter()
            located = locate_weights(name, fresh, s3)
            load_best = min(load_best, time.perf_counter() - began)
            if located.filled is not None:
                located.filled.result()
            filled_best = min(filled_best, time.perf_counter() - began)
            del located
    return StreamMeasure(
        model=name,
        bytes=total,
        files=len(published.manifest["files"]),
        concurrency=worker.stream_concurrency,
        raw_seconds=raw_best,
        load_seconds=load_best,
        filled_seconds=filled_best,
    )
