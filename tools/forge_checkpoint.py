"""A random full-size SD1.5 checkpoint in the single-file LDM layout, for starting real Forge in tests.

Run with Forge's venv from the Forge folder: ``venv/bin/python tools/forge_checkpoint.py OUT.safetensors``.
Forge detects the model from key names and shapes, so the weights may be random: the UNet, VAE and text
encoder are built from Forge's own configs (``backend/huggingface/runwayml/stable-diffusion-v1-5``), renamed
with huggingface_guess's converters (as Forge's loader reads them) and saved in fp16 (2 GiB, ~1 min, ~9 GB RAM).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from huggingface_guess import diffusers_convert
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

CONFIGS = Path("backend/huggingface/runwayml/stable-diffusion-v1-5")


def main(out: str) -> None:
    torch.manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / "unet"))
    for k, v in diffusers_convert.convert_unet_state_dict(unet.state_dict()).items():
        state[f"model.diffusion_model.{k}"] = v.half()
    del unet
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(CONFIGS / "vae"))
    for k, v in diffusers_convert.convert_vae_state_dict(vae.state_dict()).items():
        state[f"first_stage_model.{k}"] = v.half()
    del vae
    clip = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / "text_encoder"))
    for k, v in clip.state_dict().items():
        state[f"cond_stage_model.transformer.{k}"] = v.half()
    del clip
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.rename(out)


if __name__ == "__main__":
    main(sys.argv[1])
