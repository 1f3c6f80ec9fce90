"""The straight line in-process against real MinIO: success, and each failure's exit code."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from editflow.core.errors import ExitCode
from editflow.core.s3 import s3_client
from editflow.core.settings import Settings
from editflow.events.worker_contract import WorkerResult, result_json_key
from editflow.inference.pipeline import ModelCache
from editflow.inference.worker import execute

from .conftest import ImageServer, Route, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(s3, tiny_models_root) -> ModelCache:
    from editflow.core.settings import WorkerSettings

    return ModelCache(WorkerSettings(models_root=str(tiny_models_root), device="cpu"), s3)


def request(url: str, **extra: object) -> str:
    body = {"edit_id": "edit-inproc", "attempt": 1, "source": {"url": url},
            "prompt": "Change the car's colour to blue", "parameters": {"seed": 7}}  # fmt: skip
    body.update(extra)
    return json.dumps(body)


def test_success_stores_image_and_result_and_signs_a_url(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache, tmp_path: Path
) -> None:
    image_server.routes["/car.png"] = Route(png_bytes((1600, 1200)))
    result, code = execute(request(image_server.url("/car.png")), worker_settings, models)
    assert code == ExitCode.OK, result.error
    assert result.status == "success"
    assert (result.width, result.height) == (1024, 768)
    assert result.seed == 7
    client = s3_client(worker_settings.s3)
    stored = client.get_object(worker_settings.s3.bucket, result.result_key)
    image = Image.open(io.BytesIO(stored.read()))
    assert image.size == (1024, 768) and image.format == "PNG"
    meta = client.stat_object(worker_settings.s3.bucket, result.result_key).metadata
    assert meta["x-amz-meta-model"] == "longcat-image-edit"
    assert meta["x-amz-meta-seed"] == "7"
    key = result_json_key("results", "edit-inproc", 1)
    stored_result = WorkerResult.model_validate_json(
        client.get_object(worker_settings.s3.bucket, key).read()
    )
    assert stored_result.result_key == result.result_key
    assert httpx.get(result.result_url).status_code == 200
    termination = json.loads(Path(worker_settings.worker.termination_log).read_text())
    assert termination["status"] == "success"


def test_bad_parameters_fail_before_the_image_is_fetched(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache
) -> None:
    image_server.routes["/never.png"] = Route(png_bytes())
    raw = request(image_server.url("/never.png"), model="longcat-image-edit-turbo",
                  parameters={"steps": 50})  # fmt: skip
    result, code = execute(raw, worker_settings, models)
    assert code == ExitCode.INVALID_INPUT
    assert result.error.field == "parameters.steps" and "1..32" in result.error.message
    assert not any(path == "/never.png" for path, _ in image_server.seen)


def test_same_seed_same_bytes_through_the_worker(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache
) -> None:
    image_server.routes["/repro.png"] = Route(png_bytes((800, 600)))
    client = s3_client(worker_settings.s3)
    blobs = []
    for edit_id in ("repro-a", "repro-b"):
        result, code = execute(request(image_server.url("/repro.png"), edit_id=edit_id),
                               worker_settings, models)  # fmt: skip
        assert code == ExitCode.OK
        blobs.append(client.get_object(worker_settings.s3.bucket, result.result_key).read())
    assert blobs[0] == blobs[1]


def test_the_result_records_the_accelerations_the_model_ran_with(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache, s3, tiny_models_root
) -> None:
    from editflow.core.settings import WorkerSettings

    image_server.routes["/fast.png"] = Route(png_bytes((96, 64)))
    url = image_server.url("/fast.png")
    plain, _ = execute(request(url, edit_id="accel-plain"), worker_settings, models)
    assert plain.accelerations == []
    cache = {"method": "first_block", "threshold": 0.2}
    fast = ModelCache(
        WorkerSettings(models_root=str(tiny_models_root), device="cpu",
                       acceleration={"longcat-image-edit": {"cache": cache}}),
        s3,
    )  # fmt: skip
    result, code = execute(request(url, edit_id="accel-fbc"), worker_settings, fast)
    assert code == ExitCode.OK, result.error
    assert result.accelerations == ["cache:first_block(threshold=0.2)"]
    stored = WorkerResult.model_validate_json(
        s3_client(worker_settings.s3)
        .get_object(worker_settings.s3.bucket, result_json_key("results", "accel-fbc", 1))
        .read()
    )
    assert stored.accelerations == result.accelerations


def test_s3_sources_are_read_from_the_platform_bucket(
    worker_settings: Settings, models: ModelCache
) -> None:
    data = png_bytes((640, 480))
    client = s3_client(worker_settings.s3)
    client.put_object(worker_settings.s3.bucket, "inputs/s3-src.png", io.BytesIO(data), len(data))
    body = {"edit_id": "s3-src", "source": {"s3_key": "inputs/s3-src.png"},
            "prompt": "make it blue", "parameters": {"seed": 1}}  # fmt: skip
    result, code = execute(json.dumps(body), worker_settings, models)
    assert code == ExitCode.OK and (result.width, result.height) == (640, 480)

    body.update(edit_id="s3-missing", source={"s3_key": "inputs/nope.png"})
    result, code = execute(json.dumps(body), worker_settings, models)
    assert code == ExitCode.INVALID_INPUT and result.error.field == "source.s3_key"


def test_variants_come_from_one_call_each_with_its_seed_key_and_verdict(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache
) -> None:
    image_server.routes["/three.png"] = Route(png_bytes((640, 480)))
    raw = request(image_server.url("/three.png"), edit_id="variants-3", variants=3)
    result, code = execute(raw, worker_settings, models)
    assert code == ExitCode.OK, result.error
    assert [v.index for v in result.variants] == [1, 2, 3]
    assert [v.seed for v in result.variants] == [7, 8, 9]
    keys = [v.result_key for v in result.variants]
    assert keys == [
        "results/variants-3/attempt-1/result.png",
        "results/variants-3/attempt-1/result-2.png",
        "results/variants-3/attempt-1/result-3.png",
    ]
    assert result.result_key == keys[0] and result.quality == result.variants[0].quality
    assert all(v.quality is not None for v in result.variants)
    client = s3_client(worker_settings.s3)
    blobs = [client.get_object(worker_settings.s3.bucket, key).read() for key in keys]
    assert len(set(blobs)) == 3, "three different results"
    seeds = [
        client.stat_object(worker_settings.s3.bucket, key).metadata["x-amz-meta-seed"]
        for key in keys
    ]
    assert seeds == ["7", "8", "9"]
    # One result is the common case and stays as it was: no variant list.
    single, _ = execute(request(image_server.url("/three.png"), edit_id="variants-1"),
                        worker_settings, models)  # fmt: skip
    assert single.variants == [] and single.result_key.endswith("/result.png")


def test_more_than_four_variants_is_refused_with_the_field(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache
) -> None:
    raw = request(image_server.url("/three.png"), edit_id="variants-9", variants=9)
    result, code = execute(raw, worker_settings, models)
    assert code == ExitCode.INVALID_INPUT and result.error.field == "variants"


def test_a_preview_is_edited_at_the_reduced_size(
    worker_settings: Settings, image_server: ImageServer, models: ModelCache
) -> None:
    image_server.routes["/big.png"] = Route(png_bytes((1600, 1200)))
    raw = request(image_server.url("/big.png"), edit_id="preview-1", preview=True)
    result, code = execute(raw, worker_settings, models)
    assert code == ExitCode.OK, result.error
    assert (result.width, result.height) == (512, 384), "the full edit would be 1024x768"
