"""Norm (LyCORIS ``norms``): trained changes of a GroupNorm/LayerNorm's affine parameters.

    Δweight = w_norm          Δbias = b_norm          (no scale)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ._common import ShapesRepr, f32, fit, require, to_device
from .base import Adapter


@dataclass(frozen=True, eq=False, repr=False)
class NormAdapter(ShapesRepr, Adapter):
    """Additive change ``w_norm`` of a norm layer's weight, ``b_norm`` of its bias."""

    kind: ClassVar[str] = "norm"
    param_names: ClassVar[frozenset[str]] = frozenset({"w_norm", "b_norm"})

    w_norm: torch.Tensor
    b_norm: torch.Tensor | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return "w_norm" in params or "b_norm" in params

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "NormAdapter":
        (w_norm,) = require(params, ("w_norm",), "norm")
        return cls(w_norm=w_norm, b_norm=params.get("b_norm"))

    @property
    def out_features(self) -> int:
        return int(self.w_norm.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return fit(f32(self.w_norm, weight), weight.shape, "norm", self.where)

    def bias_delta(self) -> torch.Tensor | None:
        return None if self.b_norm is None else self.b_norm.float()

    def rows(self, start: int, stop: int) -> "NormAdapter":
        return replace(self, w_norm=self.w_norm[start:stop],
                       b_norm=None if self.b_norm is None else self.b_norm[start:stop])

    def to(self, device: torch.device | str) -> "NormAdapter":
        return to_device(self, device)
