"""LoHa (LyCORIS ``loha``): the Hadamard product of two low-rank matrices, optionally Tucker.

    ΔW = (alpha / r) · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)          w*_a (out, r), w*_b (r, in·k·k)
    Tucker: (w1_a, w1_b) → t1 ×₀ w1_aᵀ ×₁ w1_b                  t* (r, r, kh, kw), w*_a (r, out), w*_b (r, in)

r is ``hada_w1_b``'s first dimension (as LyCORIS and ComfyUI read it); no ``alpha`` means scale 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ._common import ShapesRepr, alpha_scale, check_inner, check_matrix, f32, fit, require, scalar, to_device
from .base import Adapter

_NAMES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def _half(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """One Hadamard factor: ``a @ b`` flattened, or its Tucker rebuild ``(out, in, *kernel)``."""
    if t is None:
        return a.float().reshape(a.shape[0], -1) @ b.float().reshape(b.shape[0], -1)
    return torch.einsum("i j ..., i p, j q -> p q ...", t.float(), a.float(), b.float().reshape(b.shape[0], -1))


def loha_delta(w1_a: torch.Tensor, w1_b: torch.Tensor, w2_a: torch.Tensor, w2_b: torch.Tensor,
               t1: torch.Tensor | None, t2: torch.Tensor | None, scale: float) -> torch.Tensor:
    """fp32 ``scale · (w1_a@w1_b) ⊙ (w2_a@w2_b)``; 2-D ``(out, in·k·k)`` without Tucker, else ``(out, in, *k)``."""
    return _half(w1_a, w1_b, t1) * _half(w2_a, w2_b, t2) * scale


@dataclass(frozen=True, eq=False, repr=False)
class LohaAdapter(ShapesRepr, Adapter):
    """Hadamard product of two low-rank products (LoHa), with optional Tucker cores ``t1``/``t2``."""

    kind: ClassVar[str] = "loha"
    param_names: ClassVar[frozenset[str]] = frozenset({*_NAMES, "hada_t1", "hada_t2", "alpha"})

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return any(name.startswith("hada_") for name in params)

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "LohaAdapter":
        w1_a, w1_b, w2_a, w2_b = require(params, _NAMES, "LoHa")
        if ("hada_t1" in params) != ("hada_t2" in params):
            require(params, ("hada_t1", "hada_t2"), "LoHa (Tucker)")
        t1, t2 = params.get("hada_t1"), params.get("hada_t2")
        check_matrix("LoHa", *((name, params.get(name)) for name in (*_NAMES, "hada_t1", "hada_t2")))
        if t1 is None:
            check_inner("LoHa", ("hada_w1_a", w1_a, 1, "hada_w1_b", w1_b, 0),
                        ("hada_w2_a", w2_a, 1, "hada_w2_b", w2_b, 0))
        else:
            check_inner("LoHa", ("hada_w1_a", w1_a, 0, "hada_t1", t1, 0), ("hada_t1", t1, 1, "hada_w1_b", w1_b, 0),
                        ("hada_w2_a", w2_a, 0, "hada_t2", t2, 0), ("hada_t2", t2, 1, "hada_w2_b", w2_b, 0))
        alpha = params.get("alpha")
        return cls(w1_a, w1_b, w2_a, w2_b, params.get("hada_t1"), params.get("hada_t2"),
                   None if alpha is None else scalar(alpha, "alpha", "LoHa"))

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.w1_b.shape[0])

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.w1_a.shape[0] if self.t1 is None else self.w1_a.shape[1])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        t1 = None if self.t1 is None else f32(self.t1, weight)
        t2 = None if self.t2 is None else f32(self.t2, weight)
        full = loha_delta(f32(self.w1_a, weight), f32(self.w1_b, weight), f32(self.w2_a, weight),
                          f32(self.w2_b, weight), t1, t2, self.scale)
        return fit(full, weight.shape, "LoHa", self.where)

    def rows(self, start: int, stop: int) -> "LohaAdapter":
        """Output rows ``start:stop``: the rows of both ``a`` factors (their columns under Tucker)."""
        if self.t1 is None:
            return replace(self, w1_a=self.w1_a[start:stop], w2_a=self.w2_a[start:stop])
        return replace(self, w1_a=self.w1_a[:, start:stop], w2_a=self.w2_a[:, start:stop])

    def to(self, device: torch.device | str) -> "LohaAdapter":
        return to_device(self, device)
