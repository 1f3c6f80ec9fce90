"""``worker.acceleration``: the chart hands each model's acceleration path to the workers'
settings, and its schema refuses what the worker would refuse at load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from editflow.core.acceleration import Acceleration, CacheMethod, CacheSettings, Fp8Mode
from editflow.core.settings import WorkerSettings
from editflow.inference import accel
from editflow.inference.registry import REGISTRY, get_spec
from tests.chart.chartkit import CHART, render_text

TURBO = {
    "compile": True,
    "cache": {"method": "first_block", "threshold": 0.05},
}
STANDARD = {
    "fp8": "rowwise",
    "cache": {"method": "magcache", "mag_ratios": [1.0, 1.1, 1.05, 0.98], "threshold": 0.04},
}


def worker_config(objs: list[dict[str, Any]]) -> dict[str, str]:
    return next(
        o["data"]
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-worker")
    )


def test_no_acceleration_renders_no_setting(render) -> None:
    assert "EDITFLOW_WORKER__ACCELERATION" not in worker_config(render({}))


def test_each_model_s_acceleration_reaches_the_worker_settings(render) -> None:
    values = {"worker": {"acceleration": {
        "longcat-image-edit-turbo": TURBO, "longcat-image-edit": STANDARD,
    }}}  # fmt: skip
    raw = worker_config(render(values))["EDITFLOW_WORKER__ACCELERATION"]
    worker = WorkerSettings(acceleration=json.loads(raw))
    turbo = accel.effective(get_spec("longcat-image-edit-turbo"), worker)
    assert accel.labels(turbo) == ["cache:first_block(threshold=0.05)", "compile:regional"]
    standard = accel.effective(get_spec("longcat-image-edit"), worker)
    assert accel.labels(standard) == ["fp8:rowwise", "cache:magcache(threshold=0.04)"]
    assert standard.cache.mag_ratios == [1.0, 1.1, 1.05, 0.98]


@pytest.mark.parametrize(
    ("acceleration", "message"),
    [
        ({"longcat-image-edit": {"cache": {"method": "magcache"}}}, "mag_ratios"),
        ({"longcat-image-edit": {"fp8": "e4m3"}}, "fp8"),
        ({"longcat-image-edit": {"cache": {"method": "teacache"}}}, "method"),
        ({"sd-1.5": {"compile": True}}, "invalid propertyName 'sd-1.5'"),
        ({"longcat-image-edit": {"compile": True, "fast": True}}, "fast"),
    ],
)
def test_the_schema_refuses_what_the_worker_would(acceleration, message, tmp_path: Path) -> None:
    result = render_text(tmp_path, {"worker": {"acceleration": acceleration}}, check=False)
    assert result.returncode != 0, f"{acceleration}: rendered although invalid"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_the_schema_lists_the_registry_s_models_and_every_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    acceleration = schema["properties"]["worker"]["properties"]["acceleration"]
    assert set(acceleration["propertyNames"]["enum"]) == set(REGISTRY)
    fields = acceleration["additionalProperties"]["properties"]
    assert set(fields) == set(Acceleration.model_fields)
    assert set(fields["cache"]["properties"]) == set(CacheSettings.model_fields)
    assert fields["cache"]["properties"]["method"]["enum"] == list(get_args(CacheMethod))
    assert fields["fp8"]["enum"] == list(get_args(Fp8Mode))
