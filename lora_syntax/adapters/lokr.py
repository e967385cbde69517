"""LoKr (LyCORIS ``lokr``): a Kronecker product whose factors may themselves be low-rank.

    ΔW = scale · w1 ⊗ w2
    w1 = lokr_w1   or  lokr_w1_a @ lokr_w1_b
    w2 = lokr_w2   or  lokr_w2_a @ lokr_w2_b     (conv: w2_b (r, in₂[, kh, kw]))
                   or  t2 ×₀ w2_aᵀ ×₁ w2_b       (Tucker: t2 (r, r, kh, kw), w2_a (r, out₂), w2_b (r, in₂))
    scale = alpha / r   only when a factor is decomposed (r = that factor's ``_b`` first dimension,
            ComfyUI's reading); both factors full, or no ``alpha``: scale = 1 (LyCORIS ignores alpha then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import LoraFactorsError, LoraFileError
from ._common import ShapesRepr, alpha_scale, check_inner, check_matrix, f32, fit, scalar, to_device
from .base import Adapter


def _opt(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else f32(t, like)


def lokr_w1(w1: torch.Tensor | None, w1_a: torch.Tensor | None, w1_b: torch.Tensor | None) -> torch.Tensor:
    """The small Kronecker factor, rebuilt from ``w1_a @ w1_b`` when decomposed."""
    return w1.float() if w1 is not None else w1_a.float() @ w1_b.float()


def lokr_w2(w2: torch.Tensor | None, w2_a: torch.Tensor | None, w2_b: torch.Tensor | None,
            t2: torch.Tensor | None) -> torch.Tensor:
    """The large Kronecker factor: full, ``w2_a @ w2_b`` (conv kernel kept), or its Tucker rebuild."""
    if w2 is not None:
        return w2.float()
    if t2 is not None:
        return torch.einsum("i j ..., i p, j q -> p q ...", t2.float(), w2_a.float(), w2_b.float())
    rank, in_dim, *kernel = w2_b.shape
    return (w2_a.float() @ w2_b.float().reshape(rank, -1)).reshape(-1, in_dim, *kernel)


def lokr_delta(w1: torch.Tensor, w2: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 ``scale · kron(w1, w2)``; ``w1`` gains trailing unit axes to match a conv ``w2``."""
    w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - w1.dim()))
    return torch.kron(w1.float().contiguous(), w2.float().contiguous()) * scale


def _check_lokr(params: Mapping[str, torch.Tensor]) -> None:
    """The decomposed factors' ranks agree (Tucker: w2_a (r, out₂), t2 (r, r, k..), w2_b (r, in₂))."""
    if "lokr_w1" not in params:
        check_inner("LoKr", ("lokr_w1_a", params["lokr_w1_a"], 1, "lokr_w1_b", params["lokr_w1_b"], 0))
    if "lokr_w2" in params:
        return
    a, b, t = params["lokr_w2_a"], params["lokr_w2_b"], params.get("lokr_t2")
    if t is None:
        check_inner("LoKr", ("lokr_w2_a", a, 1, "lokr_w2_b", b, 0))
    else:
        check_inner("LoKr", ("lokr_w2_a", a, 0, "lokr_t2", t, 0), ("lokr_t2", t, 1, "lokr_w2_b", b, 0))


@dataclass(frozen=True, eq=False, repr=False)
class LokrAdapter(ShapesRepr, Adapter):
    """Kronecker product ``w1 ⊗ w2`` with any of LyCORIS' factor layouts (LoKr)."""

    kind: ClassVar[str] = "lokr"
    param_names: ClassVar[frozenset[str]] = frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"})

    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return any(name.startswith("lokr_") for name in params)

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "LokrAdapter":
        has = params.__contains__
        if not (has("lokr_w1") or (has("lokr_w1_a") and has("lokr_w1_b"))):
            raise LoraFileError("LoKr adapter needs lokr_w1, or lokr_w1_a and lokr_w1_b; "
                                f"it has {', '.join(sorted(params))}.")
        if not (has("lokr_w2") or (has("lokr_w2_a") and has("lokr_w2_b"))):
            raise LoraFileError("LoKr adapter needs lokr_w2, or lokr_w2_a and lokr_w2_b (and lokr_t2 for "
                                f"Tucker); it has {', '.join(sorted(params))}.")
        layouts = (("lokr_w1", ("lokr_w1_a", "lokr_w1_b")), ("lokr_w2", ("lokr_w2_a", "lokr_w2_b", "lokr_t2")))
        for whole, parts in layouts:
            mixed = [name for name in parts if has(name)]
            if has(whole) and mixed:
                raise LoraFactorsError(f"LoKr adapter has both {whole} and {', '.join(mixed)}: two layouts of one "
                                       "Kronecker factor, and which one the trainer meant is unknown; the file is "
                                       "damaged. Re-export it.")
        check_matrix("LoKr", *((name, params.get(name)) for name in sorted(cls.param_names - {"alpha"})))
        _check_lokr(params)
        alpha = params.get("alpha")
        full1, full2 = has("lokr_w1"), has("lokr_w2")
        return cls(
            w1=params.get("lokr_w1"), w1_a=None if full1 else params["lokr_w1_a"],
            w1_b=None if full1 else params["lokr_w1_b"], w2=params.get("lokr_w2"),
            w2_a=None if full2 else params["lokr_w2_a"], w2_b=None if full2 else params["lokr_w2_b"],
            t2=None if full2 else params.get("lokr_t2"),
            alpha=None if alpha is None else scalar(alpha, "alpha", "LoKr"))

    @property
    def rank(self) -> int | None:
        """The rank of the decomposed factor (w2's when both are), ``None`` when both are full."""
        if self.w2 is None:
            return int(self.w2_b.shape[0])
        if self.w1 is None:
            return int(self.w1_b.shape[0])
        return None

    @property
    def scale(self) -> float:
        rank = self.rank
        return 1.0 if rank is None else alpha_scale(self.alpha, rank)

    @property
    def out_features(self) -> int:
        rows1 = (self.w1 if self.w1 is not None else self.w1_a).shape[0]
        if self.w2 is not None:
            rows2 = self.w2.shape[0]
        else:
            rows2 = self.w2_a.shape[1] if self.t2 is not None else self.w2_a.shape[0]
        return int(rows1 * rows2)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        w1 = lokr_w1(_opt(self.w1, weight), _opt(self.w1_a, weight), _opt(self.w1_b, weight))
        w2 = lokr_w2(_opt(self.w2, weight), _opt(self.w2_a, weight), _opt(self.w2_b, weight), _opt(self.t2, weight))
        return fit(lokr_delta(w1, w2, self.scale), weight.shape, "LoKr", self.where)

    def to(self, device: torch.device | str) -> "LokrAdapter":
        return to_device(self, device)
