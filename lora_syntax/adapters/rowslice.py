"""Output rows ``start:stop`` of another adapter whose delta cannot be sliced factor-wise (LoKr).

    ΔW_rows = ΔW_inner[start:stop]        (bias likewise)

Only for types whose delta does not read the weight's values: the inner delta is computed at its
full fused shape ``(inner.out_features, *weight.shape[1:])`` and sliced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..errors import LoraFileError
from ._common import ShapesRepr, fit
from .base import Adapter


@dataclass(frozen=True, eq=False, repr=False)
class RowSlice(ShapesRepr, Adapter):
    """Rows ``start:stop`` of ``inner``'s delta (a fused qkv LoKr split onto separate q/k/v)."""

    kind: ClassVar[str] = "slice"
    param_names: ClassVar[frozenset[str]] = frozenset()

    inner: Adapter
    start: int
    stop: int
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", self.inner.kind)  # reports the inner type to `inspect`

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return False

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "RowSlice":
        raise LoraFileError("a row slice is built by registry.sliced(), not from file keys")

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        full_rows = getattr(self.inner, "out_features", None)
        if full_rows is None or not self.inner.additive:
            raise LoraFileError(f"{self.inner.kind} adapter at {self.where or 'this module'} cannot be split "
                                "across fused output rows.")
        stand_in = torch.empty((full_rows, *weight.shape[1:]), device=weight.device)
        full = self.inner.delta(stand_in)[self.start:self.stop]
        return fit(full, weight.shape, self.inner.kind, self.where)

    def bias_delta(self) -> torch.Tensor | None:
        bias = self.inner.bias_delta()
        return None if bias is None else bias[self.start:self.stop]

    @property
    def rank(self) -> int | None:
        return self.inner.rank

    def truncated(self, rank: int) -> "RowSlice":
        return replace(self, inner=self.inner.truncated(rank))

    def to(self, device: torch.device | str) -> "RowSlice":
        return replace(self, inner=self.inner.to(device))
