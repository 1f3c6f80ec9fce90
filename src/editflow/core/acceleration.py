"""Per-model acceleration settings: a cache method, FP8, regional compile.

Plain data with no torch import: the model registry (``editflow.inference.registry``, read
by the operator too) declares each model's defaults with it, and the worker's settings
(``EDITFLOW_WORKER__ACCELERATION``, a JSON map of model name to :class:`Acceleration`)
override them field by field. ``editflow.inference.accel`` turns the result into
``diffusers.hooks`` cache configs, torchao FP8 and ``compile_repeated_blocks`` on a loaded
pipeline.

Every default is off: a cache method's quality, and FP8's and compile's speed, are
measured on a GPU with real weights before a default changes (``benchmarks/gpu_longcat.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CacheMethod = Literal["none", "first_block", "taylorseer", "magcache"]
Fp8Mode = Literal["none", "rowwise", "tensorwise"]

#: The thresholds diffusers uses when none is given.
DEFAULT_THRESHOLDS: dict[str, float] = {"first_block": 0.05, "magcache": 0.06}


class CacheSettings(BaseModel):
    """One ``diffusers.hooks`` cache method and the settings it reads.

    * ``first_block`` (FirstBlockCacheConfig): after the first block, the rest of a step is
      skipped when its residual changed by less than ``threshold`` (relative mean) since
      the last computed step; 0 skips nothing.
    * ``taylorseer`` (TaylorSeerCacheConfig): attention outputs are computed for the first
      ``disable_cache_before_step`` steps, then every ``cache_interval``-th step, and
      predicted by a Taylor series of order ``max_order`` in between.
    * ``magcache`` (MagCacheConfig): steps are skipped while the accumulated error of the
      checkpoint's magnitude ratios stays under ``threshold``; ``mag_ratios`` must be
      calibrated on the real checkpoint, so there is no default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: CacheMethod = "none"
    threshold: float | None = Field(
        None, ge=0, description="first_block, magcache (default 0.05 and 0.06)"
    )
    cache_interval: int = Field(5, ge=1, description="taylorseer: steps between full computes")
    disable_cache_before_step: int = Field(
        3, ge=0, description="taylorseer: steps always computed first"
    )
    disable_cache_after_step: int | None = Field(
        None, ge=0, description="taylorseer: steps from this one on are always computed"
    )
    max_order: int = Field(1, ge=0, le=4, description="taylorseer: order of the series")
    mag_ratios: list[float] | None = Field(
        None, min_length=2, description="magcache: magnitude ratios per step (calibrated)"
    )
    max_skip_steps: int = Field(3, ge=1, description="magcache: consecutive steps skipped")
    retention_ratio: float = Field(
        0.2, ge=0, le=1, description="magcache: share of first steps never skipped"
    )

    @model_validator(mode="after")
    def _magcache_needs_ratios(self) -> CacheSettings:
        if self.method == "magcache" and not self.mag_ratios:
            raise ValueError(
                "cache.method=magcache needs cache.mag_ratios: magnitude ratios calibrated on "
                "the real checkpoint (editflow.inference.accel.calibrate_magcache, or "
                "benchmarks/gpu_longcat.py --weights DIR); there is no default"
            )
        return self

    @property
    def effective_threshold(self) -> float | None:
        if self.threshold is not None:
            return self.threshold
        return DEFAULT_THRESHOLDS.get(self.method)

    def label(self) -> str:
        """What the result records, e.g. ``cache:first_block(threshold=0.05)``."""
        if self.method in ("first_block", "magcache"):
            return f"cache:{self.method}(threshold={self.effective_threshold:g})"
        if self.method == "taylorseer":
            return (
                f"cache:taylorseer(interval={self.cache_interval},"
                f"warmup={self.disable_cache_before_step},order={self.max_order})"
            )
        return "cache:none"


class Acceleration(BaseModel):
    """A model's acceleration path. ``compile`` None follows the worker-wide
    ``EDITFLOW_WORKER__COMPILE_REPEATED_BLOCKS`` (kept from before per-model settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cache: CacheSettings = CacheSettings()
    fp8: Fp8Mode = Field(
        "none",
        description="torchao float8 weights and dynamic activations for the transformer's "
        "linear layers, scaled per row or per tensor (CUDA GPUs of compute capability 8.9+)",
    )
    compile: bool | None = Field(
        None, description="transformer.compile_repeated_blocks() (regional compile)"
    )

    def over(self, base: Acceleration) -> Acceleration:
        """These settings over ``base``: only the fields set here replace ``base``'s (a
        ``cache`` set here replaces the whole cache method with its settings)."""
        update: dict[str, Any] = {name: getattr(self, name) for name in self.model_fields_set}
        return Acceleration.model_validate({**dict(base), **update})
