"""GLoRA (LyCORIS ``glora``): a low-rank change that also rescales the weight through itself.

    ΔW = (alpha / r) · (W @ a1 @ a2 + b1 @ b2)       a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in·k·k)
    conv: W @ a1 @ a2 acts on W's input axis, kernel kept; Tucker ``bm.weight`` (r, r, kh, kw) between b1 and b2.

r is ``a2.weight``'s first dimension. The delta reads the weight it is given (the original one).
Only the current LyCORIS layout is read; the pre-2024 "old GLoRA" layout is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ._common import ShapesRepr, alpha_scale, check_inner, f32, fit, require, scalar, to_device
from .base import Adapter

_NAMES = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


def glora_delta(weight: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, b1: torch.Tensor,
                b2: torch.Tensor, bm: torch.Tensor | None, scale: float) -> torch.Tensor:
    """fp32 ``scale · (W a1 a2 + b1 b2)`` shaped like ``weight``."""
    w = weight.float()
    b1_2 = b1.float().reshape(b1.shape[0], -1)
    if bm is None:
        wb = (b1_2 @ b2.float().reshape(b2.shape[0], -1)).reshape(w.shape)
    else:
        wb = torch.einsum("m n ..., i m, n j -> i j ...", bm.float(), b1_2, b2.float().reshape(b2.shape[0], -1))
    wa1 = a1.float().reshape(a1.shape[0], -1)
    wa2 = a2.float().reshape(a2.shape[0], -1)
    wa = torch.einsum("o i ..., i j, j k -> o k ...", w, wa1, wa2)
    return (wa + wb.reshape(w.shape)) * scale


@dataclass(frozen=True, eq=False, repr=False)
class GloraAdapter(ShapesRepr, Adapter):
    """Generalised LoRA: ``W a1 a2 + b1 b2``, scaled by alpha/rank."""

    kind: ClassVar[str] = "glora"
    param_names: ClassVar[frozenset[str]] = frozenset({*_NAMES, "bm.weight", "alpha"})

    a1: torch.Tensor
    a2: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor
    bm: torch.Tensor | None = None
    alpha: float | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return any(name in params for name in _NAMES)

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "GloraAdapter":
        a1, a2, b1, b2 = require(params, _NAMES, "GLoRA")
        check_inner("GLoRA", ("a1.weight", a1, 1, "a2.weight", a2, 0), ("b1.weight", b1, 1, "b2.weight", b2, 0))
        alpha = params.get("alpha")
        return cls(a1, a2, b1, b2, params.get("bm.weight"), None if alpha is None else scalar(alpha, "alpha", "GLoRA"))

    @property
    def rank(self) -> int:
        return int(self.a2.shape[0])

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.rank)

    @property
    def out_features(self) -> int:
        return int(self.b1.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        expected = (self.b1.shape[0], self.a1.shape[0])
        if tuple(weight.shape[:2]) != expected:
            fit(torch.empty(expected, device="meta"), weight.shape[:2], "GLoRA", self.where)
        bm = None if self.bm is None else f32(self.bm, weight)
        return glora_delta(weight, f32(self.a1, weight), f32(self.a2, weight), f32(self.b1, weight),
                           f32(self.b2, weight), bm, self.scale)

    def rows(self, start: int, stop: int) -> "GloraAdapter":
        """Rows of ``b1``; the ``W a1 a2`` term reads the sliced module's own rows."""
        return replace(self, b1=self.b1[start:stop])

    def to(self, device: torch.device | str) -> "GloraAdapter":
        return to_device(self, device)
