"""LoRA / LoCon (kohya, LyCORIS ``locon``, DyLoRA files), linear and conv, with optional Tucker ``lora_mid``.

    ΔW = (alpha / r) · up @ down                       up (out, r[,1,1]), down (r, in[, kh, kw])
    ΔW = (alpha / r) · mid ×₀ up ×₁ down   (Tucker)     mid (r, r, kh, kw), up/down 1x1

r is ``down``'s first dimension; a file without ``alpha`` (or alpha 0) has scale 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ._common import (ShapesRepr, alpha_scale, check_inner, check_matrix, check_unit_kernel, f32, fit, require,
                      same_layout, scalar, to_device)
from .base import Adapter


def lora_delta(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, scale: float) -> torch.Tensor:
    """fp32 ``scale · up @ down`` (or its Tucker form) in the natural shape ``(out, in, *kernel)``."""
    u, d = up.float(), down.float()
    out_dim, rank, in_dim = u.shape[0], u.shape[1], d.shape[1]
    u2 = u.reshape(out_dim, rank)
    if mid is None:
        kernel = d.shape[2:]
        result = u2 @ d.reshape(d.shape[0], -1)
    else:
        m = mid.float()
        kernel = m.shape[2:]
        result = torch.einsum("i j ..., p i, j q -> p q ...", m, u2, d.reshape(d.shape[0], in_dim))
    return (result * scale).reshape(out_dim, in_dim, *kernel)


def lora_factors(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(up, down)`` 2-D matrices with the scale folded into ``up`` (Tucker ``mid`` folded into ``down``)."""
    u, d = up.float(), down.float()
    u2 = u.reshape(u.shape[0], u.shape[1]) * scale
    if mid is None:
        return u2, d.reshape(d.shape[0], -1)
    folded = torch.einsum("i j ..., j q -> i q ...", mid.float(), d.reshape(d.shape[0], d.shape[1]))
    return u2, folded.reshape(folded.shape[0], -1)


@dataclass(frozen=True, eq=False, repr=False)
class LoraAdapter(ShapesRepr, Adapter):
    """Low-rank ``up @ down`` (LoRA/LoCon/DyLoRA), optionally Tucker-decomposed through ``mid``."""

    kind: ClassVar[str] = "lora"
    param_names: ClassVar[frozenset[str]] = frozenset(
        {"lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha"})

    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None = None
    alpha: float | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return "lora_up.weight" in params and "lora_down.weight" in params

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "LoraAdapter":
        up, down = require(params, ("lora_up.weight", "lora_down.weight"), "LoRA")
        alpha, mid = params.get("alpha"), params.get("lora_mid.weight")
        check_matrix("LoRA", ("lora_up.weight", up), ("lora_down.weight", down), ("lora_mid.weight", mid))
        check_inner("LoRA", ("lora_up.weight", up, 1, "lora_down.weight", down, 0))
        check_unit_kernel("LoRA", "lora_up.weight", up, "an up factor is (out, rank) or (out, rank, 1, 1)")
        if mid is not None:
            check_inner("LoRA", ("lora_up.weight", up, 1, "lora_mid.weight", mid, 0),
                        ("lora_mid.weight", mid, 1, "lora_down.weight", down, 0))
            check_unit_kernel("LoRA", "lora_down.weight", down,
                              "with a Tucker lora_mid.weight the kernel is the mid factor's; down is (rank, in, 1, 1)")
        return cls(up=up, down=down, mid=mid,
                   alpha=None if alpha is None else scalar(alpha, "alpha", "LoRA"))

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.down.shape[0])

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        mid = None if self.mid is None else f32(self.mid, weight)
        full = lora_delta(f32(self.up, weight), f32(self.down, weight), mid, self.scale)
        return fit(full, weight.shape, "LoRA", self.where)

    def check_fits(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        kernel = (self.mid if self.mid is not None else self.down).shape[2:]
        natural = (self.out_features, int(self.down.shape[1]), *kernel)
        if same_layout(natural, shape):   # what fit() checks, without making a meta tensor
            return torch.Size(shape)
        return fit(torch.empty(natural, device="meta"), shape, "LoRA", self.where).shape

    def low_rank(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        up, down = lora_factors(self.up, self.down, self.mid, self.scale)
        if not same_layout((up.shape[0], down.shape[1]), shape):
            fit(torch.empty(up.shape[0], down.shape[1], device="meta"), shape, "LoRA", self.where)
        return up, down

    def truncated(self, rank: int) -> "LoraAdapter":
        """The first ``rank`` components; alpha is kept, so the scale becomes alpha/rank (LyCORIS DyLoRA)."""
        if rank <= 0 or rank >= self.rank:
            return self
        mid = None if self.mid is None else self.mid[:rank, :rank]
        return replace(self, up=self.up[:, :rank], down=self.down[:rank], mid=mid)

    def rows(self, start: int, stop: int) -> "LoraAdapter":
        """Output rows ``start:stop`` only: slicing ``up`` keeps the low-rank form."""
        return replace(self, up=self.up[start:stop])

    def to(self, device: torch.device | str) -> "LoraAdapter":
        return to_device(self, device)
