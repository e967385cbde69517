"""Full-size module trees of the real architectures, built from their configs on the ``meta`` device.

No weights are read or allocated: ``inspect`` and the format tests map real LoRA files against these.
The configs are the published ones of SD1.5 (CLIP-L), SD2 (OpenCLIP-H), SDXL base (CLIP-L +
OpenCLIP-bigG); FLUX.1-dev's come from :mod:`lora_syntax.keymaps.flux` (``reference_components``).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from .build import tree_from_modules
from .tree import ModelTree
from .tree_cache import cached_tree

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)

SD2_UNET = {**SD15_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True}

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
              num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                  num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                     num_hidden_layers=32, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def _unet(config: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def _clip(config: dict, *, projection: bool = False) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**config))


def _sd15() -> dict[str, torch.nn.Module]:
    return {"text_encoder": _clip(CLIP_L), "unet": _unet(SD15_UNET)}


def _sd2() -> dict[str, torch.nn.Module]:
    return {"text_encoder": _clip(OPENCLIP_H), "unet": _unet(SD2_UNET)}


def _sdxl() -> dict[str, torch.nn.Module]:
    return {"text_encoder": _clip(CLIP_L), "text_encoder_2": _clip(OPENCLIP_BIGG, projection=True),
            "unet": _unet(SDXL_UNET)}


def _lazy(target: str) -> Callable[[], dict[str, torch.nn.Module]]:
    """A builder living in another module (``"package.module:function"``), imported on first use."""
    module, _, attr = target.partition(":")
    return lambda: getattr(importlib.import_module(module), attr)()


# architecture -> builder of its components ({pipeline attribute: module}); a new architecture is a new row.
REFERENCE_BUILDERS: dict[str, Callable[[], dict[str, torch.nn.Module]]] = {
    "sd15": _sd15,
    "sd2": _sd2,
    "sdxl": _sdxl,
    "flux": _lazy("lora_syntax.keymaps.flux:reference_components"),
}


def build_reference_tree(architecture: str) -> ModelTree:
    """The module tree of the full-size ``architecture`` model, built now on the ``meta`` device."""
    if architecture not in REFERENCE_BUILDERS:
        raise ValueError(f"no reference model for architecture {architecture!r}; "
                         f"known: {', '.join(REFERENCE_BUILDERS)}")
    with torch.device("meta"):
        components = REFERENCE_BUILDERS[architecture]()
    return tree_from_modules(architecture, components)


@functools.lru_cache(maxsize=None)
def reference_tree(architecture: str) -> ModelTree:
    """The module tree of the full-size ``architecture`` model: from the disk cache (:mod:`.tree_cache`) when
    one was built for these configs and library versions, else built and stored (memory-cached too)."""
    if architecture not in REFERENCE_BUILDERS:
        return build_reference_tree(architecture)  # raises the message listing the known ones
    # the configs live in this file and in flux.py: their text is what the tree depends on
    sources = "".join(Path(__file__).with_name(name).read_text(encoding="utf-8") for name in ("reference.py",
                                                                                              "flux.py"))
    return cached_tree(f"reference-{architecture}", sources, lambda: build_reference_tree(architecture))
