"""LongCat-Image-Edit on one GPU: every acceleration against eager bf16, in one budgeted run.

One prepared run for a lent GPU machine (15 minutes in all, start included). It builds the
pipeline at its published size with random weights (transformer 10 double + 20 single
blocks, 24 heads x 128, 6.3 B parameters; Qwen2.5-VL-7B text encoder, 8.3 B; FLUX 16-channel
VAE) directly on the GPU in bf16, or loads real weights (``--weights DIR``, a
``save_pretrained`` directory) through the worker's own ``load_pipeline``, and edits a
1024x768 input (the worker's preprocessed size; the pipeline works at ~1 MP).

Measurements run in priority order, each written to the results file (JSON lines) the
moment it is taken, so a run cut off by its machine still reports:

1. eager bf16, the baseline: standard (50 steps, CFG 4.5: two transformer passes a step),
   then Turbo (8 steps, guidance 1);
2. regional compile (``compile_repeated_blocks``);
3. FP8 (torchao float8 weights and activations; skipped on the CPU, with the reason);
4. the cache methods (FirstBlock, TaylorSeer, MagCache with ratios calibrated in this run);
5. the best combination of them.

Each acceleration goes through the worker's own code (``editflow.inference.accel``). For
each: seconds per edit (median of ``--repeats`` after a warm-up edit, which compiles),
denoising it/s (steps over the time inside the transformer's forward calls, synchronised),
peak memory, and how often the transformer's last block computed. With random weights only
speed is reported: whether a cache method skips a step depends on the weights, so at real
size its rows are left out, and similarity (SSIM and PSNR against the eager edit at the same
seed) needs ``--weights``. ``--budget-s`` bounds the whole run: a measurement that would
not finish before the budget (less ``--cold-reserve-s`` kept for the cold start) is written
as skipped. Last comes the cold start: the pipeline saved (or the weights directory) is
dropped from the page cache and a fresh process loads it through ``load_pipeline``.

The goals, on one H100: a 50-step edit in <= 9 s at SSIM >= 0.95 to eager bf16 (real
weights); Turbo in <= 1.0 s; cold start (process start -> model on the GPU) in <= 15 s for
the real pipeline. The summary prints each measured figure beside its goal.

    python benchmarks/gpu_longcat.py --budget-s 480 --out $OUT/gpu_longcat.jsonl
    python benchmarks/gpu_longcat.py --weights /models/longcat-image-edit --budget-s 480
    python benchmarks/gpu_longcat.py --size tiny --device cpu   # smoke test, ~1 minute

On a lent machine, with the wheelhouse of ``benchmarks/gpu_wheelhouse.py`` carried: see
that script for the exact command.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"standard": (50, 4.5), "turbo": (8, 1.0)}
#: The smoke run's steps: enough for each cache method to skip something.
TINY_VARIANTS = {"standard": (3, 4.5), "turbo": (2, 1.0)}
PROMPT = "Replace the background with a beach at sunset and add the text '夏日特惠' in white"
SEED = 0
GOALS = {"standard_seconds": 9.0, "ssim": 0.95, "turbo_seconds": 1.0, "cold_start_seconds": 15.0}
#: Cache methods at their diffusers defaults; MagCache's ratios are calibrated in the run.
CACHES: dict[str, dict[str, Any]] = {
    "first_block": {"method": "first_block", "threshold": 0.05},
    "taylorseer": {"method": "taylorseer"},
    "magcache": {"method": "magcache"},
}


# -- building the pipeline --------------------------------------------------------------


def build_real(device: str, dtype: Any) -> Any:
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        LongCatImageEditPipeline,
        LongCatImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from editflow.inference.tiny import QWEN_SPECIAL_TOKENS, _qwen_tokenizer

    tokenizer = _qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                "mrope_section": [16, 24, 24]},
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
        # The published checkpoint: 10 double + 20 single blocks (6.3 B). The class
        # defaults (19 + 38, FLUX-sized) would build an 11.9 B model instead.
        transformer = LongCatImageTransformer2DModel(num_layers=10, num_single_layers=20)
        transformer = transformer.to(dtype).eval()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False,
        ).to(dtype).eval()  # fmt: skip
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    return LongCatImageEditPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_processor=processor, transformer=transformer,
    )  # fmt: skip


def build(args: argparse.Namespace, dtype: Any) -> Any:
    device = "cpu" if args.offload else args.device
    if args.weights:
        from editflow.core.settings import WorkerSettings
        from editflow.inference.pipeline import load_pipeline
        from editflow.inference.registry import get_spec

        worker = WorkerSettings(device=device, dtype=args.dtype)
        return load_pipeline(get_spec("longcat-image-edit"), Path(args.weights), worker).pipe
    if args.size == "real":
        return build_real(device, dtype)
    from editflow.inference.tiny import build_longcat

    return build_longcat().to(device=device, dtype=dtype)


def params_billions(module: Any) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e9, 3)


# -- the results file --------------------------------------------------------------------


@dataclass
class Results:
    """JSON lines appended and flushed to disk one by one: a killed run keeps every row."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        print(json.dumps(row, ensure_ascii=False), flush=True)

    def measured(self, variant: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "measurement" and r["variant"] == variant]


# -- one edit, timed ---------------------------------------------------------------------


class Bench:
    """The pipeline, the input, and timed edits on whatever transformer it holds now."""

    def __init__(self, pipe: Any, args: argparse.Namespace) -> None:
        import torch
        from PIL import Image

        self.pipe = pipe
        self.args = args
        self.cuda = args.device.startswith("cuda")
        self.torch = torch
        self.image = Image.effect_noise((1024, 768), 60).convert("RGB")
        self.baseline: dict[str, Any] = {}  # eager output image per variant (real weights)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def peak_gib(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def edit(self, steps: int, guidance: float, acceleration: Any) -> dict[str, Any]:
        """One edit: total and in-transformer seconds, tail-block computes, the image."""
        from editflow.inference import accel

        transformer = self.pipe.transformer
        inside = {"seconds": 0.0, "started": 0.0, "calls": 0, "tail": 0}

        def before(*_: Any) -> None:
            self.sync()
            inside["started"] = time.perf_counter()

        def after(*_: Any) -> None:
            self.sync()
            inside["seconds"] += time.perf_counter() - inside["started"]
            inside["calls"] += 1

        def tail(*_: Any) -> None:
            inside["tail"] += 1

        handles = [transformer.register_forward_pre_hook(before),
                   transformer.register_forward_hook(after)]  # fmt: skip
        if not acceleration.compile:
            # proj_out runs only when the last block computes: a skipped step bypasses it.
            # Never inside compiled blocks: a hook added per edit would recompile them.
            last = transformer.single_transformer_blocks[-1].proj_out
            handles.append(last.register_forward_hook(tail))
        try:
            accel.before_edit(self.pipe, acceleration, steps)
            self.sync()
            start = time.perf_counter()
            out = self.pipe(image=self.image, prompt=PROMPT, negative_prompt="",
                            num_inference_steps=steps, guidance_scale=guidance,
                            generator=self.torch.Generator("cpu").manual_seed(SEED))  # fmt: skip
            self.sync()
            total = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
        return {"total": total, "inside": inside["seconds"], "calls": inside["calls"],
                "tail": inside["tail"], "image": out.images[0]}  # fmt: skip


def similarity(a: Any, b: Any) -> dict[str, float]:
    """SSIM (the quality gate's, on luminance) and PSNR (RGB, dB) of two images."""
    import numpy as np

    from editflow.inference.quality import structural_similarity

    x = np.asarray(a.convert("RGB"), dtype=np.float64) / 255.0
    y = np.asarray(b.convert("RGB").resize(a.size), dtype=np.float64) / 255.0
    luma = np.array([0.299, 0.587, 0.114])
    mse = float(((x - y) ** 2).mean())
    psnr = None if mse == 0 else round(float(10 * np.log10(1.0 / mse)), 2)  # None: identical
    return {"ssim": round(structural_similarity(x @ luma, y @ luma), 4), "psnr_db": psnr}


# -- accelerations on and off --------------------------------------------------------------


def _uncompile(transformer: Any) -> None:
    """Back to eager: ``nn.Module.compile`` keeps its compiled call in ``_compiled_call_impl``
    (torch has no public undo; the next case must not run compiled)."""
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


@contextlib.contextmanager
def accelerated(bench: Bench, acceleration: Any) -> Iterator[list[str]]:
    """The pipeline with ``acceleration`` applied through the worker's ``accel.apply``, and
    back to plain eager afterwards. FP8 rewrites weights in place, so it runs on a copy of
    the transformer while the bf16 original waits in host memory."""
    from editflow.inference import accel
    from editflow.inference.registry import get_spec

    spec = get_spec("longcat-image-edit")
    device = bench.args.device
    accel.check(spec, acceleration, device)  # FP8 on the CPU: refused here, reported skipped
    pipe = bench.pipe
    original = pipe.transformer
    if acceleration.fp8 != "none":
        working = copy.deepcopy(original)
        original.to("cpu")
        pipe.transformer = working
    options = {"backend": bench.args.compile_backend} if bench.args.compile_backend else {}
    try:
        yield accel.apply(pipe, spec, acceleration, device, compile_options=options)
    finally:
        current = pipe.transformer
        if current.is_cache_enabled:
            current.disable_cache()
        _uncompile(current)
        if current is not original:
            pipe.transformer = original
            del current
            original.to(device)
        gc.collect()
        if bench.cuda:
            bench.torch.cuda.empty_cache()


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    args: argparse.Namespace
    bench: Bench
    results: Results
    deadline: float
    variants: dict[str, tuple[int, float]]
    compile_warmup: float = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate(self, variant: str, acceleration: Any, extra_edits: int = 0) -> float:
        """Seconds a measurement should take, from the eager edits of this run."""
        eager = [r for r in self.results.measured(variant) if r["case"] == "eager"]
        if eager:
            per_edit = eager[0]["seconds_per_edit"]
        elif variant == "turbo" and (standard := self.results.measured("standard")):
            per_edit = standard[0]["seconds_per_edit"] / 10  # 8 steps, no CFG, against 50 x 2
        else:
            return 0.0
        seconds = per_edit * (self.args.repeats + 1 + extra_edits)
        if acceleration.compile:
            seconds += self.compile_warmup or (90.0 if self.args.size == "real" else 20.0)
        if acceleration.fp8 != "none":
            seconds += 30.0 if self.args.size == "real" else 2.0  # copy, quantize, move
        return seconds

    def measure(self, case: str, acceleration: Any, variants: list[str]) -> None:
        """Measure ``acceleration`` on each variant (one row each), or say why not."""
        from editflow.core.errors import ModelError

        for variant in variants:
            steps, guidance = self.variants[variant]
            head = {"case": case, "variant": variant, "steps": steps, "guidance_scale": guidance}
            calibrating = acceleration.cache.method == "magcache"
            need = self.estimate(variant, acceleration, extra_edits=int(calibrating))
            if case != "eager" and need > self.left():  # the baseline always runs
                self.skip(head, f"budget: needs ~{need:.0f} s, {max(self.left(), 0):.0f} s left")
                continue
            chosen = acceleration
            if calibrating:  # ratios for this checkpoint and these steps, then run with them
                ratios = self.calibrate(steps, guidance)
                cache = {**acceleration.cache.model_dump(), "mag_ratios": ratios}
                chosen = acceleration.model_copy(
                    update={"cache": type(acceleration.cache)(**cache)}
                )
                head["mag_ratios"] = [round(r, 5) for r in ratios]
            try:
                with accelerated(self.bench, chosen) as labels:
                    self.results.write({**head, **self.run(variant, case, chosen, labels)})
            except ModelError as exc:
                self.skip(head, str(exc))

    def calibrate(self, steps: int, guidance: float) -> list[float]:
        from editflow.core.acceleration import Acceleration
        from editflow.inference import accel

        plain = Acceleration()
        return accel.calibrate_magcache(
            self.bench.pipe, steps, lambda: self.bench.edit(steps, guidance, plain)
        )

    def run(self, variant: str, case: str, acceleration: Any, labels: list[str]) -> dict[str, Any]:
        bench, args = self.bench, self.args
        steps, guidance = self.variants[variant]
        bench.reset_peak()
        warm = None
        # A warm-up edit compiles (when compiling) and, on a GPU, settles the kernels'
        # autotuning; the smoke run's tiny eager edits have neither to wait for.
        if acceleration.compile or args.size == "real" or args.weights:
            warm = bench.edit(steps, guidance, acceleration)
            if acceleration.compile and not self.compile_warmup:
                self.compile_warmup = warm["total"]
        runs = [bench.edit(steps, guidance, acceleration) for _ in range(args.repeats)]
        row: dict[str, Any] = {"kind": "measurement", "accelerations": labels}
        caching = acceleration.cache.method != "none"
        if not acceleration.compile:
            row["tail_block_computed"] = f"{runs[-1]['tail']}/{runs[-1]['calls']}"
        if caching and not args.weights:
            # Random weights: skipping (and so speed) means nothing; the row shows the hooks ran.
            row["figures"] = "withheld: a cache method's speed needs real weights (--weights)"
            return row
        inside = statistics.median(r["inside"] for r in runs)
        row.update(
            seconds_per_edit=round(statistics.median(r["total"] for r in runs), 3),
            seconds_all=[round(r["total"], 3) for r in runs],
            first_edit_seconds=round(warm["total"], 2) if warm else None,
            denoise_it_per_s=round(steps / inside, 3) if inside else None,
            transformer_seconds=round(inside, 3),
            peak_memory_gib=bench.peak_gib(),
        )
        if args.weights:
            if case == "eager":
                bench.baseline[variant] = runs[-1]["image"]
            elif variant in bench.baseline:
                row.update(similarity(bench.baseline[variant], runs[-1]["image"]))
        return row

    def skip(self, head: dict[str, Any], reason: str) -> None:
        self.results.write({**head, "kind": "skipped", "reason": reason})


def best_combination(results: Results, weights: bool) -> dict[str, Any] | None:
    """Compile and FP8 where they ran and kept the image (SSIM >= goal with real weights),
    plus the fastest cache method that kept it (real weights only)."""
    rows = results.measured("standard")

    def kept(row: dict[str, Any]) -> bool:
        return not weights or row.get("ssim", 0.0) >= GOALS["ssim"]

    ran = {r["case"]: r for r in rows if "seconds_per_edit" in r and kept(r)}
    chosen: dict[str, Any] = {}
    if "compile" in ran:
        chosen["compile"] = True
    if "fp8" in ran:
        chosen["fp8"] = "rowwise"
    caches = [r for name, r in ran.items() if name in CACHES]
    if weights and caches:
        fastest = min(caches, key=lambda r: r["seconds_per_edit"])
        chosen["cache"] = {**CACHES[fastest["case"]]}
        if "mag_ratios" in fastest:
            chosen["cache"]["mag_ratios"] = fastest["mag_ratios"]
    return chosen if len(chosen) > 1 else None


# -- the cold start ------------------------------------------------------------------------

# The fresh process of the cold start: the worker's own loading path, timed from its start.
_COLD_CHILD = """
import json, sys, time
from pathlib import Path
started = time.time()
from editflow.core.settings import WorkerSettings
from editflow.inference.pipeline import load_pipeline
from editflow.inference.registry import get_spec
model_dir, device, dtype = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
loaded = load_pipeline(get_spec("longcat-image-edit"), model_dir,
                       WorkerSettings(device=device, dtype=dtype))
import torch
if device.startswith("cuda"):
    torch.cuda.synchronize()
memory = torch.cuda.memory_allocated() if device.startswith("cuda") else None
print(json.dumps({"ended": time.time(), "started": started,
                  "load_detail": loaded.load_detail.model_dump(), "memory_bytes": memory}))
"""


def _evict_from_page_cache(root: Path) -> int:
    """Drop ``root``'s files from the page cache (no root needed); returns their bytes."""
    os.sync()
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return total


def cold_start(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Save the pipeline (or take ``--weights``), evict it from the page cache, and time a
    fresh process loading it through the worker's ``load_pipeline``."""
    import shutil
    import subprocess
    import tempfile

    import torch

    target = Path(args.weights or args.cold_dir or tempfile.mkdtemp(prefix="longcat-cold-"))
    try:
        saved = 0.0
        if not args.weights:
            began = time.perf_counter()
            pipe.save_pretrained(target)
            saved = time.perf_counter() - began
        # The parent's copy must not share the GPU with the child's.
        pipe.to("cpu")
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        size = _evict_from_page_cache(target)
        spawned = time.time()
        child = subprocess.run(
            [sys.executable, "-c", _COLD_CHILD, str(target), args.device, args.dtype],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if child.returncode != 0:
            return {"error": child.stderr.strip()[-2000:], "save_seconds": round(saved, 2)}
        out = json.loads(child.stdout.strip().splitlines()[-1])
        detail = out["load_detail"]
        return {
            "weights": "real" if args.weights else f"random ({args.size})",
            "gb_on_disk": round(size / 1e9, 2),
            "save_seconds": round(saved, 2),
            "process_to_device_seconds": round(out["ended"] - spawned, 2),
            "interpreter_start_seconds": round(out["started"] - spawned, 2),
            "load_detail": detail,
            "read_gb_per_s": round(size / 1e9 / detail["read"], 3) if detail["read"] else None,
            "memory_after_load_gib": (
                round(out["memory_bytes"] / 2**30, 2) if out["memory_bytes"] else None
            ),
            "page_cache": "evicted with posix_fadvise(DONTNEED) after sync",
        }
    finally:
        if not args.weights and not args.cold_dir:
            shutil.rmtree(target, ignore_errors=True)


# -- goals and summary ----------------------------------------------------------------------


def goals(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    """Each goal with the figure measured for it (None: not measured in this run)."""

    def fastest(variant: str) -> dict[str, Any] | None:
        rows = [r for r in results.measured(variant) if "seconds_per_edit" in r]
        if args.weights:  # only what kept the image counts (eager counts as itself)
            rows = [r for r in rows if r["case"] == "eager" or r.get("ssim", 0) >= GOALS["ssim"]]
        return min(rows, key=lambda r: r["seconds_per_edit"], default=None)

    standard, turbo = fastest("standard"), fastest("turbo")
    cold = next((r for r in results.rows if r["kind"] == "cold_start"), None)
    cold_seconds = cold.get("process_to_device_seconds") if cold else None
    real = args.size == "real" or bool(args.weights)
    return {
        "kind": "goals",
        "standard_50_steps": {
            "goal": f"<= {GOALS['standard_seconds']} s at SSIM >= {GOALS['ssim']} (real weights)",
            "seconds": standard and standard["seconds_per_edit"],
            "case": standard and standard["case"],
            "ssim": (standard.get("ssim", 1.0) if standard and args.weights else None),
            "met": bool(
                standard
                and args.weights
                and real
                and standard["seconds_per_edit"] <= GOALS["standard_seconds"]
            ),
        },
        "turbo": {
            "goal": f"<= {GOALS['turbo_seconds']} s",
            "seconds": turbo and turbo["seconds_per_edit"],
            "case": turbo and turbo["case"],
            "met": bool(turbo and real and turbo["seconds_per_edit"] <= GOALS["turbo_seconds"]),
        },
        "cold_start": {
            "goal": f"<= {GOALS['cold_start_seconds']} s process start -> model on the GPU",
            "seconds": cold_seconds,
            "met": bool(cold_seconds and real and cold_seconds <= GOALS["cold_start_seconds"]),
        },
        "note": None if real else "tiny model: the figures test the script, not the goals",
    }


def print_summary(results: Results, args: argparse.Namespace) -> None:
    run = results.rows[0]
    print(f"\n{run['device']}  {run['weights']} LongCat-Image-Edit, {args.dtype}")
    print(f"{'case':<13}{'variant':<10}{'steps':>6}{'s/edit':>9}{'it/s':>8}{'peak GiB':>10}"
          f"{'SSIM':>8}{'PSNR':>7}  accelerations / note")  # fmt: skip
    for row in results.rows:
        if row["kind"] not in ("measurement", "skipped"):
            continue
        head = f"{row['case']:<13}{row['variant']:<10}{row['steps']:>6}"
        if row["kind"] == "skipped" or "seconds_per_edit" not in row:
            note = row.get("reason") or row.get("figures")
            print(f"{head}{'-':>9}{'-':>8}{'-':>10}{'-':>8}{'-':>7}  {note}")
            continue
        peak = "-" if row["peak_memory_gib"] is None else row["peak_memory_gib"]
        rate = "-" if row["denoise_it_per_s"] is None else f"{row['denoise_it_per_s']:.2f}"
        ssim, psnr = row.get("ssim", "-"), row.get("psnr_db", "-")
        print(f"{head}{row['seconds_per_edit']:>9.2f}{rate:>8}{peak:>10}{ssim:>8}{psnr:>7}  "
              f"{', '.join(row['accelerations']) or 'eager'}")  # fmt: skip
    cold = next((r for r in results.rows if r["kind"] == "cold_start"), None)
    if cold and "error" not in cold:
        detail = cold["load_detail"]
        print(
            f"cold start: {cold['process_to_device_seconds']:.1f} s process start -> model on "
            f"{args.device} ({cold['gb_on_disk']:.1f} GB; imports {detail['imports']:.1f} s, "
            f"read {detail['read']:.1f} s, to device {detail['to_device']:.1f} s)"
        )
    elif cold:
        print(f"cold start: failed: {cold['error']}")
    summary = results.rows[-1]
    print("\ngoal                    measured              goal")
    for name in ("standard_50_steps", "turbo", "cold_start"):
        goal = summary[name]
        seconds = "not measured" if goal["seconds"] is None else f"{goal['seconds']:.2f} s"
        extra = f" SSIM {goal['ssim']}" if goal.get("ssim") is not None else ""
        mark = "met" if goal["met"] else "not met"
        print(f"{name:<24}{seconds + extra:<22}{goal['goal']}  [{mark}]")
    if summary["note"]:
        print(summary["note"])


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--weights", default=None, help="a save_pretrained dir of the real model")
    parser.add_argument("--variants", default="standard,turbo")
    parser.add_argument("--repeats", type=int, default=None, help="timed edits (real 2, tiny 1)")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="the whole run's seconds, build included"
    )
    parser.add_argument(
        "--cold-reserve-s",
        type=float,
        default=None,
        help="of the budget, kept for the cold start (real 150, tiny 30)",
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default: inductor; eager on a CPU, where inductor takes "
        "minutes: the smoke run tests the path, not its speed)",
    )
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload()")
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-dir", default=None, help="where to save (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="results file (JSON lines)")
    args = parser.parse_args()
    tiny = args.size == "tiny" and not args.weights
    if args.repeats is None:
        args.repeats = 1 if tiny else 2
    if args.cold_reserve_s is None:
        args.cold_reserve_s = (30.0 if tiny else 150.0) if args.cold_start else 0.0
    if args.compile_backend is None and not args.device.startswith("cuda"):
        args.compile_backend = "eager"
    return args


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    import torch

    from editflow.core.acceleration import Acceleration
    from editflow.inference.prompts import patch_diffusers_quote_splitter

    patch_diffusers_quote_splitter()
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    out = args.out or RESULTS / f"gpu_longcat-{args.size}-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = Results(out)

    began = time.perf_counter()
    pipe = build(args, dtype)
    if args.offload:
        pipe.enable_model_cpu_offload(device=args.device)
    pipe.set_progress_bar_config(disable=True)
    if cuda:
        torch.cuda.synchronize()
    results.write({
        "kind": "run", "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": args.size, "weights": "real" if args.weights else f"random ({args.size})",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "dtype": args.dtype, "offload": args.offload,
        "budget_s": args.budget_s, "repeats": args.repeats,
        "compile_backend": args.compile_backend or "inductor",
        "params_billions": {name: params_billions(getattr(pipe, name))
                            for name in ("transformer", "text_encoder", "vae")},
        "build_seconds": round(time.perf_counter() - began, 2),
        "memory_after_load_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None,
    })  # fmt: skip

    bench = Bench(pipe, args)
    table = TINY_VARIANTS if args.size == "tiny" and not args.weights else VARIANTS
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    deadline = started + args.budget_s - args.cold_reserve_s
    plan = Plan(args, bench, results, deadline, table)
    # Priority order: the baseline for both variants, then compile, FP8, the cache methods.
    plan.measure("eager", Acceleration(), variants)
    plan.measure("compile", Acceleration(compile=True), variants)
    plan.measure("fp8", Acceleration(fp8="rowwise"), variants)
    real_size = args.size == "real" or bool(args.weights)
    for name, cache in CACHES.items():
        if real_size and not args.weights:
            for variant in variants:
                steps, guidance = table[variant]
                plan.skip({"case": name, "variant": variant, "steps": steps,
                           "guidance_scale": guidance},
                          "random weights: whether a cache method skips depends on the "
                          "weights; measured only with --weights")  # fmt: skip
            continue
        ratios = [1.0, 1.0] if name == "magcache" else None  # replaced by the calibrated ones
        plan.measure(name, Acceleration(cache={**cache, "mag_ratios": ratios}), variants)
    if combo := best_combination(results, bool(args.weights)):
        plan.measure("best", Acceleration.model_validate(combo), variants)

    if args.cold_start:
        plan.deadline += args.cold_reserve_s
        results.write({"kind": "cold_start", **cold_start(pipe, args)})
    results.write(goals(results, args))
    print_summary(results, args)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
