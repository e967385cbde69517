"""The contract every adapter type fulfils.

An adapter is one module's weight change taken from one LoRA file, at multiplier 1.
Deltas are computed in fp32; the patch engine sums the additive ones of a module,
scales each by its per-step weight and rounds once into the module's dtype.

    additive types:      W' = W + sum_i m_i * delta_i(W)
    non-additive types:  W' = adapter.patched(W, m)   (DoRA, OFT, ...: applied in tag order)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch


class Adapter(ABC):
    """One module's change from one LoRA file. Subclasses are small frozen dataclasses."""

    kind: ClassVar[str]            # "lora", "loha", "lokr", "full", "ia3", "norm", "glora", "oft", "dora"...
    additive: ClassVar[bool] = True
    param_names: ClassVar[frozenset[str]]  # every normalised parameter name this type may read

    @classmethod
    @abstractmethod
    def claims(cls, params: Mapping[str, torch.Tensor]) -> bool:
        """True when these normalised parameter names are this type's signature."""

    @classmethod
    @abstractmethod
    def from_params(cls, params: Mapping[str, torch.Tensor]) -> "Adapter":
        """Build from normalised parameter names (``lora_up.weight``, ``hada_w1_a``, ``alpha``...)."""

    @abstractmethod
    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """fp32 change of ``weight`` at multiplier 1 (alpha/rank scale included), shaped like ``weight``."""

    def bias_delta(self) -> torch.Tensor | None:
        """fp32 change of the module's bias at multiplier 1, if the type carries one."""
        return None

    def patched(self, weight: torch.Tensor, multiplier: float) -> torch.Tensor:
        """fp32 weight after applying this adapter at ``multiplier`` (non-additive types override)."""
        w = weight.float()
        return w + multiplier * self.delta(w)

    def check_fits(self, shape: torch.Size | tuple[int, ...]) -> torch.Size:
        """The shape of this adapter's change of a weight of ``shape``; a :class:`LoraShapeError` (or a
        ``RuntimeError`` from the arithmetic) when it does not fit. Computed on ``meta`` tensors by default;
        types whose shape is plain arithmetic override it, since loading checks every module."""
        return self.to("meta").delta(torch.empty(shape, device="meta")).shape

    def low_rank(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up, down)`` fp32 matrices with ``(up @ down).reshape(shape) == delta``, scale folded
        into ``up``; ``None`` when the type has no plain low-rank form (the engine then uses ``delta``).
        Lets the engine apply a whole stack as one GEMM of rank sum(r)."""
        return None

    @property
    def rank(self) -> int | None:
        """The adapter's rank, when it has one (for ``dyn=`` and ``inspect``)."""
        return None

    def truncated(self, rank: int) -> "Adapter":
        """This adapter limited to its first ``rank`` components (DyLoRA / ``dyn=``); types without
        a rank return themselves."""
        return self

    def to(self, device: torch.device | str) -> "Adapter":
        """A copy whose tensors live on ``device`` (dtype unchanged)."""
        return self
