"""The demo model's parts: real diffusers/transformers classes (SD1.5 module names) at a tiny size.

UNet2DConditionModel (1 layer per block, 32/64 channels), AutoencoderKL with two 2x downsamplings
(32x32 images <-> 8x8x4 latents, so the UNet is cheap enough to train on a shared 2-core CPU), a 2-layer CLIP text encoder over a tokenizer of the caption words,
and a DDIM scheduler with SD1.5's beta schedule.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import SIZE, VOCAB_WORDS

TEXT_HIDDEN = 64
LATENT_SIZE = SIZE // 4
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_tokenizer():
    """A CLIPTokenizer (byte BPE) whose vocabulary holds every caption word as one token."""
    from lora_syntax.testing.tiny import build_clip_tokenizer

    return build_clip_tokenizer(VOCAB_WORDS)


def build_text_encoder(tokenizer):
    """A 2-layer, 64-wide CLIPTextModel over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
                            num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                            hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            projection_dim=TEXT_HIDDEN)
    return CLIPTextModel(config)


def build_unet():
    """SD1.5's UNet layout (cross-attention down/up blocks, plain last level), 1 layer per block."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def build_vae():
    """An AutoencoderKL with two downsampling steps (32x32x3 <-> 8x8x4), no mid-block attention."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=8, sample_size=SIZE, mid_block_add_attention=False)


def build_scheduler():
    """DDIM with SD1.5's scaled-linear betas (what the demo samples with)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def save_pipeline(folder: Path, *, vae, text_encoder, tokenizer, unet) -> None:
    """Write the parts as a StableDiffusionPipeline folder (no safety checker, no feature extractor)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)


def load_pipeline(folder: Path):
    """The saved kit model, offline, in fp32 on the CPU."""
    import transformers

    # Loading a 5 MB model should not print library notices about torchvision or loading bars.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False, dtype=torch.float32)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
