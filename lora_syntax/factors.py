"""Low-rank factors of a module's stack, prepared once per stack for the patch engine's GEMMs.

For the plain low-rank terms i of one module (weights m_i, scales s_i = alpha_i / r_i):

    U = [s_1 * up_1 | s_2 * up_2 | ...]   (out, sum r)      D = [down_1; down_2; ...]   (sum r, in*k)
    sum_i m_i * delta_i = (U * m) @ D     (m spread over each term's r columns)

Each factor is written once, into memory of the engine's own (never a view of the file's map,
:func:`owned_copy`): a module with a single plain fp32 LoRA keeps a copy of ``up`` and ``down`` (its scale
goes into the GEMM's ``alpha`` through ``low_scales``); several are written straight into their slices. Factors bound for an accelerator are packed per device and moved in one copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .adapters.base import Adapter
from .adapters.lora import LoraAdapter
from .transfer import copy_into

if TYPE_CHECKING:
    from .patcher import _Slot as Slot

# Devices whose factors are prepared in place from the file's tensors; factors for any other device are
# copied there raw (:func:`_move`).
HOST_DEVICES = ("cpu", "meta")
# File dtypes an accelerator keeps its factors in when every factor bound for it has that one dtype: half
# the memory and half the factor reads of fp32, and exact in TF32 (the fused kernel multiplies them in
# fp32 registers; the torch paths widen them per product).
HALF_DTYPES = (torch.float16, torch.bfloat16)


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


def owned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` copied into memory of the engine's own. A file's tensors are views of its memory map
    (:mod:`io`): a file rewritten in place while it is in use (a trainer saving an epoch over it) turns
    them into pages that no longer exist, and the next read kills the whole process (SIGBUS). What the
    engine keeps for a run's later writes must therefore not be such a view."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _owned_adapter(adapter: Adapter) -> Adapter:
    """``adapter`` with every tensor (and nested adapter) copied by :func:`owned_copy`."""
    changes = {}
    for spec in dataclasses.fields(adapter):  # adapters are frozen dataclasses
        value = getattr(adapter, spec.name)
        if isinstance(value, torch.Tensor):
            changes[spec.name] = owned_copy(value)
        elif isinstance(value, Adapter) and dataclasses.is_dataclass(value):
            changes[spec.name] = _owned_adapter(value)
    return dataclasses.replace(adapter, **changes) if changes else adapter


def _tensor_bytes(adapter: Adapter) -> int:
    return sum(value.numel() * value.element_size() if isinstance(value, torch.Tensor) else _tensor_bytes(value)
               for value in (getattr(adapter, spec.name) for spec in dataclasses.fields(adapter))
               if isinstance(value, torch.Tensor) or isinstance(value, Adapter))


def _owned_adapters(slot: Slot, low_terms: set[int]) -> tuple[Adapter, ...]:
    """The adapters a write reads from (by term): those outside the GEMM, or with a bias change, copied
    (:func:`owned_copy`); the GEMM's own read only the prepared factors, which are copies already."""
    return tuple(term.adapter if index in low_terms and term.adapter.bias_delta() is None
                 else _owned_adapter(term.adapter) for index, term in enumerate(slot.stack.terms))


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
    """Give each slot its concatenated factors ``U`` (out, sum r) and ``D`` (sum r, in*k), once.

    On the CPU every factor is written once: several terms go straight into their slice of ``U``/``D``
    (scales folded into ``U``); a single fp32 term is copied as it is. Terms outside the GEMM get copies
    of their adapters (``slot.adapters``). For an accelerator the
    file's tensors are copied to it as they are (no CPU pass over them: a host copy of a gigabyte of
    factors costs more than the copies) into one device tensor per device (in the files' half dtype
    when they share one, else fp32), the terms' scales kept apart
    in ``low_scales`` (the fused kernel applies them in fp32), and laid out so that the modules of one
    shape can be written as a group without stacking their factors again.
    """
    packed: dict[torch.device, list[tuple[Slot, list]]] = {}
    for slot in slots:
        terms = _low_rank_terms(slot)
        device = slot.device
        slot.adapters = _owned_adapters(slot, {t[0] for t in terms})
        slot.extra_bytes = sum(_tensor_bytes(adapter) for adapter, term in zip(slot.adapters, slot.stack.terms)
                               if adapter is not term.adapter)
        slot.low_terms = tuple(t[0] for t in terms)
        slot.low_ranks = tuple(t[1].shape[1] for t in terms)
        slot.other_terms = tuple(i for i in range(len(slot.stack.terms)) if i not in slot.low_terms)
        slot.low_scales = (1.0,) * len(terms)
        slot.low_exact = False
        slot.cached = True
        if not terms:
            continue
        if device.type not in HOST_DEVICES:
            packed.setdefault(device, []).append((slot, terms))
            continue
        _, up, down, scale = terms[0]
        if len(terms) == 1 and up.dtype == down.dtype == torch.float32 and up.device == down.device == device:
            slot.low_up, slot.low_down, slot.low_scales = owned_copy(up), owned_copy(down), (scale,)
        else:
            rank = sum(slot.low_ranks)
            slot.low_up = torch.empty(up.shape[0], rank, dtype=torch.float32)
            slot.low_down = torch.empty(rank, down.shape[1], dtype=torch.float32)
            start = 0
            for _, up, down, scale in terms:   # converted while copied, then scaled in place: no temporary
                stop = start + up.shape[1]
                part = slot.low_up[:, start:stop].copy_(up)
                if scale != 1.0:
                    part.mul_(scale)
                slot.low_down[start:stop].copy_(down)
                start = stop
        slot.extra_bytes += (slot.low_up.numel() + slot.low_down.numel()) * 4
    for device, items in packed.items():
        _move(device, items)


def _move(device: torch.device, items: list[tuple[Slot, list]]) -> None:
    """Copy the items' raw factors into one tensor on ``device``: per run of modules of one shape and
    ranks, every ``U`` then every ``D`` (a group's stacks are then views of it, :func:`batched.stacked`).
    Its dtype is the factors' own when all share one of :data:`HALF_DTYPES` (fp16 or bf16 files, the
    usual case), else fp32. Factors that are views of one file's map cross to the device as a few spans
    of it (:mod:`transfer`)."""
    runs: dict[tuple, list[tuple[Slot, list]]] = {}
    for slot, terms in items:
        runs.setdefault((tuple(slot.module.weight.shape), slot.low_ranks), []).append((slot, terms))
    sizes = [terms[0][1].shape[0] * sum(slot.low_ranks) + sum(slot.low_ranks) * terms[0][2].shape[1]
             for slot, terms in items]
    dtypes = {t.dtype for _, terms in items for _, up, down, _ in terms for t in (up, down)}
    kept = next(iter(dtypes)) if len(dtypes) == 1 and next(iter(dtypes)) in HALF_DTYPES else torch.float32
    moved = torch.empty(sum(sizes), dtype=kept, device=device)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []   # (place in the moved tensor, file tensor)
    offset = 0
    for run in runs.values():
        for part in (1, 2):   # every U of the run, then every D
            for slot, terms in run:
                rank = sum(slot.low_ranks)
                rows = terms[0][1].shape[0] if part == 1 else rank
                cols = rank if part == 1 else terms[0][2].shape[1]
                view = moved.as_strided((rows, cols), (cols, 1), offset)   # as_strided: cheaper than slicing
                start = 0
                for _, up, down, _ in terms:
                    width = up.shape[1]
                    if part == 1:   # columns start:start+width of U
                        pairs.append((moved.as_strided((rows, width), (cols, 1), offset + start), up))
                    else:           # rows start:start+width of D
                        pairs.append((moved.as_strided((width, cols), (cols, 1), offset + start * cols), down))
                    start += width
                offset += rows * cols
                if part == 1:
                    slot.low_up = view
                else:
                    slot.low_down = view
    copy_into(pairs, device)
    exact = kept in HALF_DTYPES or _tf32_exact(moved)   # half values are exact in TF32 by their format
    for slot, terms in items:
        slot.low_scales = tuple(t[3] for t in terms)
        slot.low_exact = exact
        slot.extra_bytes += (slot.low_up.numel() + slot.low_down.numel()) * moved.element_size()


def _tf32_exact(values: torch.Tensor) -> bool:
    """Whether every fp32 value is exact in TF32 (10-bit mantissa: the low 13 bits are zero), as factors
    from fp16 or bf16 files are: the matrix units' one-pass TF32 products are then exact."""
    return not bool((values.view(torch.int32) & 0x1FFF).any())
