"""FLUX.1 key map: BFL/kohya/XLabs module names -> diffusers ``FluxTransformer2DModel`` names.

The tables are data. A BFL name maps onto one or more diffusers modules; when several, the BFL
module is a fused one whose output rows are the targets' rows stacked in table order:

    double_blocks.i.img_attn.qkv  rows = [attn.to_q | attn.to_k | attn.to_v]
    single_blocks.i.linear1       rows = [attn.to_q | attn.to_k | attn.to_v | proj_mlp]

Row ranges come from the model tree's weight shapes, so tiny test models need no other table.
``final_layer.adaLN_modulation.1`` is stored (shift, scale) by BFL and (scale, shift) by diffusers'
``norm_out.linear``: its output halves are swapped (facts checked against diffusers'
``loaders/lora_conversion_utils.py`` and ``single_file_utils.convert_flux_transformer_checkpoint_to_diffusers``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .tree import ModelTree

ARCHITECTURE = "flux"
TRANSFORMER = "transformer"
CLIP_L = "text_encoder"
T5_XXL = "text_encoder_2"

# black-forest-labs/FLUX.1-dev transformer/config.json (FLUX.1-schnell: guidance_embeds False).
FLUX_DEV_TRANSFORMER_CONFIG: Mapping[str, object] = {
    "patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
# text_encoder: CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14).
FLUX_CLIP_L_CONFIG: Mapping[str, object] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}
# text_encoder_2: T5 v1.1 XXL encoder (google/t5-v1_1-xxl).
FLUX_T5_XXL_CONFIG: Mapping[str, object] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
    "tie_word_embeddings": False,
}

# BFL name inside ``double_blocks.{i}`` -> diffusers names inside ``transformer_blocks.{i}``.
DOUBLE_BLOCK: Mapping[str, tuple[str, ...]] = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
# BFL name inside ``single_blocks.{i}`` -> diffusers names inside ``single_transformer_blocks.{i}``.
SINGLE_BLOCK: Mapping[str, tuple[str, ...]] = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
# BFL top-level names -> diffusers names.
GLOBAL: Mapping[str, tuple[str, ...]] = {
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
# BFL modules whose two output halves diffusers stores in the other order (shift, scale -> scale, shift).
SWAPPED_HALVES = frozenset({"final_layer.adaLN_modulation.1"})

# XLabs ``processor`` LoRAs (diffusers' ``_convert_xlabs_flux_lora_to_diffusers``): 1 = image stream, 2 = text.
XLABS_DOUBLE: Mapping[str, str] = {
    "qkv_lora1": "img_attn.qkv", "proj_lora1": "img_attn.proj",
    "qkv_lora2": "txt_attn.qkv", "proj_lora2": "txt_attn.proj",
}
XLABS_SINGLE: Mapping[str, tuple[str, ...]] = {
    "qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "proj_lora": ("proj_out",),
}

@dataclass(frozen=True)
class FluxPlacement:
    """Where one BFL module lands: diffusers modules (fused rows stacked in order), halves swapped or not."""

    modules: tuple[str, ...]
    swap_halves: bool = False


_BLOCK_RE = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")


def place_bfl(name: str) -> FluxPlacement | None:
    """Diffusers transformer modules for a dotted BFL module name (``double_blocks.3.img_attn.qkv``)."""
    match = _BLOCK_RE.match(name)
    if match is None:
        targets = GLOBAL.get(name)
        return FluxPlacement(targets, name in SWAPPED_HALVES) if targets else None
    kind, index, rest = match.groups()
    table, prefix = (DOUBLE_BLOCK, "transformer_blocks") if kind == "double_blocks" else \
        (SINGLE_BLOCK, "single_transformer_blocks")
    targets = table.get(rest)
    if targets is None:
        return None
    return FluxPlacement(tuple(f"{prefix}.{index}.{t}" for t in targets))


def _underscored(table: Mapping[str, object]) -> dict[str, str]:
    return {name.replace(".", "_"): name for name in table}


_DOUBLE_U = _underscored(DOUBLE_BLOCK)
_SINGLE_U = _underscored(SINGLE_BLOCK)
_GLOBAL_U = _underscored(GLOBAL)
_BLOCK_U_RE = re.compile(r"^(double_blocks|single_blocks)_(\d+)_(.+)$")


def bfl_from_underscored(name: str) -> str | None:
    """Dotted BFL name for kohya's underscore form (``double_blocks_3_img_attn_qkv`` -> ``double_blocks.3.img_attn.qkv``)."""
    match = _BLOCK_U_RE.match(name)
    if match is None:
        return _GLOBAL_U.get(name)
    kind, index, rest = match.groups()
    inner = (_DOUBLE_U if kind == "double_blocks" else _SINGLE_U).get(rest)
    return f"{kind}.{index}.{inner}" if inner else None


def xlabs_placement(kind: str, index: str, processor: str) -> FluxPlacement | None:
    """Diffusers modules for an XLabs ``{double,single}_blocks.N.processor.<name>`` LoRA."""
    if kind == "double_blocks":
        bfl = XLABS_DOUBLE.get(processor)
        return place_bfl(f"double_blocks.{index}.{bfl}") if bfl else None
    targets = XLABS_SINGLE.get(processor)
    return FluxPlacement(tuple(f"single_transformer_blocks.{index}.{t}" for t in targets)) if targets else None


def split_rows(tree: ModelTree, component: str, modules: tuple[str, ...]) -> list[tuple[int, int]] | None:
    """Output-row range of each module inside the fused one, from the tree's weight shapes."""
    rows, start = [], 0
    for module in modules:
        info = tree.get(component, module)
        if info is None:
            return None
        rows.append((start, start + info.weight_shape[0]))
        start += info.weight_shape[0]
    return rows


def reference_components() -> dict[str, object]:
    """Full-size FLUX.1-dev components (transformer, CLIP-L, T5-XXL) from their configs.

    Built on the caller's default device: :func:`lora_syntax.keymaps.reference.reference_tree` calls it
    under ``torch.device("meta")``, so no weights are allocated.
    """
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return {
        TRANSFORMER: FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER_CONFIG),
        CLIP_L: CLIPTextModel(CLIPTextConfig(**FLUX_CLIP_L_CONFIG)),
        T5_XXL: T5EncoderModel(T5Config(**FLUX_T5_XXL_CONFIG)),
    }
