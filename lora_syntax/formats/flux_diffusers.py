"""diffusers/PEFT FLUX.1 LoRA: the model's own module names under a component prefix.

    transformer.transformer_blocks.0.attn.to_q.lora_A.weight        -> transformer_blocks.0.attn.to_q
    transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight  (absent in the "no proj_mlp" variant)
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight -> text_encoder (CLIP-L)

Also read: ``lora_down``/``lora_up`` names under ``transformer.`` (some Civitai files), and an
``.alpha`` per module.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..keymaps import flux as fluxmap
from ..keymaps.tree import ModelTree
from .base import Grouped
from .flux_common import PEFT_PARAMS, Placement, dotted_lookup, group_with, prefixed, score_with

PREFIXES: Mapping[str, str] = {
    "transformer.": fluxmap.TRANSFORMER, "text_encoder.": fluxmap.CLIP_L, "text_encoder_2.": fluxmap.T5_XXL,
}
TRANSFORMER_RE = re.compile(r"^transformer\.(transformer_blocks|single_transformer_blocks|x_embedder|"
                            r"context_embedder|time_text_embed|norm_out|proj_out)\.")
TEXT_RE = re.compile(r"^text_encoder(_2)?\.")


def resolve(name: str, tree: ModelTree) -> Placement | None:
    """The module ``name`` (``transformer.<path>``, ``text_encoder.<path>``) names in ``tree``."""
    found = prefixed(PREFIXES, name)
    if found is None:
        return None
    component, path = found
    module = dotted_lookup(tree, component, path)
    return Placement(component, (module,)) if module else None


class FluxDiffusersDialect:
    """FLUX.1 LoRA saved by diffusers/PEFT (``FluxPipeline.save_lora_weights``) or trainers that copy it."""

    name = "flux-diffusers"

    def score(self, keys: Collection[str]) -> float:
        return score_with(keys, (TRANSFORMER_RE,), companions=(TEXT_RE,))

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        return group_with(state_dict, tree, PEFT_PARAMS, resolve)


DIALECT = FluxDiffusersDialect()
