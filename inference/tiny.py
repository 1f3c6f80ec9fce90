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


def build_longcat(*, vae_blocks: int = 6) -> Any:
    """LongCatImageEditPipeline (also the Turbo preset: same class, other weights).

    ``vae_blocks=6`` (x32) keeps the ~1 MP working size cheap; ``vae_blocks=4`` (x8,
    like the real VAE) gives the real token counts (4096 noise + 4096 reference
    tokens at 1 MP), for benchmarks that should weigh like the real model's shape.
    """
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
        vae=_flux_vae(blocks=vae_blocks),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_processor=_qwen_vl_processor(tokenizer),
        transformer=transformer,
    )


def build_qwen_image_edit() -> Any:
    """QwenImageEditPipeline: Qwen2.5-VL encoder, 3D causal VAE, MMDiT."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )

    tokenizer = _qwen_tokenizer()
    text_encoder = _qwen_vl_text_encoder(tokenizer)
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TINY_HIDDEN, guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    torch.manual_seed(0)
    # Five spatial-only downsamples (x32) keep the ~1 MP working size cheap on a CPU.
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False] * 5, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    return QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=_qwen_vl_processor(tokenizer),
        transformer=transformer,
    )


def _clip_tokenizer() -> Any:
    """CLIP's BPE over the 256 byte symbols, each also as a word end (``</w>``), no merges."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    vocab.update({f"{symbol}</w>": len(alphabet) + i for i, symbol in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _clip_text_encoder(tokenizer: Any) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
        projection_dim=TINY_HIDDEN,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )  # fmt: skip
    return CLIPTextModel(config).eval()


def _t5_tokenizer() -> Any:
    """A SentencePiece-style Unigram vocabulary of printable ASCII (CJK maps to <unk>)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(chr(c), -1.0) for c in range(32, 127)] + [("\u2581", -1.0)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def build_flux_kontext() -> Any:
    """FluxKontextPipeline: CLIP + T5 encoders, FLUX transformer, 16-channel VAE."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    clip_tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer), d_model=TINY_HIDDEN, d_kv=16, d_ff=64, num_layers=2,
            num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()  # fmt: skip
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TINY_HIDDEN,
        pooled_projection_dim=TINY_HIDDEN, guidance_embeds=True, axes_dims_rope=[4, 6, 6],
    ).eval()  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return FluxKontextPipeline(
        scheduler=scheduler,
        vae=_flux_vae(),
        text_encoder=_clip_text_encoder(clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def build_instruct_pix2pix() -> Any:
    """StableDiffusionInstructPix2PixPipeline: CLIP encoder, 8-channel-input UNet, SD VAE."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )

    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_HIDDEN, attention_head_dim=4,
    ).eval()  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8,) * 4, norm_num_groups=4, sample_size=32,
        mid_block_add_attention=False,
    ).eval()  # fmt: skip
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=_clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


#: Registry name -> builder. Only models with a builder here can be listed.
TINY_BUILDERS: dict[str, Callable[[], Any]] = {
    "longcat-image-edit": build_longcat,
    "longcat-image-edit-turbo": build_longcat,
    "qwen-image-edit": build_qwen_image_edit,
    "flux-kontext": build_flux_kontext,
    "instruct-pix2pix": build_instruct_pix2pix,
}

#: Step counts saved into a tiny model's ``editflow-model.json``.
TINY_DEFAULTS: dict[str, dict[str, Any]] = {
    "longcat-image-edit": {"steps": 2},
    "longcat-image-edit-turbo": {"steps": 2},
    "qwen-image-edit": {"steps": 2},
    "flux-kontext": {"steps": 2},
    "instruct-pix2pix": {"steps": 2},
}


def save_tiny_model(model: str, out: Path, **builder_options: Any) -> Path:
    """Build the tiny pipeline for registry entry ``model`` and save it into ``out``."""
    if model not in TINY_BUILDERS:
        raise KeyError(f"no tiny builder for model {model!r}; known: {sorted(TINY_BUILDERS)}")
    pipe = TINY_BUILDERS[model](**builder_options)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    config = {"model": model, "tiny": True, "defaults": TINY_DEFAULTS.get(model, {})}
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
