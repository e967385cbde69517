"""XLabs-AI FLUX.1 LoRA: LoRAs on the attention processors of BFL blocks, no alpha (scale 1).

    double_blocks.0.processor.qkv_lora1.down.weight  -> transformer_blocks.0.attn.to_q/to_k/to_v (rows)
    double_blocks.0.processor.proj_lora1.up.weight   -> transformer_blocks.0.attn.to_out.0
    double_blocks.0.processor.qkv_lora2.up.weight    -> transformer_blocks.0.attn.add_q/k/v_proj (rows)
    double_blocks.0.processor.proj_lora2.up.weight   -> transformer_blocks.0.attn.to_add_out
    single_blocks.0.processor.qkv_lora.up.weight     -> single_transformer_blocks.0.attn.to_q/k/v (rows)
(1 = image stream, 2 = text stream, as diffusers' ``_convert_xlabs_flux_lora_to_diffusers`` reads them.)
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..keymaps import flux as fluxmap
from ..keymaps.tree import ModelTree
from .base import Grouped
from .flux_common import XLABS_PARAMS, Placement, group_with, score_with

NAME_RE = re.compile(r"^(?:diffusion_model\.)?(double_blocks|single_blocks)\.(\d+)\.processor\.(\w+)$")
KEY_RE = re.compile(r"^(?:diffusion_model\.)?(double|single)_blocks\.\d+\.processor\.\w+_lora\d?\.(down|up)\.weight$")


def resolve(name: str, tree: ModelTree) -> Placement | None:
    """The transformer modules an XLabs processor LoRA adds to."""
    match = NAME_RE.match(name)
    if match is None:
        return None
    found = fluxmap.xlabs_placement(*match.groups())
    return Placement(fluxmap.TRANSFORMER, found.modules) if found else None


class FluxXLabsDialect:
    """XLabs-AI (x-flux) LoRA files."""

    name = "flux-xlabs"

    def score(self, keys: Collection[str]) -> float:
        return score_with(keys, (KEY_RE,))

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        return group_with(state_dict, tree, XLABS_PARAMS, resolve)


DIALECT = FluxXLabsDialect()
