"""Tiny random-weight pipelines, built offline in seconds, for tests and benchmarks.

Each builder returns a real diffusers pipeline of the registry entry's class
with every component shrunk (a 2-layer text encoder, 1+1 transformer blocks,
a few-channel VAE) and a real tokenizer built in code (byte-level BPE with the
model's special tokens, no merges). :func:`save_tiny_model` writes it with
``save_pretrained``; the worker then loads it back through exactly the same
path as real weights (:func:`editflow.inference.pipeline.load_pipeline`).

The saved directory also carries an ``editflow-model.json`` whose ``defaults``
lower the step count (a tiny model's output is noise at any step count, and
tests should not spend CPU on 50 steps). Real weight directories may carry
the same file; without it the registry's defaults apply.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Written next to ``model_index.json``; read by :mod:`editflow.inference.weights`.
MODEL_CONFIG_FILE = "editflow-model.json"

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_HIDDEN = 32


def _byte_vocab() -> dict[str, int]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return {symbol: i for i, symbol in enumerate(alphabet)}


def _qwen_tokenizer() -> Any:
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(vocab=_byte_vocab(), merges=[])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [t for t in QWEN_SPECIAL_TOKENS if t != "<|endoftext|>"]}
    )
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>"})
    return tokenizer


def _qwen_vl_text_encoder(tokenizer: Any) -> Any:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = TINY_HIDDEN // 2
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TINY_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],  # sums to head_dim / 2
            },
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": TINY_HIDDEN,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TINY_HIDDEN,
            "fullatt_block_indexes": [1],
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    assert head_dim == 16
    config.bos_token_id = ids["<|endoftext|>"]
    config.eos_token_id = ids["<|im_end|>"]
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _qwen_vl_processor(tokenizer: Any) -> Any:
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # 56x56 pins the vision input to 4 patches: the tiny encoder's cost stays flat.
    pixels = 56 * 56
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels)
    return Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor
    )


def _flux_vae(*, latent_channels: int = 16, blocks: int = 6) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8,) * blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    ).eval()


def build_longcat() -> Any:
    """LongCatImageEditPipeline (also the Turbo preset: same class, other weights)."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        LongCatImageEditPipeline,
        LongCatImageTransformer2DModel,
    )

    tokenizer = _qwen_tokenizer()
    text_encoder = _qwen_vl_text_encoder(tokenizer)
    torch.manual_seed(0)
    transformer = LongCatImageTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TINY_HIDDEN,
        pooled_projection_dim=TINY_HIDDEN,
        axes_dims_rope=[4, 6, 6],
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    return LongCatImageEditPipeline(
        scheduler=scheduler,
        vae=_flux_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_processor=_qwen_vl_processor(tokenizer),
        transformer=transformer,
    )


#: Registry name -> builder. Only models with a builder here can be listed.
TINY_BUILDERS: dict[str, Callable[[], Any]] = {
    "longcat-image-edit": build_longcat,
    "longcat-image-edit-turbo": build_longcat,
}

#: Step counts saved into a tiny model's ``editflow-model.json``.
TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "longcat-image-edit": {"steps": 2},
    "longcat-image-edit-turbo": {"steps": 2},
}


def save_tiny_model(model: str, out: Path) -> Path:
    """Build the tiny pipeline for registry entry ``model`` and save it into ``out``."""
    if model not in TINY_BUILDERS:
        raise KeyError(f"no tiny builder for model {model!r}; known: {sorted(TINY_BUILDERS)}")
    pipe = TINY_BUILDERS[model]()
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    config = {"model": model, "tiny": True, "defaults": TINY_DEFAULTS.get(model, {})}
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
