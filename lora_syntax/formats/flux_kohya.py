"""kohya sd-scripts FLUX.1 LoRA: BFL module names flattened with ``_`` under ``lora_unet_``.

    lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight   -> transformer_blocks.0.attn.to_q/to_k/to_v (rows)
    lora_unet_single_blocks_7_linear1.lora_up.weight          -> single_transformer_blocks.7.attn.to_q/k/v + proj_mlp
    lora_unet_final_layer_adaLN_modulation_1.alpha            -> norm_out.linear (halves swapped)
    lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha        -> text_encoder (CLIP-L)
    lora_te3_encoder_block_0_layer_0_SelfAttention_q.alpha    -> text_encoder_2 (T5-XXL)
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..keymaps import flux as fluxmap
from ..keymaps.tree import ModelTree
from .base import Grouped
from .flux_common import IDENTITY, KOHYA_TE_RE, Placement, group_with, kohya_te_resolver, place_bfl, score_with

PREFIX = "lora_unet_"
UNET_RE = re.compile(r"^lora_unet_((double|single)_blocks_\d+_|img_in\.|txt_in\.|"
                     r"(time|vector|guidance)_in_(in|out)_layer\.|final_layer_)")


class FluxKohyaDialect:
    """kohya/ComfyUI-trained FLUX.1 LoRA (LoRA, LoCon, LoKr, LoHa parameters under kohya names)."""

    name = "flux-kohya"

    def score(self, keys: Collection[str]) -> float:
        return score_with(keys, (UNET_RE,), companions=(KOHYA_TE_RE,))

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        text = kohya_te_resolver(tree)

        def resolve(name: str, tree: ModelTree) -> Placement | None:
            if not name.startswith(PREFIX):
                return text(name, tree)
            bfl = fluxmap.bfl_from_underscored(name[len(PREFIX):])
            return place_bfl(bfl) if bfl else None

        return group_with(state_dict, tree, IDENTITY, resolve)


DIALECT = FluxKohyaDialect()
