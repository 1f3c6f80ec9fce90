"""A pipeline's model components built from tensors already in memory (a streamed load).

``from_pretrained`` reads weights from files. After :mod:`.streamload` the weights are
already tensors, so each model component listed in ``model_index.json`` is built from its
config without allocating weights and then given those tensors:

* a diffusers model: built on the meta device (accelerate's ``init_empty_weights``) from its
  config, then ``load_state_dict(..., strict=True, assign=True)``, so its parameters *are*
  the streamed tensors, cast to the requested dtype as ``from_pretrained`` would (modules in
  ``_keep_in_fp32_modules`` stay float32);
* a transformers model: ``from_pretrained(None, config=..., state_dict=...)``, which applies
  the library's checkpoint key conversions and weight tying that a plain
  ``load_state_dict`` would miss (a Qwen2.5-VL checkpoint's ``visual.*`` keys live under
  ``model.visual.*`` in the module).

The pipeline class's own ``from_pretrained`` then takes these components as keyword
arguments and loads only the rest (scheduler, tokenizer, processor) from the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from editflow.core.errors import ModelError


def _dtype_for(dtypes: dict[str, Any], component: str) -> Any:
    import torch

    return dtypes.get(component, dtypes.get("default", torch.float32))


def _cast(state: dict[str, Any], dtype: Any, keep_fp32: list[str]) -> dict[str, Any]:
    import torch

    out = {}
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            out[key] = tensor
            continue
        wanted = torch.float32 if any(m in key.split(".") for m in keep_fp32) else dtype
        out[key] = tensor if tensor.dtype == wanted else tensor.to(wanted)
    return out


def _diffusers_model(cls: Any, directory: Path, state: dict[str, Any], dtype: Any) -> Any:
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls.from_config(cls.load_config(directory))
    keep = list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    try:
        model.load_state_dict(_cast(state, dtype, keep), strict=True, assign=True)
    except RuntimeError as exc:  # missing or unexpected keys, wrong shapes
        raise ModelError(
            f"{directory.name}: streamed weights do not fit {cls.__name__}: {exc}"
        ) from exc
    return model.eval()


def _transformers_model(cls: Any, directory: Path, state: dict[str, Any], dtype: Any) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    return cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype).eval()


def build_components(
    model_dir: Path, tensors: dict[str, dict[str, Any]], dtypes: dict[str, Any]
) -> dict[str, Any]:
    """``{component: model}`` for every component of ``model_dir`` whose weights are in
    ``tensors`` (keyed by file path relative to ``model_dir``; shards of one component are
    merged)."""
    import diffusers
    import transformers

    index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
    libraries = {"diffusers": diffusers, "transformers": transformers}
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry[:2]:
            continue
        state: dict[str, Any] = {}
        for rel, file_tensors in tensors.items():
            if Path(rel).parent == Path(name):
                state.update(file_tensors)
        if not state:
            continue  # not a model (scheduler, tokenizer, processor): loaded from its files
        library, class_name = str(entry[0]), str(entry[1])
        cls = getattr(libraries.get(library), class_name, None)
        if cls is None:
            raise ModelError(f"{name}: {library}.{class_name} is not importable here")
        build = _diffusers_model if library == "diffusers" else _transformers_model
        components[name] = build(cls, model_dir / name, state, _dtype_for(dtypes, name))
    return components
