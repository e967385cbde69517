"""Old layouts: diffusers' attention-processor keys (supported) and cloneofsimo's positional keys (refused).

    down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight   -> ...attn1.to_q
    unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight  -> ...attn2.to_out.0
    text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight                -> ...self_attn.k_proj
    unet:12:up, text_encoder:3:down                                                         cloneofsimo, refused
These files carry no alpha: the scale is 1.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..errors import LoraFileError
from ..keymaps.tree import ModelTree
from .base import Grouped
from .common import build_grouped
from .peft import place

ATTN_PROCESSOR = re.compile(
    r"^(?:(?P<component>unet|text_encoder(?:_\d)?)\.)?(?P<path>.+?)\.(?:processor\.)?"
    r"(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<side>down|up)\.weight$")

# Projection names: UNet attention keeps diffusers' names, CLIP attention uses its own.
UNET_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
CLIP_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


class AttnProcessorDialect:
    """diffusers 0.1x attention-processor LoRAs (``pytorch_lora_weights`` of the early dreambooth scripts)."""

    name = "diffusers-legacy"

    def score(self, keys: Collection[str]) -> float:
        if not any("_lora." in key for key in keys):   # every match has it; the lazy ``.+?`` is slow to fail
            return 0.0
        return sum(ATTN_PROCESSOR.match(k) is not None for k in keys) / max(len(keys), 1)

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        groups: dict[tuple[str, str], dict[str, str]] = {}
        unmatched = []
        for key in state_dict:
            match = ATTN_PROCESSOR.match(key)
            target = None
            if match:
                path = match["path"]
                table = CLIP_PROJECTIONS if path.endswith("self_attn") else UNET_PROJECTIONS
                target = place(tree, match["component"], f"{path}.{table[match['proj']]}")
            if target is None:
                unmatched.append(key)
            else:
                groups.setdefault(target, {})[f"lora_{match['side']}.weight"] = key
        return build_grouped(groups, state_dict, unmatched)


POSITIONAL = re.compile(r"^(?:unet|text_encoder(?:_\d)?):\d+:(?:up|down)$")


class CloneofsimoDialect:
    """cloneofsimo/lora's first format: recognised so it can be refused with a reason."""

    name = "cloneofsimo"

    def score(self, keys: Collection[str]) -> float:
        return sum(POSITIONAL.match(k) is not None for k in keys) / max(len(keys), 1)

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        raise LoraFileError(
            "this is a cloneofsimo/lora legacy file (keys like 'unet:0:up'): its keys are positions in the "
            "module order of the diffusers version it was trained with, not module names, so they cannot be "
            "mapped reliably and it is not supported; convert it with cloneofsimo's lora_add/convert tools "
            "or retrain it, or use a kohya/diffusers LoRA")
