"""Low-rank factors of a module's stack, prepared once per stack for the patch engine's GEMMs.

For the plain low-rank terms i of one module (weights m_i, scales s_i = alpha_i / r_i):

    U = [s_1 * up_1 | s_2 * up_2 | ...]   (out, sum r)      D = [down_1; down_2; ...]   (sum r, in*k)
    sum_i m_i * delta_i = (U * m) @ D     (m spread over each term's r columns)

Each factor is written once: a module with a single plain LoRA keeps the file's fp32 tensors (``U`` is
``up`` itself and its scale goes into the GEMM's ``alpha`` through ``low_scales``); several are written
straight into their slices. Factors bound for an accelerator are packed per device and moved in one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .adapters.base import Adapter
from .adapters.lora import LoraAdapter

if TYPE_CHECKING:
    from .patcher import _Slot as Slot


def _plain_factors(adapter: Adapter, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(up, down, scale)`` 2-D factors of a low-rank term with ``delta = scale * up @ down``.

    A plain LoRA (no Tucker ``mid``) gives its own tensors, unscaled: no copy is made here, the scale
    goes into the GEMM's ``alpha`` (one term) or into the single write that concatenates several.
    """
    if isinstance(adapter, LoraAdapter) and adapter.mid is None:
        up, down = adapter.up, adapter.down
        if up.shape[0] * down[0].numel() == shape.numel():
            return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), adapter.scale
    factors = adapter.low_rank(shape)
    return None if factors is None else (factors[0], factors[1], 1.0)


def _low_rank_terms(slot: Slot) -> list[tuple[int, torch.Tensor, torch.Tensor, float]]:
    shape = slot.module.weight.shape
    found = []
    for index, term in enumerate(slot.stack.terms):
        if term.adapter.additive:
            factors = _plain_factors(term.adapter, shape)
            if factors is not None:
                found.append((index, *factors))
    return found


def prepare_factors(slots: Sequence[Slot]) -> None:
    """Give each slot its concatenated fp32 factors ``U`` (out, sum r) and ``D`` (sum r, in*k), once.

    Every factor is written once: several terms go straight into their slice of ``U``/``D`` (scales
    folded into ``U``); a single fp32 term on the module's device is used as it is (no copy). Factors
    bound for another device (CUDA) are packed into one host tensor per device and moved in one copy,
    instead of one small transfer per tensor per module, laid out so that the modules of one shape can
    be written as a group without stacking their factors again.
    """
    packed: dict[torch.device, list[tuple[Slot, torch.Tensor, torch.Tensor]]] = {}
    for slot in slots:
        terms = _low_rank_terms(slot)
        device = slot.module.weight.device
        slot.low_terms = tuple(t[0] for t in terms)
        slot.low_ranks = tuple(t[1].shape[1] for t in terms)
        slot.other_terms = tuple(i for i in range(len(slot.stack.terms)) if i not in slot.low_terms)
        slot.low_scales = (1.0,) * len(terms)
        slot.cached = True
        if not terms:
            continue
        _, up, down, scale = terms[0]
        if len(terms) == 1 and up.dtype == down.dtype == torch.float32 and up.device == down.device == device:
            slot.low_up, slot.low_down, slot.low_scales = up, down, (scale,)
        else:
            rank = sum(slot.low_ranks)
            slot.low_up = torch.empty(up.shape[0], rank, dtype=torch.float32)
            slot.low_down = torch.empty(rank, down.shape[1], dtype=torch.float32)
            start = 0
            for _, up, down, scale in terms:
                stop = start + up.shape[1]
                torch.mul(up.to("cpu", torch.float32), scale, out=slot.low_up[:, start:stop])
                slot.low_down[start:stop].copy_(down)
                start = stop
            if device.type not in ("cpu", "meta"):
                packed.setdefault(device, []).append((slot, slot.low_up, slot.low_down))
        slot.extra_bytes = (slot.low_up.numel() + slot.low_down.numel()) * 4
    for device, items in packed.items():
        # modules of one shape and ranks side by side, ups then downs: a group's stacks are then views
        # of this one tensor (batched.stacked), not copies
        runs: dict[tuple, list[tuple[Slot, torch.Tensor, torch.Tensor]]] = {}
        for item in items:
            runs.setdefault((tuple(item[0].module.weight.shape), item[0].low_ranks), []).append(item)
        order = [t for run in runs.values() for part in (1, 2) for t in (item[part] for item in run)]
        moved = torch.cat([t.reshape(-1) for t in order]).to(device)
        views, offset = [], 0
        for t in order:
            views.append(moved[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()
        at = 0
        for run in runs.values():
            for slot, _, _ in run:
                slot.low_up = views[at]
                at += 1
            for slot, _, _ in run:
                slot.low_down = views[at]
                at += 1
