"""Streamed loading against the session's real MinIO, with the tiny LongCat pipeline: the
same tensors as a file load, a corrupted chunk refused by name with nothing left in the
cache, the cache filled and used on the next start, and a manifest without chunk hashes."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editflow.core.errors import ModelError
from editflow.core.s3 import s3_client
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference import modelstore, streamload
from editflow.inference.modelstore import S3Store, push
from editflow.inference.pipeline import ModelCache, load_pipeline
from editflow.inference.registry import get_spec
from editflow.inference.snapshot import validate_snapshot
from editflow.inference.streambench import measure_stream
from editflow.inference.streamload import (
    WeightsIntegrityError,
    locate_weights,
    wait_for_cache_fills,
)
from editflow.inference.weights import COMPLETE_MARKER, MANIFEST, publish_to_s3

pytestmark = [pytest.mark.platform]

MODEL = "longcat-image-edit"
#: Small chunks, so that the tiny model's weight files are streamed as several ranges.
CHUNK = 64 << 10
TRANSFORMER = "transformer/diffusion_pytorch_model.safetensors"


def _worker(tmp_path: Path, prefix: str, **extra: object) -> WorkerSettings:
    return WorkerSettings(
        models_root=str(tmp_path / "no-local-models"),
        weights_s3_prefix=prefix,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        **extra,
    )


def _push(
    tiny_models_root: Path, s3: S3Settings, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict]:
    monkeypatch.setattr(modelstore, "MANIFEST_CHUNK", CHUNK)
    prefix = f"stream-{uuid.uuid4().hex[:8]}"
    snapshot = validate_snapshot(tiny_models_root / MODEL, MODEL)
    push(snapshot, S3Store(s3_client(s3), s3.bucket, prefix))
    manifest = json.loads(
        s3_client(s3).get_object(s3.bucket, f"{prefix}/{MODEL}/{MANIFEST}").read()
    )
    return prefix, manifest


@pytest.fixture
def pushed(
    tiny_models_root: Path, s3: S3Settings, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict]:
    """The tiny snapshot pushed by ``editflow models push``'s code, in 64 KiB chunks."""
    return _push(tiny_models_root, s3, monkeypatch)


def _states(pipe: object) -> dict[str, dict]:
    return {
        name: component.state_dict()
        for name, component in pipe.components.items()  # type: ignore[attr-defined]
        if hasattr(component, "state_dict")
    }


def test_a_streamed_load_gives_the_file_loads_tensors_and_fills_the_cache(
    pushed: tuple[str, dict], tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    prefix, manifest = pushed
    entry = manifest["files"][TRANSFORMER]
    assert len(entry["chunks"]) > 1 and entry["chunk_hash"] == "xxh3-128"  # several ranges
    worker = _worker(tmp_path, prefix)
    spec = get_spec(MODEL)
    cache = ModelCache(worker, s3)
    cache.model_dir(spec)  # what a prompt check does first: the weights are streamed here
    assert MODEL in cache._streamed
    streamed = cache.get(spec)
    assert cache._streamed == {}  # and built into the pipeline here, not read from disk
    from_files = load_pipeline(spec, tiny_models_root / MODEL, worker)

    got, want = _states(streamed.pipe), _states(from_files.pipe)
    assert got.keys() == want.keys() == {"text_encoder", "transformer", "vae"}
    for component, state in want.items():
        assert got[component].keys() == state.keys(), component
        for key, tensor in state.items():
            other = got[component][key]
            assert other.dtype == tensor.dtype and other.shape == tensor.shape, (component, key)
            # bit for bit: compared as bytes, so that even NaN payloads must agree
            assert (
                other.reshape(-1).view(torch.uint8).equal(tensor.reshape(-1).view(torch.uint8))
            ), (component, key)

    # The node cache is filled behind the load (what `worker run` waits for before it
    # exits); the next start loads from it.
    assert wait_for_cache_fills(timeout=30)
    again = locate_weights(MODEL, worker, s3)
    assert again.model_dir == streamed.model_dir and again.tensors is None
    assert (streamed.model_dir / COMPLETE_MARKER).is_file()
    for rel in manifest["files"]:
        assert (streamed.model_dir / rel).read_bytes() == (
            tiny_models_root / MODEL / rel
        ).read_bytes()


# blake3 and sha256: what pushes wrote before xxh3-128, still read
@pytest.mark.parametrize("chunk_hash", ["xxh3-128", "blake3", "sha256"])
def test_a_corrupt_chunk_fails_the_load_by_name_and_leaves_nothing_in_the_cache(
    chunk_hash: str,
    tiny_models_root: Path,
    s3: S3Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(modelstore, "CHUNK_HASH", chunk_hash)
    prefix, manifest = _push(tiny_models_root, s3, monkeypatch)
    assert manifest["files"][TRANSFORMER]["chunk_hash"] == chunk_hash
    client = s3_client(s3)
    key = f"{prefix}/{MODEL}/{TRANSFORMER}"
    data = bytearray(client.get_object(s3.bucket, key).read())
    data[CHUNK + 10] ^= 0xFF  # one byte of the second chunk
    client.put_object(s3.bucket, key, io.BytesIO(bytes(data)), len(data))

    worker = _worker(tmp_path, prefix)
    with pytest.raises(
        WeightsIntegrityError, match=rf"{TRANSFORMER} .*chunk 1 of \d+ .*has {chunk_hash} "
    ):
        locate_weights(MODEL, worker, s3)
    leftovers = [p for p in Path(worker.cache_dir).rglob("*") if not p.name.endswith(".lock")]
    assert leftovers == [] or all(p.is_dir() and not any(p.iterdir()) for p in leftovers)


def test_a_manifest_without_chunk_hashes_still_streams(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    # publish_to_s3 writes the manifest as it was before chunk hashes (sha256 and size only).
    source = tmp_path / "snapshot"
    shutil.copytree(tiny_models_root / MODEL, source)
    prefix = f"stream-old-{uuid.uuid4().hex[:8]}"
    publish_to_s3(source, s3, f"{prefix}/{MODEL}")
    assert "chunks" not in json.loads((source / MANIFEST).read_text())["files"][TRANSFORMER]

    located = locate_weights(MODEL, _worker(tmp_path, prefix), s3)
    assert located.tensors is not None and TRANSFORMER in located.tensors
    assert located.filled is not None and located.filled.result(timeout=30) == located.model_dir
    want = load_file(source / TRANSFORMER)
    got = located.tensors[TRANSFORMER]
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)
    assert (located.model_dir / COMPLETE_MARKER).is_file()


def test_streaming_can_be_turned_off_and_the_bench_hook_compares_with_a_raw_read(
    pushed: tuple[str, dict], s3: S3Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix, manifest = pushed
    off = locate_weights(MODEL, _worker(tmp_path / "off", prefix, stream_weights=False), s3)
    assert off.tensors is None and (off.model_dir / COMPLETE_MARKER).is_file()  # downloaded
    # A model that would not fit in the memory left is downloaded, not held in memory.
    with monkeypatch.context() as patched:
        patched.setattr(streamload, "available_memory", lambda: 1000)
        tight = locate_weights(MODEL, _worker(tmp_path / "tight", prefix), s3)
    assert tight.tensors is None and (tight.model_dir / COMPLETE_MARKER).is_file()

    measured = measure_stream(MODEL, _worker(tmp_path, prefix, stream_concurrency=4), s3)
    assert measured.bytes == sum(m["size"] for m in manifest["files"].values())
    assert 0 < measured.load_seconds <= measured.filled_seconds and measured.raw_seconds > 0
    assert set(measured.as_dict()) >= {"raw_mb_s", "load_mb_s", "ratio"}


def test_a_chunk_hash_this_worker_does_not_know_is_refused_by_name(
    pushed: tuple[str, dict], s3: S3Settings, tmp_path: Path
) -> None:
    prefix, manifest = pushed
    manifest["files"][TRANSFORMER]["chunk_hash"] = "md5"
    raw = json.dumps(manifest).encode()
    s3_client(s3).put_object(s3.bucket, f"{prefix}/{MODEL}/{MANIFEST}", io.BytesIO(raw), len(raw))
    with pytest.raises(ModelError, match=rf"file {TRANSFORMER}: unknown chunk_hash 'md5'"):
        locate_weights(MODEL, _worker(tmp_path, prefix), s3)


class _UrllibOnly:
    """A response without http.client's ``_fp`` under it: what read_body_into falls back on."""

    def __init__(self, response: object) -> None:
        self._response = response
        self.headers = response.headers  # type: ignore[attr-defined]

    def stream(self, amount: int) -> object:
        return self._response.stream(amount)  # type: ignore[attr-defined]


def test_a_body_is_read_whole_into_its_buffer_on_either_read_path(
    pushed: tuple[str, dict], s3: S3Settings
) -> None:
    prefix, _ = pushed
    client, key = s3_client(s3), f"{prefix}/{MODEL}/{TRANSFORMER}"
    want = client.get_object(s3.bucket, key).read()
    start, length = 1000, 3 * CHUNK + 7
    for wrap in (lambda r: r, _UrllibOnly):
        response = client.get_object(s3.bucket, key, offset=start, length=length)
        buffer = bytearray(length + 5)  # room to spare: exactly the body is written
        try:
            assert streamload.read_body_into(wrap(response), memoryview(buffer)) == length
        finally:
            response.close()
            response.release_conn()
        assert bytes(buffer[:length]) == want[start : start + length] and buffer[length:] == bytes(
            5
        )
