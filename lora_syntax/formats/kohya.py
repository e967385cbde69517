"""kohya-ss / LyCORIS keys: ``{prefix}{module path with _}.{param}``.

    lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight        SD1.5, diffusers names
    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha     SDXL, SGM names
    lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_a                LoHa on the text encoder
    lora_te2_text_model_encoder_layers_3_self_attn_q_proj.lokr_w1        SDXL second text encoder, LoKr
    lycoris_output_blocks_2_1_proj_out.dora_scale                        LyCORIS' own prefix, DoRA
The module part has no dots, so the parameter is everything after the first dot. Names resolve through
:func:`lora_syntax.keymaps.kohya.kohya_map`, which may split one fused file module over several targets.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from ..keymaps.kohya import kohya_map
from ..keymaps.tree import ModelTree
from ..targets import ModuleTarget
from .base import Grouped, ModuleParams
from .common import KOHYA_PARAMS

PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_", "lycoris_")


def split_key(key: str) -> tuple[str, str] | None:
    """``(kohya module name, param)`` of a kohya key, or ``None`` when it is not one."""
    name, dot, param = key.partition(".")
    if not dot or param not in KOHYA_PARAMS or not name.startswith(PREFIXES):
        return None
    return name, param


class KohyaDialect:
    """kohya-ss sd-scripts and LyCORIS files."""

    name = "kohya"

    def score(self, keys: Collection[str]) -> float:
        return sum(split_key(k) is not None for k in keys) / max(len(keys), 1)

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        table = kohya_map(tree)
        by_name: dict[str, dict[str, str]] = {}
        unmatched: list[str] = []
        for key in state_dict:
            parts = split_key(key)
            if parts is None or parts[0] not in table:
                unmatched.append(key)
            else:
                by_name.setdefault(parts[0], {})[parts[1]] = key
        modules = []
        for name, params in by_name.items():
            tensors = {param: state_dict[key] for param, key in params.items()}
            keys = tuple(sorted(params.values()))
            for place in table[name]:
                modules.append(ModuleParams(ModuleTarget(place.component, place.module), tensors, keys, place.rows))
        return Grouped(modules, sorted(unmatched))
