"""BOFT (LyCORIS ``boft``): butterfly orthogonal fine-tuning, m stages of block rotations.

    R_i = Cayley(oft_blocks[i])      (oft_blocks (m, blocks, b, b); Q's norm over all stages ≤ alpha·out)
    stage i: rows permuted so that each block of b mixes rows 2^i·b/2 apart, rotated by m·R_i + (1 − m)·I,
             and permuted back
    patched(W, m) = rescale ⊙ stage_{m−1}(… stage_0(W))

The multiplier enters every stage, so the result is not linear in it: non-additive, and equal to
LyCORIS' ``get_merged_weight`` at any multiplier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from .oft import OftAdapter, cayley


def butterfly_permutation(rows: int, stage: int, block: int, device: torch.device) -> torch.Tensor:
    """Row order that groups, into consecutive blocks of ``block``, rows ``2**stage·block/2`` apart."""
    k = 2 ** stage * (block // 2)
    return torch.arange(rows, device=device).reshape(-1, 2, k).transpose(1, 2).flatten()


def boft_patched(weight: torch.Tensor, r: torch.Tensor, rescale: torch.Tensor | None,
                 multiplier: float) -> torch.Tensor:
    """fp32 weight after the butterfly stages ``r`` (stages, blocks, b, b) at ``multiplier``."""
    out = weight.float()
    stages, blocks, size, _ = r.shape
    eye = torch.eye(size, device=r.device)
    for i in range(stages):
        rot = multiplier * r[i] + (1 - multiplier) * eye
        perm = butterfly_permutation(out.shape[0], i, size, out.device)
        grouped = out[perm].reshape(blocks, size, *out.shape[1:])
        mixed = torch.einsum("b i j, b j ... -> b i ...", rot, grouped).reshape(out.shape)
        out = torch.empty_like(mixed)
        out[perm] = mixed
    return out if rescale is None else out * rescale.float().reshape(-1, *[1] * (out.dim() - 1))


@dataclass(frozen=True, eq=False, repr=False)
class BoftAdapter(OftAdapter):
    """Butterfly OFT: ``oft_blocks`` (stages, blocks, b, b)."""

    kind: ClassVar[str] = "boft"

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return "oft_blocks" in params and params["oft_blocks"].dim() == 4

    def patched(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        self._check(weight)
        r = cayley(self.blocks.to(weight.device), self.alpha * weight.shape[0])
        rescale = None if self.rescale is None else self.rescale.to(weight.device)
        return boft_patched(weight, r, rescale, multiplier)
