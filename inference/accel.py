"""A model's acceleration path on a loaded pipeline: cache method, FP8, regional compile.

The settings (:class:`editflow.core.acceleration.Acceleration`) are the registry's defaults
for the model under the worker's ``EDITFLOW_WORKER__ACCELERATION`` entry for it. They are
applied once at load, in this order:

1. **FP8** (torchao ``Float8DynamicActivationFloat8WeightConfig``): the linear layers of the
   transformer's repeated blocks get float8 weights and dynamically scaled float8
   activations. CUDA only, compute capability 8.9+ (Ada, Hopper): refused elsewhere with the
   setting to change, never silently skipped.
2. **Cache method** (``diffusers.hooks``): ``transformer.enable_cache(config)``. FirstBlock
   and MagCache find their blocks in diffusers' ``TransformerBlockRegistry``, where
   LongCat's two block classes are not listed in diffusers 0.42: :func:`register_longcat_blocks`
   adds them (once). TaylorSeer finds attention modules by name and needs nothing.
3. **Regional compile**: ``compile_repeated_blocks``. With a cache method its hooks decide
   outside the graph (``torch.compiler.disable``), so blocks are compiled without
   ``fullgraph``.

Before each edit :func:`before_edit` resets the hooks' state and, for MagCache, sizes its
ratios to the edit's step count (its config is per step count).

The result records :func:`labels` of what ran (``WorkerResult.accelerations``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

from editflow.core.acceleration import Acceleration, CacheSettings
from editflow.core.errors import ModelError
from editflow.core.settings import WorkerSettings
from editflow.inference.registry import REGISTRY, ModelSpec

log = logging.getLogger(__name__)

#: How the LongCat blocks hand back their states: ``(encoder_hidden_states, hidden_states)``,
#: as FLUX's blocks do (``diffusers.hooks._helpers``).
_LONGCAT_BLOCKS = ("LongCatImageTransformerBlock", "LongCatImageSingleTransformerBlock")

#: FP8 needs ``torch._scaled_mm``'s float8 kernels: Ada (8.9) and Hopper (9.0) or newer.
FP8_MIN_CAPABILITY = (8, 9)


def effective(spec: ModelSpec, worker: WorkerSettings) -> Acceleration:
    """The registry's acceleration for ``spec`` under the worker's own entry for it.

    ``compile`` left unset in both follows ``worker.compile_repeated_blocks``, the
    worker-wide switch that predates per-model settings.
    """
    unknown = sorted(set(worker.acceleration) - set(REGISTRY))
    if unknown:
        raise ModelError(
            f"EDITFLOW_WORKER__ACCELERATION names model(s) this worker does not serve: "
            f"{', '.join(unknown)}; expected some of {', '.join(sorted(REGISTRY))}"
        )
    own = worker.acceleration.get(spec.name)
    chosen = own.over(spec.acceleration) if own is not None else spec.acceleration
    if chosen.compile is None:
        chosen = chosen.model_copy(update={"compile": worker.compile_repeated_blocks})
    return chosen


def labels(acceleration: Acceleration) -> list[str]:
    """What a result records for ``acceleration``: one entry per acceleration that runs."""
    out = []
    if acceleration.fp8 != "none":
        out.append(f"fp8:{acceleration.fp8}")
    if acceleration.cache.method != "none":
        out.append(acceleration.cache.label())
    if acceleration.compile:
        out.append("compile:regional")
    return out


def register_longcat_blocks() -> None:
    """Put LongCat's two block classes into diffusers' block registry, once.

    FirstBlockCache and MagCache read there which argument holds the hidden states and
    which output index each state comes back at. A class already there (registered by us
    earlier, or by a later diffusers) is left as it is.
    """
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers import transformer_longcat_image as longcat

    for name in _LONGCAT_BLOCKS:
        cls = getattr(longcat, name)
        try:
            TransformerBlockRegistry.get(cls)
        except ValueError:
            TransformerBlockRegistry.register(
                cls,
                TransformerBlockMetadata(
                    return_hidden_states_index=1, return_encoder_hidden_states_index=0
                ),
            )


def cache_config(cache: CacheSettings, steps: int) -> Any:
    """The ``diffusers.hooks`` config of ``cache`` for an edit of ``steps`` steps."""
    import torch
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if cache.method == "first_block":
        return FirstBlockCacheConfig(threshold=cache.effective_threshold)
    if cache.method == "taylorseer":
        return TaylorSeerCacheConfig(
            cache_interval=cache.cache_interval,
            disable_cache_before_step=cache.disable_cache_before_step,
            disable_cache_after_step=cache.disable_cache_after_step,
            max_order=cache.max_order,
            # The factors are differences of activations: float32 keeps them exact
            # enough on every device (bf16, diffusers' default, loses the small ones).
            taylor_factors_dtype=torch.float32,
        )
    if cache.method == "magcache":
        return MagCacheConfig(
            threshold=cache.effective_threshold,
            max_skip_steps=cache.max_skip_steps,
            retention_ratio=cache.retention_ratio,
            num_inference_steps=steps,
            mag_ratios=list(cache.mag_ratios or []),
        )
    raise ValueError(f"no cache config for method {cache.method!r}")


def denoiser_of(pipe: Any) -> Any:
    return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)


def check(spec: ModelSpec, acceleration: Acceleration, device: str) -> None:
    """Refuse, before any weight is read, what cannot run on ``device``."""
    if acceleration.fp8 == "none":
        return
    setting = f"EDITFLOW_WORKER__ACCELERATION {spec.name}.fp8={acceleration.fp8}"
    if not device.startswith("cuda"):
        raise ModelError(
            f"{setting}: FP8 runs only on a CUDA GPU (torchao float8 kernels) and this worker "
            f"runs on {device}; set {spec.name}'s fp8 to none (chart value "
            f"worker.acceleration.{spec.name}.fp8)"
        )
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"{setting}: torchao is not installed in this worker image; install "
            "editflow[inference,fp8] (the fp8 extra pins torchao) or set fp8 to none"
        ) from exc
    import torch

    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ModelError(
            f"{setting}: this GPU has compute capability {capability[0]}.{capability[1]}; "
            "FP8 needs 8.9 or newer (Ada, Hopper); set fp8 to none"
        )


def _repeated_block_linears(denoiser: Any) -> set[int]:
    """ids of the ``nn.Linear`` layers inside the denoiser's repeated blocks.

    They carry nearly all of the FLOPs; the embedders and the output projection stay in
    bf16, where FP8 costs quality for no measurable time.
    """
    import torch

    names = set(getattr(denoiser, "_repeated_blocks", None) or ())
    inside: set[int] = set()
    for module in denoiser.modules():
        if type(module).__name__ in names:
            inside.update(id(m) for m in module.modules() if isinstance(m, torch.nn.Linear))
    return inside


def quantize_fp8(denoiser: Any, mode: str) -> int:
    """torchao float8 weights and activations for the repeated blocks' linear layers;
    returns how many layers were converted."""
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        PerTensor,
        quantize_,
    )

    targets = _repeated_block_linears(denoiser)
    chosen: list[str] = []

    def wanted(module: torch.nn.Module, fqn: str) -> bool:
        # float8 matmuls need both dimensions to be multiples of 16.
        ok = (
            isinstance(module, torch.nn.Linear)
            and (not targets or id(module) in targets)
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )
        if ok:
            chosen.append(fqn)
        return ok

    granularity = PerRow() if mode == "rowwise" else PerTensor()
    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=granularity), wanted)
    return len(chosen)


def apply(
    pipe: Any,
    spec: ModelSpec,
    acceleration: Acceleration,
    device: str,
    *,
    compile_options: dict[str, Any] | None = None,
) -> list[str]:
    """Apply ``acceleration`` to a loaded, placed pipeline; returns :func:`labels`.

    ``compile_options`` go to ``compile_repeated_blocks`` (a benchmark's smoke run on a
    CPU passes ``backend="eager"``: inductor takes minutes there).
    """
    check(spec, acceleration, device)
    denoiser = denoiser_of(pipe)
    if denoiser is None:
        if labels(acceleration):
            raise ModelError(f"{spec.name} has no transformer or unet to accelerate")
        return []
    if acceleration.fp8 != "none":
        converted = quantize_fp8(denoiser, acceleration.fp8)
        log.info("fp8 applied", extra={"model": spec.name, "linear_layers": converted})
    if acceleration.cache.method != "none":
        if not hasattr(denoiser, "enable_cache"):
            raise ModelError(
                f"{spec.name}'s {type(denoiser).__name__} has no diffusers cache hooks; "
                f"set its cache.method to none"
            )
        register_longcat_blocks()
        denoiser.enable_cache(cache_config(acceleration.cache, spec.steps))
    if acceleration.compile:
        # A cache hook decides outside the graph, which fullgraph would refuse.
        fullgraph = acceleration.cache.method == "none"
        denoiser.compile_repeated_blocks(fullgraph=fullgraph, **(compile_options or {}))
    return labels(acceleration)


def before_edit(pipe: Any, acceleration: Acceleration, steps: int) -> None:
    """Fresh cache state for the next edit, and MagCache's ratios sized to its steps.

    diffusers resets the hooks at the end of a call; an edit that was interrupted or
    failed never got there, so the reset is done here, before each one.
    """
    denoiser = denoiser_of(pipe)
    if denoiser is None or not getattr(denoiser, "is_cache_enabled", False):
        return
    current = denoiser._cache_config
    if acceleration.cache.method == "magcache" and current.num_inference_steps != steps:
        denoiser.disable_cache()
        denoiser.enable_cache(cache_config(acceleration.cache, steps))
    denoiser._reset_stateful_cache()


def calibrate_magcache(pipe: Any, steps: int, edit: Callable[[], Any]) -> list[float]:
    """MagCache's magnitude ratios for this checkpoint: ``edit()`` runs once with the
    calibrating hooks (nothing skipped) and the ratios of its conditional pass come back.

    diffusers only prints the ratios it measured (then resets them), so its printout is
    read here rather than reaching into the hooks' state.
    """
    from diffusers.hooks import MagCacheConfig

    register_longcat_blocks()
    denoiser = denoiser_of(pipe)
    denoiser.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            edit()
    finally:
        denoiser.disable_cache()
    lines = printed.getvalue().splitlines()
    for index, line in enumerate(lines):
        if "Calibration Complete" in line and index + 1 < len(lines):
            return [float(x) for x in ast.literal_eval(lines[index + 1].strip())]
    raise ModelError("MagCache calibration printed no ratios: did the edit run every step?")
