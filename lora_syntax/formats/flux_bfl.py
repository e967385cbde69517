"""FLUX.1 adapters under BFL's own dotted module names (LyCORIS LoKr/LoHa/LoRA, ComfyUI saves).

    diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1  -> transformer_blocks.0.attn.to_q/to_k/to_v (rows)
    diffusion_model.single_blocks.0.linear2.lokr_w2       -> single_transformer_blocks.0.proj_out
    diffusion_model.final_layer.adaLN_modulation.1.lora_up.weight -> norm_out.linear (halves swapped)
    text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.lora_up.weight -> text_encoder

Prefix ``diffusion_model.`` or ``model.diffusion_model.`` or none. :mod:`.flux_aitoolkit` is the same
names with PEFT's ``lora_A``/``lora_B``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..keymaps import flux as fluxmap
from ..keymaps.tree import ModelTree
from .base import Grouped
from .flux_common import IDENTITY, LYCORIS_PARAMS, Placement, dotted_lookup, group_with, place_bfl, prefixed, \
    score_with

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
TEXT_PREFIXES: Mapping[str, str] = {
    "text_encoders.clip_l.transformer.": fluxmap.CLIP_L, "text_encoders.t5xxl.transformer.": fluxmap.T5_XXL,
}
NAME_RE = (r"^(?:model\.)?(?:diffusion_model\.)?(?:(?:double|single)_blocks\.\d+\.|img_in\.|txt_in\.|"
           r"(?:time|vector|guidance)_in\.|final_layer\.)")
TEXT_RE = re.compile(r"^text_encoders\.(clip_l|t5xxl)\.transformer\.")
_LYCORIS_SUFFIX = "|".join(re.escape(p) for p in LYCORIS_PARAMS)
KEY_RE = re.compile(NAME_RE + rf".*\.({_LYCORIS_SUFFIX})$")


def resolve(name: str, tree: ModelTree) -> Placement | None:
    """Transformer modules for a BFL name (any known prefix), or a ComfyUI text-encoder module."""
    text = prefixed(TEXT_PREFIXES, name)
    if text is not None:
        module = dotted_lookup(tree, *text)
        return Placement(text[0], (module,)) if module else None
    for prefix in TRANSFORMER_PREFIXES:
        if name.startswith(prefix):
            found = place_bfl(name[len(prefix):])
            if found is not None:
                return found
    return None


class FluxBflDialect:
    """BFL-named FLUX.1 adapters with kohya/LyCORIS parameter names (``lokr_w1``, ``lora_down.weight``...)."""

    name = "flux-bfl"

    def score(self, keys: Collection[str]) -> float:
        return score_with(keys, (KEY_RE,), companions=(TEXT_RE,))

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        return group_with(state_dict, tree, IDENTITY, resolve)


DIALECT = FluxBflDialect()
