"""ostris ai-toolkit FLUX.1 LoRA: BFL dotted module names with PEFT ``lora_A``/``lora_B``, no alpha.

    diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight   [9216, r] -> attn.to_q/to_k/to_v (rows)
    diffusion_model.single_blocks.0.linear1.lora_B.weight        [21504, r] -> attn.to_q/k/v + proj_mlp (rows)
    diffusion_model.double_blocks.0.img_mlp.2.lora_A.weight                  -> ff.net.2
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ..keymaps.tree import ModelTree
from .base import Grouped
from .flux_bfl import NAME_RE, TEXT_RE, resolve
from .flux_common import PEFT_PARAMS, group_with, score_with

KEY_RE = re.compile(NAME_RE + r".*\.(lora_[AB]\.weight|alpha)$")


class FluxAIToolkitDialect:
    """ai-toolkit's FLUX.1 layout."""

    name = "flux-aitoolkit"

    def score(self, keys: Collection[str]) -> float:
        return score_with(keys, (KEY_RE,), companions=(TEXT_RE,))

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        return group_with(state_dict, tree, PEFT_PARAMS, resolve)


DIALECT = FluxAIToolkitDialect()
