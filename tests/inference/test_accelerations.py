"""Per-model accelerations on the tiny LongCat: each cache hook engages and skips where its
setting says, a setting that skips nothing is bit for bit the plain edit, FP8 is refused on
the CPU, regional compile is put on the blocks, and the worker settings override the
registry's defaults."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from editflow.core.acceleration import Acceleration
from editflow.core.errors import ModelError
from editflow.core.settings import WorkerSettings
from editflow.inference import accel
from editflow.inference.pipeline import LoadedModel, load_pipeline, run_edit
from editflow.inference.registry import get_spec

SPEC = get_spec("longcat-image-edit")
STEPS = 3  # with CFG: 6 transformer calls, two cache contexts (cond, uncond)


@pytest.fixture(scope="module")
def longcat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from editflow.inference.tiny import save_tiny_model

    return save_tiny_model(SPEC.name, tmp_path_factory.mktemp("accel") / SPEC.name)


def load(model_dir: Path, **acceleration: Any) -> LoadedModel:
    worker = WorkerSettings(device="cpu", cpu_threads=1, acceleration={SPEC.name: acceleration})
    return load_pipeline(SPEC, model_dir, worker)


def edit(model: LoadedModel) -> tuple[list[Any], int]:
    """The transformer's outputs of one edit, and how often its last block computed."""
    outputs: list[Any] = []
    computed = [0]
    transformer = model.pipe.transformer
    transformer.register_forward_hook(lambda _m, _a, out: outputs.append(out[0].clone()))
    # proj_out runs only when the tail block itself computes (a skipped step bypasses it).
    tail = transformer.single_transformer_blocks[-1].proj_out
    tail.register_forward_hook(lambda *_: computed.__setitem__(0, computed[0] + 1))
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    run_edit(model, image=image, prompt="make the car blue", steps=STEPS, guidance_scale=4.5,
             negative_prompt="", seed=11)  # fmt: skip
    return outputs, computed[0]


@pytest.fixture(scope="module")
def plain(longcat_dir: Path) -> list[Any]:
    model = load(longcat_dir)
    assert model.accelerations == []
    outputs, computed = edit(model)
    assert computed == len(outputs) == 2 * STEPS
    return outputs


# (settings that skip nothing, settings that skip, the hook diffusers registers, on which module)
CACHES = {
    "first_block": (
        {"method": "first_block", "threshold": 0.0},
        {"method": "first_block", "threshold": 100.0},
        "fbc_leader_block_hook",
        "transformer_blocks.0",
    ),
    "taylorseer": (
        {"method": "taylorseer", "disable_cache_before_step": 99},
        {"method": "taylorseer", "disable_cache_before_step": 1, "cache_interval": 3},
        "taylorseer_cache",
        "transformer_blocks.0.attn",
    ),
    "magcache": (
        {"method": "magcache", "mag_ratios": [1.0, 1.0], "retention_ratio": 1.0},
        {"method": "magcache", "mag_ratios": [1.0, 1.0], "threshold": 0.5, "retention_ratio": 0},
        "mag_cache_leader_block_hook",
        "transformer_blocks.0",
    ),
}


@pytest.mark.parametrize("method", sorted(CACHES))
def test_a_cache_setting_that_skips_nothing_is_the_plain_edit_bit_for_bit(
    method: str, longcat_dir: Path, plain: list[Any]
) -> None:
    import torch

    model = load(longcat_dir, cache=CACHES[method][0])
    outputs, computed = edit(model)
    assert computed == 2 * STEPS
    assert len(outputs) == len(plain)
    assert all(torch.equal(a, b) for a, b in zip(outputs, plain, strict=True))


@pytest.mark.parametrize("method", sorted(CACHES))
def test_each_cache_method_engages_and_skips_where_its_setting_says(
    method: str, longcat_dir: Path, plain: list[Any]
) -> None:
    import torch

    _, skipping, hook, where = CACHES[method]
    model = load(longcat_dir, cache=skipping)
    module = model.pipe.transformer.get_submodule(where)
    assert module._diffusers_hook.get_hook(hook) is not None
    assert len(model.accelerations) == 1
    assert model.accelerations[0].startswith(f"cache:{method}(")
    outputs, computed = edit(model)
    # Step 0 computes in each context; after it the tail block is skipped (TaylorSeer
    # predicts the attention instead: next test), so the result is no longer the plain one.
    if method != "taylorseer":
        assert computed < 2 * STEPS
    assert not all(torch.equal(a, b) for a, b in zip(outputs, plain, strict=True))
    if method == "magcache":  # its ratios were sized to this edit's steps, not the default 50
        assert model.pipe.transformer._cache_config.num_inference_steps == STEPS


def test_taylorseer_predicts_attention_instead_of_computing_it(longcat_dir: Path) -> None:
    model = load(longcat_dir, cache=CACHES["taylorseer"][1])
    calls = [0]
    query = model.pipe.transformer.transformer_blocks[0].attn.to_q
    query.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    edit(model)
    # Steps 0 (warm-up) and 1 (interval) compute, step 2 predicts: 2 of 3 per context.
    assert calls[0] == 2 * 2


def test_longcat_blocks_are_registered_once_like_flux(longcat_dir: Path) -> None:
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.models.transformers import transformer_longcat_image as longcat

    accel.register_longcat_blocks()
    first = TransformerBlockRegistry.get(longcat.LongCatImageTransformerBlock)
    accel.register_longcat_blocks()
    assert TransformerBlockRegistry.get(longcat.LongCatImageTransformerBlock) is first
    single = TransformerBlockRegistry.get(longcat.LongCatImageSingleTransformerBlock)
    for meta in (first, single):
        assert (meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) == (1, 0)


def test_magcache_without_calibrated_ratios_is_refused() -> None:
    with pytest.raises(ValidationError, match="mag_ratios: magnitude ratios calibrated"):
        WorkerSettings(acceleration={SPEC.name: {"cache": {"method": "magcache"}}})


def test_magcache_calibration_gives_one_ratio_per_step(longcat_dir: Path) -> None:
    model = load(longcat_dir)
    ratios = accel.calibrate_magcache(model.pipe, STEPS, lambda: edit(model))
    assert len(ratios) == STEPS and ratios[0] == 1.0
    assert not model.pipe.transformer.is_cache_enabled  # calibration leaves no hook behind


def test_fp8_on_the_cpu_is_refused_naming_the_setting(longcat_dir: Path) -> None:
    with pytest.raises(
        ModelError, match=r"longcat-image-edit\.fp8=rowwise: FP8 runs only on a CUDA"
    ):
        load(longcat_dir, fp8="rowwise")


def test_fp8_without_torchao_is_refused_with_the_extra_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    with pytest.raises(ModelError, match=r"torchao is not installed.*editflow\[inference,fp8\]"):
        accel.check(SPEC, Acceleration(fp8="tensorwise"), "cuda")


def test_regional_compile_is_put_on_every_repeated_block(longcat_dir: Path) -> None:
    model = load(longcat_dir, compile=True)
    transformer = model.pipe.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert model.accelerations == ["compile:regional"]


def test_worker_settings_override_the_registry_field_by_field() -> None:
    base = Acceleration(cache={"method": "first_block", "threshold": 0.1}, fp8="rowwise")
    spec = type(SPEC)(**{**SPEC.__dict__, "acceleration": base})
    # The worker-wide switch that predates per-model settings still compiles ...
    chosen = accel.effective(spec, WorkerSettings(compile_repeated_blocks=True))
    assert (chosen.cache, chosen.fp8, chosen.compile) == (base.cache, "rowwise", True)
    # ... unless the model's own entry says otherwise; fields it leaves out stay the registry's.
    worker = WorkerSettings(
        compile_repeated_blocks=True,
        acceleration={SPEC.name: {"compile": False, "cache": {"method": "taylorseer"}}},
    )
    chosen = accel.effective(spec, worker)
    assert (chosen.cache.method, chosen.fp8, chosen.compile) == ("taylorseer", "rowwise", False)
    assert accel.labels(chosen) == [
        "fp8:rowwise",
        "cache:taylorseer(interval=5,warmup=3,order=1)",
    ]


def test_an_acceleration_for_a_model_the_worker_does_not_serve_is_refused() -> None:
    worker = WorkerSettings(acceleration={"longcat-image-edit-trubo": {"compile": True}})
    with pytest.raises(ModelError, match="longcat-image-edit-trubo; expected some of"):
        accel.effective(SPEC, worker)


def test_every_model_s_acceleration_is_off_by_default() -> None:
    from editflow.inference.registry import REGISTRY

    assert all(accel.labels(spec.acceleration) == [] for spec in REGISTRY.values())
    assert accel.effective(get_spec("longcat-image-edit-turbo"), WorkerSettings()).compile is False


def test_the_accelerations_survive_the_termination_message_cut() -> None:
    """What ran is part of every report channel, even when the message must be shortened."""
    import json

    from editflow.events.worker_contract import WorkerResult
    from editflow.inference.report import termination_message

    ran = ["fp8:rowwise", "cache:first_block(threshold=0.05)", "compile:regional"]
    result = WorkerResult(
        status="success", edit_id="e-1", attempt=1, model=SPEC.name, accelerations=ran,
        result_url="https://s3.example/" + "x" * 5000,
    )  # fmt: skip
    message = termination_message(result)
    assert len(message.encode()) <= 4096
    assert json.loads(message)["accelerations"] == ran
