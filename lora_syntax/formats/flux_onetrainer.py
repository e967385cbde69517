"""OneTrainer FLUX.1 LoRA/DoRA: diffusers module names flattened with ``_`` under ``lora_transformer_``.

    lora_transformer_transformer_blocks_0_attn_to_out_0.dora_scale  -> transformer_blocks.0.attn.to_out.0
    lora_transformer_single_transformer_blocks_3_attn_to_q.lora_up.weight
    lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha       -> text_encoder (CLIP-L)
    lora_te2_encoder_block_0_layer_1_DenseReluDense_wi_0.alpha         -> text_encoder_2 (T5-XXL)

``dora_scale`` here is ``[1, in_features]`` (the norm runs over output rows, one per input column).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..keymaps import flux as fluxmap
from ..keymaps.tree import ModelTree
from .base import Grouped
from .flux_common import (IDENTITY, KOHYA_TE_RE, Placement, group_with, kohya_te_resolver, score_with,
                          underscore_index)

PREFIX = "lora_transformer_"
TRANSFORMER_RE = re.compile(r"^lora_transformer_(transformer_blocks_\d+_|single_transformer_blocks_\d+_|"
                            r"x_embedder\.|context_embedder\.|time_text_embed_|norm_out_linear\.|proj_out\.)")


class FluxOneTrainerDialect:
    """OneTrainer's FLUX.1 layout (LoRA and DoRA)."""

    name = "flux-onetrainer"

    def score(self, keys: Collection[str]) -> float:
        return score_with(keys, (TRANSFORMER_RE,), companions=(KOHYA_TE_RE,))

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        text = kohya_te_resolver(tree)
        index = underscore_index(tree, fluxmap.TRANSFORMER)

        def resolve(name: str, tree: ModelTree) -> Placement | None:
            if not name.startswith(PREFIX):
                return text(name, tree)
            module = index.get(name[len(PREFIX):])
            return Placement(fluxmap.TRANSFORMER, (module,)) if module else None

        return group_with(state_dict, tree, IDENTITY, resolve)


DIALECT = FluxOneTrainerDialect()
