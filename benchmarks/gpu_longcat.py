"""LongCat-Image-Edit at real size with random weights: memory, s/edit, it/s (GPU).

Real weights cannot be downloaded here, and speed and memory do not depend
on the values of the weights: this script builds every component at its
published size (transformer 10 double + 20 single blocks, 24 heads x 128,
6.3 B parameters; Qwen2.5-VL-7B text encoder, 8.3 B; FLUX 16-channel VAE)
directly on the GPU in bf16 and runs edits on a 1024x768 input (768 px short side, the
worker's preprocessed size; the pipeline itself works at ~1 MP, 1184x896).

For each variant (standard: 50 steps, CFG 4.5 -> two transformer passes per
step; Turbo: 8 steps, guidance 1 -> one pass) and each compile mode (eager,
``transformer.compile_repeated_blocks(fullgraph=True)``), it reports:

* peak GPU memory after loading and during an edit,
* seconds per edit (median of ``--repeats`` after a warm-up edit),
* denoising it/s: steps divided by the time spent inside the transformer's
  forward calls (timed by hooks, synchronised), so text encoding, VAE and
  image pre/post-processing are left out; with CFG a step is two calls,
* the compile warm-up time,
* the cold start (``--cold-start``, on by default): the pipeline is saved with
  ``save_pretrained`` (safetensors, as real weights are), its files are dropped from
  the page cache (``posix_fadvise(DONTNEED)`` after ``sync``), and a fresh process
  loads it through the worker's own ``load_pipeline`` (straight onto the device with
  ``device_map`` on CUDA): process start to model on the device, the load split
  (imports, reading, moving to the device) and the read throughput in GB/s.

The prompt tokenizer is a byte-level stand-in: LongCat pads the prompt to
its fixed 512-token window, so the compute does not depend on it. The image
processor is Qwen2-VL's default (real vision-token count).

    python benchmarks/gpu_longcat.py                       # everything, on cuda
    python benchmarks/gpu_longcat.py --variants turbo --compile eager
    python benchmarks/gpu_longcat.py --size tiny --device cpu   # smoke test of the script
    python benchmarks/gpu_longcat.py --variants turbo --compile eager --repeats 1  # ~10 min budget

Writes ``benchmarks/results/gpu_longcat-<utc>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"standard": (50, 4.5), "turbo": (8, 1.0)}
PROMPT = "Replace the background with a beach at sunset and add the text '夏日特惠' in white"


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


def build(size: str, device: str, dtype: Any) -> Any:
    if size == "real":
        return build_real(device, dtype)
    from editflow.inference.tiny import build_longcat

    return build_longcat().to(device=device, dtype=dtype)


def params_billions(module: Any) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e9, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--variants", default="standard,turbo")
    parser.add_argument("--compile", default="eager,regional", help="eager and/or regional")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload()")
    parser.add_argument(
        "--cold-start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="save, evict from the page cache, and time a fresh process's load",
    )
    parser.add_argument("--cold-dir", default=None, help="where to save (default: a temp dir)")
    parser.add_argument("--no-runs", action="store_true", help="only the cold start")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from editflow.inference.prompts import patch_diffusers_quote_splitter

    patch_diffusers_quote_splitter()
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()

    def gib(value: int) -> float:
        return round(value / 2**30, 2)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    began = time.perf_counter()
    pipe = build(args.size, "cpu" if args.offload else args.device, dtype)
    if args.offload:
        pipe.enable_model_cpu_offload(device=args.device)
    pipe.set_progress_bar_config(disable=True)
    sync()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": args.size,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "offload": args.offload,
        "params_billions": {
            "transformer": params_billions(pipe.transformer),
            "text_encoder": params_billions(pipe.text_encoder),
            "vae": params_billions(pipe.vae),
        },
        "build_seconds": round(time.perf_counter() - began, 2),
        "memory_after_load_gib": gib(torch.cuda.memory_allocated()) if cuda else None,
        "runs": [],
    }
    image = Image.effect_noise((1024, 768), 60).convert("RGB")

    denoise = {"seconds": 0.0, "started": 0.0}

    def before(*_: Any) -> None:
        sync()
        denoise["started"] = time.perf_counter()

    def after(*_: Any) -> None:
        sync()
        denoise["seconds"] += time.perf_counter() - denoise["started"]

    pipe.transformer.register_forward_pre_hook(before)
    pipe.transformer.register_forward_hook(after)

    def edit(steps: int, guidance: float) -> tuple[float, float]:
        """(seconds for the whole edit, seconds inside the transformer)."""
        denoise["seconds"] = 0.0
        sync()
        start = time.perf_counter()
        pipe(image=image, prompt=PROMPT, negative_prompt="", num_inference_steps=steps,
             guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(0))  # fmt: skip
        sync()
        return time.perf_counter() - start, denoise["seconds"]

    modes = [] if args.no_runs else [m.strip() for m in args.compile.split(",") if m.strip()]
    for mode in modes:
        compile_seconds = None
        if mode == "regional":
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            steps, guidance = VARIANTS[variant]
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            warm, _ = edit(steps, guidance)  # first call: compiles in regional mode
            if mode == "regional" and compile_seconds is None:
                compile_seconds = round(warm, 2)
            measured = [edit(steps, guidance) for _ in range(args.repeats)]
            times = [total for total, _ in measured]
            per_edit = statistics.median(times)
            in_transformer = statistics.median(inner for _, inner in measured)
            run = {
                "variant": variant, "compile": mode, "steps": steps, "guidance_scale": guidance,
                "seconds_per_edit": round(per_edit, 3), "seconds_all": [round(t, 3) for t in times],
                "first_edit_seconds": round(warm, 2),
                "denoise_it_per_s": round(steps / in_transformer, 3),
                "transformer_seconds": round(in_transformer, 3),
                "peak_memory_gib": gib(torch.cuda.max_memory_allocated()) if cuda else None,
            }  # fmt: skip
            if compile_seconds is not None:
                run["compile_warmup_seconds"] = compile_seconds
            report["runs"].append(run)
            print(json.dumps(run), flush=True)

    if args.cold_start:
        report["cold_start"] = cold_start(pipe, args)
        del pipe
        print(json.dumps({"cold_start": report["cold_start"]}), flush=True)

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"gpu_longcat-{args.size}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{report['device']}  {args.size} LongCat-Image-Edit, {args.dtype}, input 1024x768")
    loaded = report["memory_after_load_gib"]
    print(f"params (B): {report['params_billions']}  after load: {loaded} GiB")
    print(f"{'variant':<10}{'compile':<10}{'steps':>6}{'s/edit':>9}{'it/s':>8}{'peak GiB':>10}")
    for run in report["runs"]:
        peak = "-" if run["peak_memory_gib"] is None else run["peak_memory_gib"]
        head = f"{run['variant']:<10}{run['compile']:<10}{run['steps']:>6}"
        print(f"{head}{run['seconds_per_edit']:>9.2f}{run['denoise_it_per_s']:>8.2f}{peak:>10}")
    cold = report.get("cold_start")
    if cold and "error" not in cold:
        detail = cold["load_detail"]
        print(
            f"cold start: {cold['process_to_device_seconds']:.1f} s process start -> model on "
            f"{args.device} ({cold['gb_on_disk']:.1f} GB; imports {detail['imports']:.1f} s, "
            f"read {detail['read']:.1f} s = {cold['read_gb_per_s']:.2f} GB/s, to device "
            f"{detail['to_device']:.1f} s, direct={detail['direct']})"
        )
    elif cold:
        print(f"cold start: failed: {cold['error']}")
    print(f"wrote {path}")
    return 0


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
    """Save the pipeline, evict it from the page cache, time a fresh process loading it."""
    import gc
    import shutil
    import subprocess
    import tempfile

    import torch

    target = Path(args.cold_dir or tempfile.mkdtemp(prefix="longcat-cold-"))
    try:
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
        if not args.cold_dir:
            shutil.rmtree(target, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
