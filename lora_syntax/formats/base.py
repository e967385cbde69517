"""The contract of a key dialect: recognise a file's key layout and group its tensors per module.

A dialect turns raw file keys (``lora_unet_down_blocks_0_..._to_q.lora_down.weight``,
``transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight``...) into
:class:`ModuleParams`: the target module plus the adapter parameters under their normalised
LyCORIS/kohya names (``lora_up.weight``, ``lora_down.weight``, ``alpha``, ``hada_w1_a``, ``lokr_w1``,
``dora_scale``, ``diff``, ``diff_b``...), which :func:`lora_syntax.adapters.registry.build_adapter` reads.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..keymaps.tree import ModelTree
from ..targets import ModuleTarget


@dataclass(frozen=True)
class ModuleParams:
    """One module's adapter parameters, as found in the file.

    ``rows`` is set when a fused module in the file (FLUX kohya ``qkv``, ``linear1``) is split onto
    separate model modules: this target takes output rows ``rows[0]:rows[1]`` of the fused delta, whose
    rows number ``fused_rows`` (the sum over its targets: a file with more or fewer was made for another model).
    """

    target: ModuleTarget
    params: Mapping[str, torch.Tensor]
    source_keys: tuple[str, ...]
    rows: tuple[int, int] | None = None
    fused_rows: int | None = None


@dataclass(frozen=True)
class Grouped:
    """A dialect's result for one file: module groups and the keys it could not place."""

    modules: list[ModuleParams]
    unmatched: list[str] = field(default_factory=list)


class KeyDialect(Protocol):
    """A family of key layouts (kohya, PEFT, old diffusers, XLabs...)."""

    name: str

    def score(self, keys: Collection[str]) -> float:
        """Fraction of ``keys`` whose layout this dialect recognises (0 = not this dialect)."""

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        """Group tensors per target module of ``tree``; unplaceable keys go to ``unmatched``."""
