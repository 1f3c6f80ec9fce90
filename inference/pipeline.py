"""Step 4: load a registry model from its local directory and run one edit.

Loading is ``<PipelineClass>.from_pretrained(model_dir, local_files_only=True)``
with ``HF_HUB_OFFLINE=1``: the same call for real weights and for the tiny
test models. Device, dtype, CPU offload and attention backend come from
:class:`~editflow.core.settings.WorkerSettings`; the model's acceleration path (cache
method, FP8, regional compile) from the registry under the worker's settings
(:mod:`editflow.inference.accel`).
Seeds drive a CPU ``torch.Generator`` so a seed gives the same noise on any
device.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editflow.core.acceleration import Acceleration
from editflow.core.errors import ModelError
from editflow.core.settings import S3Settings, WorkerSettings
from editflow.events.worker_contract import LoadDetail
from editflow.inference import accel, cancel
from editflow.inference.prompts import patch_diffusers_quote_splitter
from editflow.inference.registry import ModelSpec
from editflow.inference.streamload import Tensors, locate_weights
from editflow.inference.weights import model_dir_defaults

log = logging.getLogger(__name__)


def go_offline() -> None:
    """Make sure no library reaches a model hub from this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass
class LoadedModel:
    spec: ModelSpec
    model_dir: Path
    pipe: Any
    device: str
    dtype: str
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Where the load's seconds went (imports, reading, moving to the device).
    load_detail: LoadDetail = field(default_factory=LoadDetail)
    #: The acceleration path applied at load (inference/accel.py) ...
    acceleration: Acceleration = field(default_factory=Acceleration)
    #: ... and what each result records of it (``WorkerResult.accelerations``).
    accelerations: list[str] = field(default_factory=list)
    #: One edit at a time per pipeline (diffusers pipelines keep per-call state).
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.pipe, self.spec.prompt.tokenizer, None)


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_limit() -> int:
    """The cores this process may use: its affinity, capped by a cgroup v2 CPU quota
    (``cpu.max``, the Pod's CPU limit) when one is set."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def limit_cpu_threads(device: str, worker: WorkerSettings) -> int | None:
    """On the CPU, torch's intra-op threads: ``worker.cpu_threads``, else :func:`cpu_limit`.
    Returns the count set (None on an accelerator, where the CPU only feeds it)."""
    if not device.startswith("cpu"):
        return None
    import torch

    threads = worker.cpu_threads or cpu_limit()
    torch.set_num_threads(threads)
    return threads


def torch_dtypes(spec: ModelSpec, requested: str, device: str) -> dict[str, Any]:
    """``from_pretrained``'s per-component ``torch_dtype`` mapping."""
    import torch

    if requested != "auto":
        return {"default": getattr(torch, requested)}
    if device == "cpu":  # bf16/fp16 matmuls on CPU are slow or unsupported
        return {"default": torch.float32}
    return {
        ("default" if name == "*" else name): getattr(torch, dtype)
        for name, dtype in spec.component_dtypes.items()
    }


def load_tokenizer(spec: ModelSpec, model_dir: Path) -> Any:
    """Only the prompt-counting tokenizer: validates a prompt before the model loads."""
    from transformers import AutoTokenizer

    go_offline()
    path = model_dir / spec.prompt.tokenizer
    if not path.is_dir():
        raise ModelError(
            f"{model_dir} has no {spec.prompt.tokenizer}/ directory: not a complete "
            f"{spec.pipeline_class} (prompts cannot be checked without its tokenizer)"
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def loads_straight_to_device(device: str, worker: WorkerSettings) -> bool:
    """Whether ``from_pretrained`` can put the weights on ``device`` itself (``device_map``).

    On an accelerator without CPU offload it can: safetensors are read into device memory
    without a full copy in host RAM first, which for the 29 GB LongCat checkpoint is both
    the time and the host memory of a second copy. On the CPU there is nothing to move;
    with offload the hooks decide placement, so the model loads on the CPU first.
    """
    return device != "cpu" and worker.cpu_offload not in ("model", "sequential")


def load_pipeline(
    spec: ModelSpec, model_dir: Path, worker: WorkerSettings, streamed: Tensors | None = None
) -> LoadedModel:
    """``from_pretrained`` from ``model_dir`` and place it as the settings say.

    With ``streamed`` (the tensors of a streamed load, :mod:`.streamload`) the model
    components are built from those tensors (:mod:`.assemble`) and only the rest is read
    from ``model_dir``; they are on the CPU, so they are then moved to the device.
    """
    go_offline()
    began = time.perf_counter()
    import diffusers

    imported = time.perf_counter()

    # diffusers' own notes (e.g. "dimensions will be resized") go to stderr, not our logs.
    diffusers.utils.logging.set_verbosity_error()
    patch_diffusers_quote_splitter()
    if worker.attention_backend and worker.attention_backend.endswith("_hub"):
        raise ModelError(
            f"attention backend {worker.attention_backend!r} downloads kernels from a model hub, "
            "which the worker never contacts: install the kernel and use its local backend"
        )
    device = pick_device(worker.device)
    acceleration = accel.effective(spec, worker)
    accel.check(spec, acceleration, device)  # before a 29 GB read, not after
    limit_cpu_threads(device, worker)
    dtypes = torch_dtypes(spec, worker.dtype, device)
    cls = getattr(diffusers, spec.pipeline_class)
    direct = streamed is None and loads_straight_to_device(device, worker)
    placement: dict[str, Any] = {"device_map": device} if direct else {}
    try:
        if streamed is not None:
            from editflow.inference.assemble import build_components

            placement = build_components(model_dir, streamed, dtypes)
        pipe = cls.from_pretrained(model_dir, dtype=dtypes, local_files_only=True, **placement)
        read = time.perf_counter()
        if worker.cpu_offload == "model" and device != "cpu":
            pipe.enable_model_cpu_offload(device=device)
        elif worker.cpu_offload == "sequential" and device != "cpu":
            pipe.enable_sequential_cpu_offload(device=device)
        elif not direct:
            pipe.to(device)
        denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        if worker.attention_backend and denoiser is not None:
            denoiser.set_attention_backend(worker.attention_backend)
        accelerations = accel.apply(pipe, spec, acceleration, device)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise ModelError(f"could not load {spec.name} from {model_dir}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    placed = time.perf_counter()
    detail = LoadDetail(
        imports=round(imported - began, 4),
        read=round(read - imported, 4),
        to_device=round(placed - read, 4),
        direct=direct,
    )
    log.info(
        "model loaded",
        extra={
            "model": spec.name,
            "device": device,
            "accelerations": accelerations,
            **detail.model_dump(),
        },
    )
    return LoadedModel(
        spec=spec,
        model_dir=model_dir,
        pipe=pipe,
        device=device,
        dtype=str(dtypes.get("default")).removeprefix("torch."),
        defaults=model_dir_defaults(model_dir),
        load_detail=detail,
        acceleration=acceleration,
        accelerations=accelerations,
    )


class ModelCache:
    """Loaded pipelines by model name: one per process in ``run``, kept warm in ``serve``."""

    def __init__(self, worker: WorkerSettings, s3: S3Settings) -> None:
        self.worker = worker
        self.s3 = s3
        self._loaded: dict[str, LoadedModel] = {}
        self._dirs: dict[str, Path] = {}
        self._tokenizers: dict[str, Any] = {}
        #: Tensors streamed by model_dir() and not yet built into a pipeline by get().
        self._streamed: dict[str, Tensors] = {}
        self._lock = threading.Lock()
        #: How many pipelines this cache has loaded (warm mode exports it as a metric).
        self.loads = 0

    def model_dir(self, spec: ModelSpec) -> Path:
        if spec.name not in self._dirs:
            located = locate_weights(spec.name, self.worker, self.s3)
            if located.tensors is not None:
                self._streamed[spec.name] = located.tensors
            self._dirs[spec.name] = located.model_dir
        return self._dirs[spec.name]

    def tokenizer(self, spec: ModelSpec) -> Any:
        if spec.name in self._loaded:
            return self._loaded[spec.name].tokenizer
        if spec.name not in self._tokenizers:
            try:
                self._tokenizers[spec.name] = load_tokenizer(spec, self.model_dir(spec))
            except (OSError, ValueError) as exc:
                raise ModelError(f"could not load the tokenizer of {spec.name}: {exc}") from exc
        return self._tokenizers[spec.name]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def load_in_background(self, spec: ModelSpec) -> Future[tuple[LoadedModel, float]]:
        """Start loading ``spec`` in a daemon thread; the future gives (model, seconds).

        A cold worker fetches and preprocesses the image while the weights load. The
        thread is a daemon: a worker that fails on its input exits without waiting
        for a load it no longer needs.
        """
        future: Future[tuple[LoadedModel, float]] = Future()
        if spec.name in self._loaded:
            future.set_result((self._loaded[spec.name], 0.0))
            return future

        def target() -> None:
            began = time.perf_counter()
            try:
                model = self.get(spec)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result((model, time.perf_counter() - began))

        threading.Thread(target=target, name=f"load-{spec.name}", daemon=True).start()
        return future

    def get(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            if spec.name not in self._loaded:
                model_dir = self.model_dir(spec)
                self._loaded[spec.name] = load_pipeline(
                    spec, model_dir, self.worker, self._streamed.pop(spec.name, None)
                )
                self.loads += 1
            return self._loaded[spec.name]


def run_edit(
    model: LoadedModel,
    *,
    image: Any,
    prompt: str,
    steps: int,
    guidance_scale: float,
    negative_prompt: str | None,
    seed: int,
    variants: int = 1,
) -> list[Any]:
    """One edit; returns the pipeline's PIL images (at the pipeline's own size).

    ``variants`` > 1 is one call with ``num_images_per_prompt``: the prompt is encoded and
    the image latents computed once for all of them. Variant i draws its noise from its own
    generator seeded ``seed + i - 1``, so every variant has a seed of its own on record.
    """
    import torch

    spec = model.spec
    generators = [
        torch.Generator(device="cpu").manual_seed((seed + i) % 2**32) for i in range(variants)
    ]
    kwargs: dict[str, Any] = {
        "image": image,
        "prompt": prompt,
        "num_inference_steps": steps,
        spec.guidance_kwarg: guidance_scale,
        "generator": generators[0] if variants == 1 else generators,
        **spec.extra_call_kwargs,
    }
    if variants > 1:
        kwargs["num_images_per_prompt"] = variants
    if negative_prompt is not None:
        kwargs["negative_prompt"] = negative_prompt
    if spec.accepts_size:
        kwargs["width"], kwargs["height"] = image.size
    token = cancel.CURRENT.get()
    with model.lock:
        if token is not None:
            token.check()
            token.attach(model.pipe)
        try:
            accel.before_edit(model.pipe, model.acceleration, steps)
            output = model.pipe(**kwargs)
        except torch.OutOfMemoryError as exc:
            raise ModelError(f"{spec.name} ran out of accelerator memory: {exc}") from exc
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelError(f"{spec.name} failed during the edit: {exc}") from exc
        finally:
            if token is not None:
                token.detach()
    if token is not None:
        token.check()  # interrupted: the images are half-denoised, never a result
    images = list(output.images)
    if len(images) != variants:
        raise ModelError(f"{spec.name} returned {len(images)} images for {variants} variants")
    return images
