"""DoRA (weight-decomposed LoRA) over any additive adapter: ``dora_scale`` next to its factors.

    W' = W + Δ                                  (Δ = the base adapter's delta at multiplier 1)
    W_dora = dora_scale · W' / ‖W'‖             ‖·‖ per output row  (dora_scale (out, 1, ...))
                                                 or per input column (dora_scale (1, in, ...))
    patched(W, m) = W + m · (W_dora − W)        (ComfyUI and LyCORIS at m = 1)

Non-additive: the norm is taken of the weight it is applied to, so the engine applies it in tag order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..errors import LoraFileError, LoraShapeError
from ._common import ShapesRepr, f32
from .base import Adapter


def dora_on_output(dora_scale: torch.Tensor, shape: torch.Size) -> bool:
    """True when the magnitude is per output row: (out, 1, ...) or (out,); False for (1, in, ...)."""
    out_dim, in_dim = shape[0], shape[1] if len(shape) > 1 else 1
    if dora_scale.dim() >= 2 and dora_scale.shape[0] == 1 and dora_scale.shape[1] == in_dim and out_dim != 1:
        return False
    if dora_scale.numel() == out_dim:
        return True
    if dora_scale.numel() == in_dim:
        return False
    raise LoraShapeError(f"dora_scale of shape {tuple(dora_scale.shape)} fits neither the output ({out_dim}) "
                         f"nor the input ({in_dim}) axis of a weight of shape {tuple(shape)}.")


def dora_weight(merged: torch.Tensor, dora_scale: torch.Tensor, on_output: bool) -> torch.Tensor:
    """fp32 ``dora_scale · merged / ‖merged‖``, the norm per output row or per input column."""
    m = merged.float()
    eps = torch.finfo(torch.float32).eps
    if on_output:
        norm = m.reshape(m.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (m.dim() - 1))
        magnitude = dora_scale.float().reshape(-1, *[1] * (m.dim() - 1))
    else:
        norm = m.transpose(0, 1).reshape(m.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *[1] * (m.dim() - 2))
        magnitude = dora_scale.float().reshape(1, -1, *[1] * (m.dim() - 2))
    return m * (magnitude / (norm + eps))


@dataclass(frozen=True, eq=False, repr=False)
class DoraAdapter(ShapesRepr, Adapter):
    """``base``'s change re-normalised to the magnitudes ``dora_scale`` (DoRA, DoHa, DoKr)."""

    kind: ClassVar[str] = "dora"
    additive: ClassVar[bool] = False
    param_names: ClassVar[frozenset[str]] = frozenset({"dora_scale"})

    base: Adapter
    dora_scale: torch.Tensor
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return False  # never alone: the registry wraps the base type that claims the module

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "DoraAdapter":
        raise LoraFileError("DoRA wraps a base adapter; build it with registry.build_adapter")

    def patched(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        w = weight.float()
        target = dora_weight(w + self.base.delta(w), f32(self.dora_scale, w), dora_on_output(self.dora_scale, w.shape))
        return w + multiplier * (target - w)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.float()
        return self.patched(w, 1.0) - w

    def bias_delta(self) -> torch.Tensor | None:
        return self.base.bias_delta()

    @property
    def rank(self) -> int | None:
        return self.base.rank

    @property
    def out_features(self) -> int | None:
        return getattr(self.base, "out_features", None)

    def truncated(self, rank: int) -> "DoraAdapter":
        return replace(self, base=self.base.truncated(rank))

    def rows(self, start: int, stop: int) -> "DoraAdapter":
        """Rows of a per-output-row DoRA; a per-input-column norm spans every row and cannot be split."""
        ds = self.dora_scale
        if ds.dim() >= 2 and ds.shape[0] == 1 and ds.numel() > 1:
            raise LoraFileError(f"DoRA at {self.where or 'this module'} normalises input columns across the "
                                "fused module; it cannot be split onto separate output modules.")
        from .registry import sliced
        return replace(self, base=sliced(self.base, start, stop), dora_scale=ds[start:stop])

    def to(self, device: torch.device | str) -> "DoraAdapter":
        return replace(self, base=self.base.to(device), dora_scale=self.dora_scale.to(device))
