"""The registry: every listed model is built tiny, loaded through the real path and run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from editflow.core.errors import InvalidInputError, ModelError
from editflow.core.s3 import s3_client
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.inference.pipeline import ModelCache, run_edit
from editflow.inference.preprocess import preprocess
from editflow.inference.registry import ALL_SPECS, DEFAULT_MODEL, REGISTRY, get_spec
from editflow.inference.weights import MANIFEST, publish_to_s3, resolve_model_dir

from .conftest import png_bytes

pytestmark = pytest.mark.slow


def test_registry_names_match_the_editjob_crd() -> None:
    from editflow.operator.crd import MODELS

    assert set(REGISTRY) <= set(MODELS)
    assert {s.name for s in ALL_SPECS} == set(MODELS)
    assert DEFAULT_MODEL in REGISTRY


@pytest.fixture(scope="module")
def cache(tiny_models_root: Path, s3: S3Settings) -> ModelCache:
    worker = WorkerSettings(models_root=str(tiny_models_root), device="cpu")
    return ModelCache(worker, s3)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_listed_model_edits_end_to_end_and_is_reproducible(name: str, cache: ModelCache) -> None:
    spec = get_spec(name)
    model = cache.get(spec)
    assert type(model.pipe).__name__ == spec.pipeline_class
    prepared = preprocess(png_bytes((900, 600)), max_pixels=10**7, multiple=spec.multiple)
    steps, guidance, negative = spec.resolve_params(
        steps=None, guidance_scale=None, negative_prompt=None, overrides=model.defaults
    )
    kwargs = dict(image=prepared.image, prompt="make it 'blue'", steps=steps,
                  guidance_scale=guidance, negative_prompt=negative)  # fmt: skip
    (first,) = run_edit(model, seed=5, **kwargs)
    (again,) = run_edit(model, seed=5, **kwargs)
    (other,) = run_edit(model, seed=6, **kwargs)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    # Variants: one call, one image per variant, each from its own seed.
    three = run_edit(model, seed=5, variants=3, **kwargs)
    assert len(three) == 3 and len({image.tobytes() for image in three}) == 3
    assert all(image.size == first.size for image in three)


def test_turbo_preset_defaults_to_8_steps_without_cfg() -> None:
    turbo = get_spec("longcat-image-edit-turbo")
    assert turbo.resolve_params(steps=None, guidance_scale=None, negative_prompt=None) == (
        8, 1.0, ""
    )  # fmt: skip


def test_parameters_outside_the_models_range_are_invalid_input() -> None:
    with pytest.raises(InvalidInputError) as caught:
        get_spec("longcat-image-edit").resolve_params(
            steps=500, guidance_scale=None, negative_prompt=None
        )
    assert caught.value.field == "parameters.steps"


def test_unknown_model_names_what_is_served() -> None:
    with pytest.raises(InvalidInputError, match="longcat-image-edit"):
        get_spec("sdxl")


def test_weights_from_an_s3_prefix_are_downloaded_once_and_verified(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    publish_to_s3(tiny_models_root / DEFAULT_MODEL, s3, f"weights-test/{DEFAULT_MODEL}")
    worker = WorkerSettings(models_root=str(tmp_path / "empty"), weights_s3_prefix="weights-test",
                            cache_dir=str(tmp_path / "cache"), device="cpu")  # fmt: skip
    local = resolve_model_dir(DEFAULT_MODEL, worker, s3)
    assert local.parent == tmp_path / "cache" / DEFAULT_MODEL  # <cache>/<model>/<version>
    assert (local / "model_index.json").is_file()
    stamp = (local / ".editflow-complete").stat().st_mtime_ns
    assert resolve_model_dir(DEFAULT_MODEL, worker, s3) == local  # cached: not downloaded again
    assert (local / ".editflow-complete").stat().st_mtime_ns == stamp
    # Loaded back through exactly the same path as any other weights.
    model = ModelCache(worker, s3).get(get_spec(DEFAULT_MODEL))
    assert model.model_dir == local


def test_a_tampered_cached_file_is_never_loaded(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    """The node cache is shared read-write by every namespace's workers, so its completion
    marker proves nothing (issue 20 §8): a cached file whose hash differs from the manifest's
    (or a file the manifest does not list) sends the worker back to S3 for the real ones."""
    publish_to_s3(tiny_models_root / DEFAULT_MODEL, s3, f"weights-tamper/{DEFAULT_MODEL}")
    worker = WorkerSettings(models_root=str(tmp_path / "empty"), weights_s3_prefix="weights-tamper",
                            cache_dir=str(tmp_path / "cache"), device="cpu")  # fmt: skip
    local = resolve_model_dir(DEFAULT_MODEL, worker, s3)
    index = local / "model_index.json"
    original = index.read_bytes()
    index.write_bytes(original.replace(b"{", b"{ ", 1))  # same marker, other bytes
    again = resolve_model_dir(DEFAULT_MODEL, worker, s3)
    assert (again / "model_index.json").read_bytes() == original
    (again / "transformer" / "planted.py").write_text("import os")
    third = resolve_model_dir(DEFAULT_MODEL, worker, s3)
    assert not (third / "transformer" / "planted.py").exists()


def test_a_corrupt_weights_file_is_refused(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    prefix = f"weights-corrupt/{DEFAULT_MODEL}"
    publish_to_s3(tiny_models_root / DEFAULT_MODEL, s3, prefix)
    client = s3_client(s3)
    bad = b"not the weights"
    client.put_object(s3.bucket, f"{prefix}/vae/config.json", io.BytesIO(bad), len(bad))
    worker = WorkerSettings(
        models_root=str(tmp_path / "empty"),
        weights_s3_prefix="weights-corrupt",
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ModelError, match="does not match its manifest"):
        resolve_model_dir(DEFAULT_MODEL, worker, s3)
    # Nothing half-done looks complete.
    assert not list((tmp_path / "cache").glob("*/*/.editflow-complete"))
    (tiny_models_root / DEFAULT_MODEL / MANIFEST).unlink()


def test_pipeline_output_is_resized_to_the_promised_size() -> None:
    from editflow.inference.output import encode, final_size
    from editflow.inference.profiles import OutputProfile

    raw = Image.new("RGB", (1184, 896))  # what the pipeline returns for a 4:3 input (~1 MP)
    encoded = encode(
        raw, final_size((1024, 768), OutputProfile("jpeg", 90)), OutputProfile("jpeg", 90)
    )
    assert Image.open(io.BytesIO(encoded.data)).size == (1024, 768)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_listed_model_runs_through_the_whole_worker(
    name: str, cache: ModelCache, worker_settings, image_server
) -> None:
    from editflow.core.errors import ExitCode
    from editflow.inference.worker import execute

    from .conftest import Route

    image_server.routes["/models-e2e.png"] = Route(png_bytes((1200, 900)))
    raw = json.dumps({"edit_id": f"e2e-{name}", "model": name, "prompt": "make the sky 'blue'",
                      "source": {"url": image_server.url("/models-e2e.png")}})  # fmt: skip
    result, code = execute(raw, worker_settings, cache)
    assert code == ExitCode.OK, result.error
    assert (result.model, result.width, result.height) == (name, 1024, 768)
    stored = s3_client(worker_settings.s3).get_object(worker_settings.s3.bucket, result.result_key)
    assert Image.open(io.BytesIO(stored.read())).size == (1024, 768)


def test_attention_backend_from_settings_is_applied(tiny_models_root: Path) -> None:
    from editflow.inference.pipeline import load_pipeline

    spec = get_spec(DEFAULT_MODEL)
    worker = WorkerSettings(device="cpu", attention_backend="_native_math")
    model = load_pipeline(spec, tiny_models_root / DEFAULT_MODEL, worker)
    processors = model.pipe.transformer.attn_processors.values()
    backends = {getattr(p, "_attention_backend", None) for p in processors}
    assert {getattr(b, "value", b) for b in backends} == {"_native_math"}
    prepared = preprocess(png_bytes((320, 240)), max_pixels=10**7)
    (image,) = run_edit(model, image=prepared.image, prompt="blue", steps=1, guidance_scale=1.0,
                        negative_prompt="", seed=1)  # fmt: skip
    assert image.size[0] > 0


def test_hub_attention_backends_are_refused(tiny_models_root: Path) -> None:
    from editflow.inference.pipeline import load_pipeline

    worker = WorkerSettings(device="cpu", attention_backend="flash_hub")
    with pytest.raises(ModelError, match="never contacts"):
        load_pipeline(get_spec(DEFAULT_MODEL), tiny_models_root / DEFAULT_MODEL, worker)


def test_a_model_dir_without_its_tokenizer_is_a_model_failure(
    tiny_models_root: Path, tmp_path: Path
) -> None:
    import shutil

    from editflow.inference.pipeline import load_tokenizer

    broken = tmp_path / DEFAULT_MODEL
    shutil.copytree(tiny_models_root / DEFAULT_MODEL, broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelError, match="tokenizer"):
        load_tokenizer(get_spec(DEFAULT_MODEL), broken)


@pytest.mark.parametrize(
    ("device", "offload", "direct"),
    [
        ("cuda", "none", True),  # safetensors straight into device memory: no host copy
        ("cuda:1", "none", True),
        ("cuda", "model", False),  # the offload hooks place the weights: load on the CPU
        ("cuda", "sequential", False),
        ("cpu", "none", False),  # nothing to move
    ],
)
def test_weights_load_straight_onto_an_accelerator_unless_offloaded(
    device: str, offload: str, direct: bool
) -> None:
    from editflow.inference.pipeline import loads_straight_to_device

    assert loads_straight_to_device(device, WorkerSettings(cpu_offload=offload)) is direct


# -- the weights cache (a node-level volume shared by the Pods of a node) ------------------
def _publish(root: Path, s3: S3Settings, prefix: str, name: str) -> None:
    publish_to_s3(root / DEFAULT_MODEL, s3, f"{prefix}/{name}")
    (root / DEFAULT_MODEL / MANIFEST).unlink(missing_ok=True)  # publish_to_s3 writes it there


def _cache_settings(tmp_path: Path, prefix: str, **extra: object) -> WorkerSettings:
    return WorkerSettings(
        models_root=str(tmp_path / "empty"),
        weights_s3_prefix=prefix,
        cache_dir=str(tmp_path / "cache"),
        **extra,
    )


def test_republished_weights_get_a_new_version_and_the_old_one_is_evicted(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    _publish(tiny_models_root, s3, "wc-versions", "m")
    worker = _cache_settings(tmp_path, "wc-versions")
    first = resolve_model_dir("m", worker, s3)
    # A new upload of the model: another manifest, so another version directory.
    extra = b"{}"
    s3_client(s3).put_object(s3.bucket, "wc-versions/m/extra.json", io.BytesIO(extra), len(extra))
    manifest = json.loads(s3_client(s3).get_object(s3.bucket, f"wc-versions/m/{MANIFEST}").read())
    manifest["files"]["extra.json"] = {
        "size": 2,
        "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    }
    body = json.dumps(manifest).encode()
    s3_client(s3).put_object(s3.bucket, f"wc-versions/m/{MANIFEST}", io.BytesIO(body), len(body))
    second = resolve_model_dir("m", worker, s3)
    assert second != first and second.parent == first.parent
    assert (second / "extra.json").read_bytes() == b"{}"
    assert not first.exists()  # superseded once the new version was complete


def test_models_no_longer_configured_are_evicted(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    for name in ("old-model", "kept-model"):
        _publish(tiny_models_root, s3, "wc-config", name)
    resolve_model_dir("old-model", _cache_settings(tmp_path, "wc-config"), s3)
    kept = resolve_model_dir(
        "kept-model", _cache_settings(tmp_path, "wc-config", cache_models=["kept-model"]), s3
    )
    assert kept.is_dir()
    assert not (tmp_path / "cache" / "old-model").exists()


def test_the_size_limit_evicts_the_least_recently_used_and_refuses_a_model_too_big(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    for name in ("a-model", "b-model", "c-model"):
        _publish(tiny_models_root, s3, "wc-size", name)
    one = sum(
        p.stat().st_size for p in (tiny_models_root / DEFAULT_MODEL).rglob("*") if p.is_file()
    )
    roomy = _cache_settings(tmp_path, "wc-size")
    resolve_model_dir("a-model", roomy, s3)
    resolve_model_dir("b-model", roomy, s3)
    resolve_model_dir("a-model", roomy, s3)  # a used last: b is the least recently used
    limited = _cache_settings(tmp_path, "wc-size", cache_max_bytes=int(one * 2.5))
    resolve_model_dir("c-model", limited, s3)
    cached = {d.name for d in (tmp_path / "cache").iterdir() if d.is_dir() and d.name[0] != "."}
    assert cached == {"a-model", "c-model"}
    tiny = _cache_settings(tmp_path / "other", "wc-size", cache_max_bytes=one // 2)
    with pytest.raises(ModelError, match="more than the cache limit") as refused:
        resolve_model_dir("a-model", tiny, s3)
    assert "CACHE_MAX_BYTES" in str(refused.value)
    assert not list((tmp_path / "other" / "cache").glob("*/*/model_index.json"))


def test_two_pods_starting_together_share_one_download(
    tiny_models_root: Path, s3: S3Settings, tmp_path: Path
) -> None:
    """Two processes on one cache resolve at the same moment: one downloads under the lock,
    the other waits and uses that copy (same files, same inode)."""
    import subprocess
    import sys

    _publish(tiny_models_root, s3, "wc-race", "m")
    worker = _cache_settings(tmp_path, "wc-race")
    start = tmp_path / "go"
    script = (
        "import json, os, sys, time\n"
        "from pathlib import Path\n"
        "from editflow.core.settings import S3Settings, WorkerSettings\n"
        "from editflow.inference.weights import resolve_model_dir\n"
        "worker = WorkerSettings.model_validate_json(sys.argv[1])\n"
        "s3 = S3Settings.model_validate_json(sys.argv[2])\n"
        "while not Path(sys.argv[3]).exists(): time.sleep(0.01)\n"
        "path = resolve_model_dir('m', worker, s3)\n"
        "print(json.dumps([str(path), os.stat(path / 'model_index.json').st_ino]))\n"
    )
    s3_json = json.dumps(
        {**s3.model_dump(mode="json"), "access_key": s3.access_key.get_secret_value(),
         "secret_key": s3.secret_key.get_secret_value()}
    )  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, worker.model_dump_json(), s3_json, str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    start.touch()
    outputs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    assert len(list((tmp_path / "cache" / "m").iterdir())) == 2  # the version and its stamp


def test_a_cancel_while_the_model_runs_skips_the_remaining_steps_and_gives_no_image(
    cache: ModelCache,
) -> None:
    """The warm worker's cancel (issue 20 §6): the first transformer forward cancels the edit;
    diffusers' loop then skips every later step and run_edit raises instead of returning."""
    from editflow.core.errors import EditCancelledError
    from editflow.inference import cancel

    spec = get_spec(DEFAULT_MODEL)
    model = cache.get(spec)
    prepared = preprocess(png_bytes((320, 320)), max_pixels=10**7, multiple=spec.multiple)
    token = cancel.Cancellation()
    forwards: list[int] = []

    def on_forward(*_: object) -> None:
        forwards.append(1)
        token.cancel("withdrawn")

    hook = model.pipe.transformer.register_forward_hook(on_forward)
    reset = cancel.CURRENT.set(token)
    try:
        with pytest.raises(EditCancelledError, match="withdrawn"):
            run_edit(model, image=prepared.image, prompt="make it blue", steps=20,
                     guidance_scale=1.0, negative_prompt=None, seed=1)  # fmt: skip
    finally:
        cancel.CURRENT.reset(reset)
        hook.remove()
    assert len(forwards) == 1, f"{len(forwards)} transformer forwards after the cancel"
    # The next edit on the same loaded model runs whole: the interrupt does not stick.
    (image,) = run_edit(model, image=prepared.image, prompt="make it blue", steps=2,
                        guidance_scale=1.0, negative_prompt=None, seed=1)  # fmt: skip
    assert image.size[0] > 0
