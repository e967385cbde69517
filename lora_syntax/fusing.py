"""One module's fused weight from its original and its stack's factors (the per-module write path).

The formula is the patcher's (:mod:`lora_syntax.patcher`): the plain low-rank terms as one GEMM of rank
sum(r) over the slot's concatenated factors, other additive terms added in fp32, then the non-additive
adapters in tag order; the sum is fp32 and rounded once by the caller (or straight into ``into``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .factors import prepare_factors

if TYPE_CHECKING:
    from .patcher import _Slot


@functools.lru_cache(maxsize=256)
def _rank_scale(weights: tuple[float, ...], ranks: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Each entry's weight repeated over its rank's columns of the concatenated up-factor (cached: most
    modules of a stack share their weights, and building a small tensor costs more than the lookup)."""
    return torch.tensor([w for w, r in zip(weights, ranks) for _ in range(r)], device=device, dtype=torch.float32)


def low_rank_into(w0: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: float, into: torch.Tensor,
                  half_by_add: bool | None = None) -> None:
    """``into = round(W0 + alpha * up @ down)``: 2-D tensors, ``W0`` and ``into`` of one dtype, sum in fp32.

    fp32: one ``addmm``. fp16/bf16, two ways that both sum in fp32 and round once: on CUDA the fp32
    product, then one mixed-dtype ``add`` that rounds on its way into ``into`` (12 bytes moved per weight
    instead of 20); on the CPU, where that cast-on-write ``add`` is slow, ``W0`` to fp32, an in-place
    ``addmm_`` and one copy. ``half_by_add`` forces one of the two (tests).
    """
    if w0.dtype == torch.float32:
        torch.addmm(w0, up, down, alpha=alpha, out=into)
        return
    if half_by_add is None:
        half_by_add = into.device.type == "cuda"
    if half_by_add:
        torch.add(w0, torch.mm(up, down), alpha=alpha, out=into)
    else:
        into.copy_(w0.float().addmm_(up, down, alpha=alpha))


def _fp32(factor: torch.Tensor) -> torch.Tensor:
    """A factor as fp32: an accelerator may keep a stack's factors in the files' half dtype, and a product
    of half tensors would be rounded to half."""
    return factor if factor.dtype == torch.float32 else factor.float()


def _scaled_up(slot: _Slot, low: tuple[float, ...]) -> tuple[torch.Tensor, float]:
    """The concatenated fp32 up-factor and GEMM alpha for the low-rank terms' weights ``low``."""
    scaled = tuple(m * s for m, s in zip(low, slot.low_scales))
    if scaled.count(scaled[0]) == len(scaled):  # one weight for all: fold it into alpha, no scaled copy of U
        return _fp32(slot.low_up), scaled[0]
    return slot.low_up * _rank_scale(scaled, slot.low_ranks, slot.low_up.device), 1.0   # fp32 by promotion


def fuse(original: torch.Tensor, slot: _Slot, weights: Sequence[float],
         into: torch.Tensor | None = None) -> torch.Tensor | None:
    """fp32 fused weight of ``slot`` at ``weights`` from the ``original`` tensor (the formula above).

    ``into`` (a contiguous tensor of the original's dtype and device) lets a pure low-rank stack be
    written straight into it (:func:`low_rank_into`); the function then returns ``None``.
    """
    if not slot.cached:
        prepare_factors([slot])
    shape = original.shape
    low = tuple(weights) if not slot.other_terms else tuple(weights[i] for i in slot.low_terms)
    others = any(weights[i] != 0.0 for i in slot.other_terms)
    fused = None
    if into is not None and not others and any(low):
        up, alpha = _scaled_up(slot, low)
        rows = shape[0]
        low_rank_into(original.reshape(rows, -1), up, _fp32(slot.low_down), alpha, into.view(rows, -1))
        return None
    w0 = original.float()
    if any(low):
        up, alpha = _scaled_up(slot, low)
        fused = torch.addmm(w0.reshape(shape[0], -1), up, _fp32(slot.low_down), alpha=alpha).reshape(shape)
    if not others:
        return w0.clone() if fused is None else fused
    fused = w0.clone() if fused is None else fused
    for index in slot.other_terms:
        adapter, m = slot.adapters[index], weights[index]
        if m != 0.0 and adapter.additive:
            fused = fused + m * adapter.delta(w0).to(fused.device, torch.float32)
    for adapter, m in zip(slot.adapters, weights):
        if not adapter.additive and m != 0.0:
            fused = adapter.patched(fused, m).to(torch.float32)
    return fused
