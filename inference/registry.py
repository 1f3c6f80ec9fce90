"""The model registry: which diffusers edit pipelines the worker runs, and how.

Each :class:`ModelSpec` declares its pipeline class, the dtype of each
component, default and allowed generation parameters, the name of the
guidance argument, its prompt rules (token budget, counting tokenizer) and
the pixel multiple its dimensions must be rounded to. The names match the
EditJob CRD's ``spec.model`` enum.

Listing rule: a model is in :data:`REGISTRY` only if a tiny random-weight
instance of it is built offline by :mod:`editflow.inference.tiny` and runs
end to end in ``tests/inference`` (load through the real weight path, edit,
resize, encode). No torch import here: the operator may read this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from editflow.core.acceleration import Acceleration
from editflow.core.errors import InvalidInputError
from editflow.inference.prompts import PromptRules

DEFAULT_MODEL = "longcat-image-edit"


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    def check(self, value: float, name: str, model: str) -> None:
        if not self.low <= value <= self.high:
            raise InvalidInputError(
                f"{name}={value} is outside what {model} accepts ({self.low:g}..{self.high:g})",
                field=f"parameters.{name}",
            )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pipeline_class: str  # attribute of the ``diffusers`` package
    description: str
    steps: int
    guidance_scale: float
    steps_range: Range
    guidance_range: Range
    prompt: PromptRules
    #: The ``__call__`` keyword that carries our ``guidance_scale``.
    guidance_kwarg: str = "guidance_scale"
    #: Default negative prompt; ``None`` means the pipeline takes none.
    negative_prompt: str | None = None
    #: Extra fixed ``__call__`` keywords (e.g. InstructPix2Pix's image guidance).
    extra_call_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Pass the input's ``width``/``height`` so the pipeline keeps its aspect ratio (it
    #: still scales to its own working area); else the pipeline derives them itself.
    accepts_size: bool = False
    #: Output sides are rounded down to this multiple.
    multiple: int = 16
    #: dtype per component on an accelerator ("*" is the default for the rest).
    component_dtypes: dict[str, str] = field(default_factory=lambda: {"*": "bfloat16"})
    license_note: str = ""
    #: Cache method, FP8 and regional compile (worker settings override them per model).
    #: Every model's is off until measured on a GPU with real weights
    #: (``benchmarks/gpu_longcat.py``); MagCache also needs ratios from the real checkpoint.
    acceleration: Acceleration = field(default_factory=Acceleration)

    def resolve_params(
        self,
        *,
        steps: int | None,
        guidance_scale: float | None,
        negative_prompt: str | None,
        overrides: dict[str, Any] | None = None,
    ) -> tuple[int, float, str | None]:
        """Request values over weight-dir defaults over registry defaults, range-checked."""
        base = overrides or {}
        steps = int(steps if steps is not None else base.get("steps", self.steps))
        guidance = float(
            guidance_scale
            if guidance_scale is not None
            else base.get("guidance_scale", self.guidance_scale)
        )
        self.steps_range.check(steps, "steps", self.name)
        self.guidance_range.check(guidance, "guidance_scale", self.name)
        negative = negative_prompt if negative_prompt is not None else self.negative_prompt
        if negative_prompt is not None and self.negative_prompt is None:
            raise InvalidInputError(
                f"{self.name} takes no negative prompt", field="parameters.negative_prompt"
            )
        return steps, guidance, negative


_LONGCAT_PROMPT = PromptRules(max_tokens=512, tokenizer="tokenizer", quote_aware=True)

LONGCAT = ModelSpec(
    name="longcat-image-edit",
    pipeline_class="LongCatImageEditPipeline",
    description="Meituan LongCat-Image-Edit (6B): bilingual, accurate Chinese text rendering",
    steps=50,
    guidance_scale=4.5,
    negative_prompt="",
    steps_range=Range(1, 100),
    guidance_range=Range(1.0, 10.0),
    prompt=_LONGCAT_PROMPT,
)

LONGCAT_TURBO = ModelSpec(
    name="longcat-image-edit-turbo",
    pipeline_class="LongCatImageEditPipeline",
    description="LongCat-Image-Edit-Turbo: distilled, 8 steps without CFG (one pass per step)",
    steps=8,
    guidance_scale=1.0,
    negative_prompt="",
    steps_range=Range(1, 32),
    guidance_range=Range(1.0, 10.0),
    prompt=_LONGCAT_PROMPT,
)

QWEN_IMAGE_EDIT = ModelSpec(
    name="qwen-image-edit",
    pipeline_class="QwenImageEditPipeline",
    description="Qwen-Image-Edit (20B MMDiT): true CFG with a negative prompt",
    steps=50,
    guidance_scale=4.0,
    guidance_kwarg="true_cfg_scale",
    negative_prompt=" ",
    steps_range=Range(1, 100),
    guidance_range=Range(1.0, 10.0),
    # The pipeline's own text window (``tokenizer_max_length``); it does not truncate.
    prompt=PromptRules(max_tokens=1024, tokenizer="tokenizer"),
    accepts_size=True,
)

FLUX_KONTEXT = ModelSpec(
    name="flux-kontext",
    pipeline_class="FluxKontextPipeline",
    description="FLUX.1 Kontext [dev] (12B): guidance-distilled, 28 steps; English prompts",
    steps=28,
    guidance_scale=3.5,
    steps_range=Range(1, 100),
    guidance_range=Range(0.0, 10.0),
    # T5 reads 512 tokens; CLIP's 77 are a pooled summary and truncate by design.
    prompt=PromptRules(max_tokens=512, tokenizer="tokenizer_2", reserved_tokens=1),
    # Without height/width Kontext renders a 1024x1024 square whatever the input's aspect.
    accepts_size=True,
    license_note="FLUX.1 [dev] weights are under a non-commercial licence",
)

INSTRUCT_PIX2PIX = ModelSpec(
    name="instruct-pix2pix",
    pipeline_class="StableDiffusionInstructPix2PixPipeline",
    description="InstructPix2Pix (SD 1.5 UNet): small and fast, lower fidelity",
    steps=100,
    guidance_scale=7.5,
    negative_prompt="",
    extra_call_kwargs={"image_guidance_scale": 1.5},
    steps_range=Range(1, 200),
    guidance_range=Range(1.0, 20.0),
    prompt=PromptRules(max_tokens=77, tokenizer="tokenizer", reserved_tokens=2),
    multiple=8,
    component_dtypes={"*": "float16"},
)

ALL_SPECS: tuple[ModelSpec, ...] = (
    LONGCAT,
    LONGCAT_TURBO,
    QWEN_IMAGE_EDIT,
    FLUX_KONTEXT,
    INSTRUCT_PIX2PIX,
)

#: Models whose tiny instance is built and run end to end in the tests.
LISTED: tuple[str, ...] = (
    "longcat-image-edit",
    "longcat-image-edit-turbo",
    "qwen-image-edit",
    "flux-kontext",
    "instruct-pix2pix",
)

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in ALL_SPECS if s.name in LISTED}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown model {name!r}; this worker serves: {', '.join(sorted(REGISTRY))}",
            field="model",
        ) from None
