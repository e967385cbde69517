"""Diag-OFT (LyCORIS ``diag-oft``, kohya ``networks.oft``): a block-diagonal rotation of the output rows.

    Q = B − Bᵀ per block, clamped to ‖Q‖ ≤ alpha·out when alpha > 0 (the constraint LyCORIS trains with)
    R = (I + Q)(I − Q)⁻¹                                      (Cayley: R is orthogonal)
    patched(W, m) = rescale ⊙ blockdiag(m·(R − I) + I)ᵀ · W   (rows in blocks of b; rescale optional)

Non-additive: like ComfyUI the rotation is applied, in tag order, to the weight as patched so far;
at any ``m`` it equals LyCORIS' ``get_merged_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import LoraShapeError
from ._common import ShapesRepr, f32, require, scalar, to_device
from .base import Adapter


def cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """fp32 orthogonal ``(I + Q)(I − Q)⁻¹`` for ``Q = B − Bᵀ``, Q's total norm clamped to ``constraint``."""
    b = blocks.float()
    q = b - b.transpose(-1, -2)
    if constraint > 0:
        norm = torch.linalg.vector_norm(q) + 1e-8
        q = torch.where(norm > constraint, q * (constraint / norm), q)
    eye = torch.eye(b.shape[-1], device=b.device)
    return (eye + q) @ torch.linalg.inv(eye - q)


def oft_patched(weight: torch.Tensor, r: torch.Tensor, rescale: torch.Tensor | None, multiplier: float) -> torch.Tensor:
    """fp32 ``rescale ⊙ blockdiag(m(R − I) + I)ᵀ W`` for rotations ``r`` (blocks, b, b)."""
    w = weight.float()
    blocks, size, _ = r.shape
    eye = torch.eye(size, device=r.device)
    rot = multiplier * (r - eye) + eye
    out = torch.einsum("k n m, k n ... -> k m ...", rot, w.reshape(blocks, size, *w.shape[1:]))
    out = out.reshape(w.shape)
    return out if rescale is None else out * rescale.float().reshape(-1, *[1] * (w.dim() - 1))


@dataclass(frozen=True, eq=False, repr=False)
class OftAdapter(ShapesRepr, Adapter):
    """Orthogonal fine-tuning with block-diagonal Cayley rotations ``oft_blocks`` (blocks, b, b)."""

    kind: ClassVar[str] = "oft"
    additive: ClassVar[bool] = False
    param_names: ClassVar[frozenset[str]] = frozenset({"oft_blocks", "rescale", "alpha"})

    blocks: torch.Tensor
    rescale: torch.Tensor | None = None
    alpha: float = 0.0
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return "oft_blocks" in params and params["oft_blocks"].dim() == 3

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "OftAdapter":
        (blocks,) = require(params, ("oft_blocks",), "OFT")
        alpha = params.get("alpha")
        return cls(blocks, params.get("rescale"), 0.0 if alpha is None else scalar(alpha, "alpha", "OFT"))

    def _check(self, weight: torch.Tensor) -> None:
        rows = self.blocks.shape[-3] * self.blocks.shape[-1]
        if weight.shape[0] != rows:
            raise LoraShapeError(f"{self.kind.upper()} adapter at {self.where or 'this module'} rotates {rows} "
                                 f"output rows, but the weight has shape {tuple(weight.shape)}.")

    def patched(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        self._check(weight)
        r = cayley(f32(self.blocks, weight), self.alpha * weight.shape[0])
        return oft_patched(weight, r, None if self.rescale is None else f32(self.rescale, weight), multiplier)

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.float()
        return self.patched(w, 1.0) - w

    def to(self, device: torch.device | str) -> "OftAdapter":
        return to_device(self, device)
