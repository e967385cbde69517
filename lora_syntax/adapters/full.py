"""Full / diff (LyCORIS ``full``): the file stores the weight change itself.

    ΔW = diff          Δb = diff_b          (no scale; alpha does not apply)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..errors import LoraFactorsError
from ._common import ShapesRepr, f32, fit, to_device
from .base import Adapter


def full_delta(diff: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """fp32 ``diff`` (zeros when the file changes only the bias)."""
    return torch.zeros(shape) if diff is None else diff.float()


@dataclass(frozen=True, eq=False, repr=False)
class FullAdapter(ShapesRepr, Adapter):
    """A stored weight difference ``diff`` and optional bias difference ``diff_b``."""

    kind: ClassVar[str] = "full"
    param_names: ClassVar[frozenset[str]] = frozenset({"diff", "diff_b"})

    diff: torch.Tensor | None
    diff_b: torch.Tensor | None = None
    where: str = field(default="", compare=False)

    @classmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        return "diff" in params or "diff_b" in params

    @classmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "FullAdapter":
        for name in ("diff", "diff_b"):
            value = params.get(name)
            if value is not None and value.dim() == 0:
                raise LoraFactorsError(f"full adapter's {name} is a scalar (one number, shape ()), not the "
                                       "weight change it stores; the file is damaged.")
        return cls(diff=params.get("diff"), diff_b=params.get("diff_b"))

    @property
    def out_features(self) -> int | None:
        source = self.diff if self.diff is not None else self.diff_b
        return int(source.shape[0])

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        if self.diff is None:
            return torch.zeros(weight.shape, device=weight.device)
        # the stored change is the weight's own shape: only trailing 1x1 axes may differ (conv 1x1 <-> linear)
        return fit(full_delta(f32(self.diff, weight), weight.shape), weight.shape, "full", self.where, flatten=False)

    def bias_delta(self) -> torch.Tensor | None:
        return None if self.diff_b is None else self.diff_b.float()

    def rows(self, start: int, stop: int) -> "FullAdapter":
        return replace(self, diff=None if self.diff is None else self.diff[start:stop],
                       diff_b=None if self.diff_b is None else self.diff_b[start:stop])

    def to(self, device: torch.device | str) -> "FullAdapter":
        return to_device(self, device)
