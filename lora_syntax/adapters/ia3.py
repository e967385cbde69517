"""(IA)^3 (LyCORIS ``ia3``): learned per-channel rescaling of a weight.

    W' = W ⊙ (1 + m · w)      w along the output axis (rows), or the input axis when ``on_input`` is 1
    ΔW = W ⊙ w                (at m = 1)

Linear in the multiplier, so it is additive with a delta read from the weight it is given: the
engine passes the original weight, which makes a stack order-independent and equals LyCORIS'
``get_diff_weight``/``get_merged_weight`` (ComfyUI instead rescales the already-patched weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..errors import LoraShapeError
from ._common import ShapesRepr, f32, require, scalar, to_device
from .base import Adapter


def ia3_delta(weight: torch.Tensor, scale: torch.Tensor, on_input: bool) -> torch.Tensor:
    """fp32 ``W ⊙ w`` with ``w`` broadcast along axis 1 (``on_input``) or axis 0."""
    w = weight.float()
    axis = 1 if on_input else 0
    shape = [1] * w.dim()
    shape[axis] = -1
    return w * scale.float().reshape(shape)


@dataclass(frozen=True, eq=False, repr=False)
class Ia3Adapter(ShapesRepr, Adapter):
    """Per-channel scale ``weight`` of the output rows, or of the input columns when ``on_input``."""

    kind: ClassVar[str] = "ia3"
    param_names: ClassVar[frozenset[str]] = frozenset({"weight", "on_input"})

    scale: torch.Tensor
    on_input: bool = False
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return "weight" in params or "on_input" in params

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "Ia3Adapter":
        (scale,) = require(params, ("weight",), "(IA)^3")
        on_input = params.get("on_input")
        return cls(scale=scale, on_input=bool(on_input is not None and scalar(on_input, "on_input", "(IA)^3") != 0))

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        axis = 1 if self.on_input else 0
        if weight.dim() <= axis or self.scale.numel() != weight.shape[axis]:
            raise LoraShapeError(
                f"(IA)^3 adapter at {self.where or 'this module'} has {self.scale.numel()} scales, but the "
                f"weight of shape {tuple(weight.shape)} has {weight.shape[axis] if weight.dim() > axis else 0} "
                f"{'input' if self.on_input else 'output'} channels.")
        return ia3_delta(weight, f32(self.scale, weight), self.on_input)

    def rows(self, start: int, stop: int) -> "Ia3Adapter":
        """Output rows only: an input-axis scale applies unchanged to every slice of rows."""
        return self if self.on_input else replace(self, scale=self.scale.reshape(-1)[start:stop])

    def to(self, device: torch.device | str) -> "Ia3Adapter":
        return to_device(self, device)
