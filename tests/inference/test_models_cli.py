"""``editflow models`` against the session's real MinIO (and a directory, as a PVC would be):
an invalid snapshot is refused naming the file, a push interrupted by SIGKILL resumes without
sending again what arrived, ``verify`` finds a corrupted object, ``rm`` unpublishes, and what
was pushed is what a worker downloads."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from editflow.core.s3 import s3_client
from editflow.core.settings import Settings, WorkerSettings
from editflow.inference.snapshot import SnapshotError, validate_snapshot
from editflow.inference.weights import MANIFEST, resolve_model_dir

from .conftest import worker_env

pytestmark = [pytest.mark.platform]

EDITFLOW = str(Path(os.sys.executable).with_name("editflow"))
MODEL = "longcat-image-edit"


def models(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EDITFLOW, "models", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def snapshot(tiny_models_root: Path, tmp_path: Path) -> Path:
    """A copy of the tiny LongCat snapshot to change at will."""
    target = tmp_path / "snapshot"
    shutil.copytree(tiny_models_root / MODEL, target)
    return target


def test_an_invalid_snapshot_is_refused_naming_the_file(snapshot: Path) -> None:
    assert validate_snapshot(snapshot, MODEL).pipeline_class == "LongCatImageEditPipeline"
    with pytest.raises(SnapshotError, match="not a registry model"):
        validate_snapshot(snapshot, "sdxl")
    with pytest.raises(SnapshotError, match="loaded as QwenImageEditPipeline"):
        validate_snapshot(snapshot, "qwen-image-edit")
    weights = snapshot / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(SnapshotError, match=r"transformer/diffusion_pytorch_model.safetensors"):
        validate_snapshot(snapshot, MODEL)
    weights.write_bytes(data)
    (snapshot / "vae" / "config.json").unlink()
    with pytest.raises(
        SnapshotError, match=r"vae/config.json is missing \(the config of Autoencoder"
    ):
        validate_snapshot(snapshot, MODEL)
    (snapshot / "vae" / "config.json").write_text("{not json")
    with pytest.raises(SnapshotError, match=r"vae/config.json is not valid JSON"):
        validate_snapshot(snapshot, MODEL)
    (snapshot / "model_index.json").unlink()
    with pytest.raises(SnapshotError, match=r"model_index\.json is missing"):
        validate_snapshot(snapshot, MODEL)


def test_the_cli_refuses_before_uploading_anything(
    worker_settings: Settings, snapshot: Path
) -> None:
    (snapshot / "scheduler" / "scheduler_config.json").unlink()
    prefix = f"models-{uuid.uuid4().hex[:6]}"
    refused = models(
        worker_env(worker_settings), "push", str(snapshot), "--name", MODEL, "--prefix", prefix
    )
    assert refused.returncode == 2
    assert "scheduler/scheduler_config.json is missing" in refused.stderr, refused.stderr
    s3 = worker_settings.s3
    assert not list(s3_client(s3).list_objects(s3.bucket, prefix=f"{prefix}/", recursive=True))


def test_push_interrupted_resumes_then_verify_finds_corruption_and_rm_unpublishes(
    worker_settings: Settings, snapshot: Path, tmp_path: Path
) -> None:
    # Big enough that a throttled push is still running when it is killed.
    (snapshot / "transformer" / "calibration.bin").write_bytes(os.urandom(12 << 20))
    env = worker_env(worker_settings)
    s3 = worker_settings.s3
    client = s3_client(s3)
    prefix = f"models-{uuid.uuid4().hex[:6]}"
    started = subprocess.Popen(
        [EDITFLOW, "models", "push", str(snapshot), "--name", MODEL, "--prefix", prefix,
         "--max-rate", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            arrived = list(
                client.list_objects(s3.bucket, prefix=f"{prefix}/{MODEL}/", recursive=True)
            )
            if len(arrived) >= 3:
                break
            assert started.poll() is None, started.communicate()
            time.sleep(0.05)
        started.send_signal(signal.SIGKILL)
    finally:
        started.wait(timeout=30)
    names = {
        o.object_name for o in client.list_objects(s3.bucket, prefix=f"{prefix}/", recursive=True)
    }
    assert f"{prefix}/{MODEL}/{MANIFEST}" not in names  # unfinished: no worker would load it
    listed = models(env, "list", "--prefix", prefix)
    assert "unfinished push" in listed.stdout, listed.stdout

    resumed = models(env, "push", str(snapshot), "--name", MODEL, "--prefix", prefix)
    assert resumed.returncode == 0, resumed.stderr
    kept = int(resumed.stderr.split(" already there")[0].rsplit(", ", 1)[-1])
    assert kept >= 2, resumed.stderr  # what arrived before the kill was not sent again
    manifest = json.loads(client.get_object(s3.bucket, f"{prefix}/{MODEL}/{MANIFEST}").read())
    assert manifest["model"] == MODEL and "transformer/calibration.bin" in manifest["files"]
    assert models(env, "verify", MODEL, "--prefix", prefix).returncode == 0

    # What was pushed is what a worker downloads and verifies.
    worker = WorkerSettings(models_root=str(tmp_path / "none"), weights_s3_prefix=prefix,
                            cache_dir=str(tmp_path / "cache"))  # fmt: skip
    local = resolve_model_dir(MODEL, worker, s3)
    assert (local / "transformer" / "calibration.bin").read_bytes() == (
        snapshot / "transformer" / "calibration.bin"
    ).read_bytes()

    # A corrupted object (same size) is found, named, and exits 1.
    key = f"{prefix}/{MODEL}/vae/config.json"
    good = client.get_object(s3.bucket, key).read()
    bad = good.replace(b"{", b"[", 1)
    client.put_object(s3.bucket, key, io.BytesIO(bad), len(bad))
    checked = models(env, "verify", MODEL, "--prefix", prefix)
    assert checked.returncode == 1
    assert "vae/config.json: sha256" in checked.stderr, checked.stderr

    removed = models(env, "rm", MODEL, "--prefix", prefix)
    assert removed.returncode == 0, removed.stderr
    assert not list(client.list_objects(s3.bucket, prefix=f"{prefix}/", recursive=True))
    assert "published" in models(env, "list", "--prefix", prefix).stdout
    gone = models(env, "verify", MODEL, "--prefix", prefix)
    assert gone.returncode == 2 and f"{MODEL} is not published" in gone.stderr


def test_a_directory_store_is_what_a_pvc_worker_reads(
    worker_settings: Settings, snapshot: Path, tmp_path: Path
) -> None:
    env = worker_env(worker_settings)
    pvc = tmp_path / "pvc"
    first = models(env, "push", str(snapshot), "--name", MODEL, "--to-dir", str(pvc))
    assert first.returncode == 0, first.stderr
    again = models(env, "push", str(snapshot), "--name", MODEL, "--to-dir", str(pvc))
    assert "0 files uploaded" in again.stderr, again.stderr  # the same version: nothing sent
    assert models(env, "verify", MODEL, "--to-dir", str(pvc)).returncode == 0
    worker = WorkerSettings(models_root=str(pvc), cache_dir=str(tmp_path / "cache"))
    assert resolve_model_dir(MODEL, worker, worker_settings.s3) == pvc / MODEL
    (pvc / MODEL / "tokenizer" / "tokenizer.json").write_text("{}")
    checked = models(env, "verify", MODEL, "--to-dir", str(pvc))
    assert checked.returncode == 1 and "tokenizer/tokenizer.json" in checked.stderr
