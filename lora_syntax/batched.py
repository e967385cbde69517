"""Grouped writes: the modules of one shape re-weighted together instead of by one GEMM each.

For a group of G modules of one shape, dtype, device and term ranks, each with its original ``W0_g``
(out, in), concatenated fp32 factors ``U_g`` (out, R), ``D_g`` (R, in) and column weights ``c_g`` (R,
each term's weight times its scale, over its rank's columns):

    W_g = round( W0_g + (U_g * c_g) @ D_g )        sum in fp32, one rounding, the original only read

Two ways compute it. On CUDA with Triton, one fused kernel per group (:mod:`lora_syntax.triton_fuse`)
reads each original once and writes each target once. Elsewhere, one batched product ``bmm`` for the
group, the originals added by one foreach call and the sums rounded into the targets by another. Either
way a change point costs a handful of calls per group instead of several per module, which is what it
costs on a GPU where the arithmetic itself is cheap. A group is built once per stack: its factors are
stacked once (or used in place when they already lie side by side, as :mod:`lora_syntax.factors` packs
them) and each module's factors become views of the stack, so nothing is held twice. The torch path
builds at most :data:`CHUNK_BYTES` of fp32 product at a time, so its extra memory stays bounded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import triton_fuse

# Largest fp32 product the torch path builds at once (bytes); larger groups are split.
CHUNK_BYTES = 256 << 20
# Fewest modules worth a torch group: below this the per-module path is as cheap. The fused kernel
# takes groups of any size (one launch against a GEMM and an add per module).
MIN_GROUP = 4


@dataclass(slots=True)
class Member:
    """One module of a group: its original and target as 2-D views, its fp32 factors and term scales.
    Not changed once made (not frozen only because a frozen dataclass is made 3x slower, once per module)."""

    original: torch.Tensor          # (out, in) view of W0
    target: torch.Tensor            # (out, in) view of the tensor receiving the fused weight
    up: torch.Tensor                # (out, R) fp32, or the files' half dtype on an accelerator
    down: torch.Tensor              # (R, in) likewise
    ranks: tuple[int, ...]          # rank of each low-rank term, in order
    scales: tuple[float, ...]       # scale of each low-rank term not folded into ``up``
    exact: bool = False             # the factors are exact in TF32 (the kernel may use one TF32 pass)


@dataclass
class Group:
    """Modules sharing one write (built once per stack by :func:`build_groups`)."""

    members: list[Member]
    ups: torch.Tensor               # (G, out, R)
    downs: torch.Tensor             # (G, R, in)
    scales: torch.Tensor            # (G, T) term scales, on the CPU
    fused: bool = False             # written by the Triton kernel
    exact: bool = False             # every member's factors are exact in TF32
    originals: torch.Tensor | None = None   # kernel: the members' originals as offsets from the first
    targets: torch.Tensor | None = None     # kernel: the members' targets, likewise

    @property
    def device(self) -> torch.device:
        return self.ups.device

    def columns(self, weights: Sequence[Sequence[float]], device: bool = True) -> torch.Tensor:
        """(G, R) fp32 column weights for each member's term ``weights``, on the device (``device=False``:
        on the CPU, for :func:`upload`)."""
        ranks = self.members[0].ranks
        terms = torch.tensor(weights, dtype=torch.float32).reshape(len(self.members), len(ranks)) * self.scales
        columns = terms.repeat_interleave(torch.tensor(ranks), dim=1)
        return columns.to(self.device) if device else columns

    def selection(self, indices: Sequence[int] | None = None, device: bool = True) -> torch.Tensor:
        """Member indices (all when ``None``) as an int64 tensor on the device (or the CPU)."""
        chosen = torch.tensor(list(range(len(self.members)) if indices is None else indices), dtype=torch.int64)
        return chosen.to(self.device) if device else chosen


def upload(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The CPU ``tensors`` on ``device`` in one copy per dtype (views of it). A copy from pageable memory
    waits for the work queued on the device; one copy instead of one per group keeps that to one wait."""
    moved: list[torch.Tensor | None] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for dtype, indices in by_dtype.items():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices]).to(device)
        offset = 0
        for i in indices:
            moved[i] = flat[offset:offset + tensors[i].numel()].view(tensors[i].shape)
            offset += tensors[i].numel()
    return moved


def group_key(member: Member) -> tuple:
    """Members with one key can share a write."""
    o = member.original
    return (tuple(o.shape), member.ranks, o.dtype, member.target.dtype, o.device)


def build_groups(members: Sequence[Member], *, fused: bool = False) -> tuple[list[Group], list[int]]:
    """Groups of members of one key, and the indices of the members left to the per-module path.

    ``fused``: groups are written by the Triton kernel (any size, no product held); members whose
    tensors it cannot address are left out. Otherwise groups have at least :data:`MIN_GROUP` members
    (:func:`write` bounds their product to :data:`CHUNK_BYTES` at a time)."""
    by_key: dict[tuple, list[int]] = {}
    rest = []
    for index, member in enumerate(members):
        if fused and not triton_fuse.fits(member.original, member.target):
            rest.append(index)
        else:
            by_key.setdefault(group_key(member), []).append(index)
    groups, addresses = [], []
    for indices in by_key.values():
        if not fused and len(indices) < MIN_GROUP:
            rest.extend(indices)
            continue
        chosen = [members[i] for i in indices]
        group = Group(chosen, stacked([m.up for m in chosen]), stacked([m.down for m in chosen]),
                      torch.tensor([m.scales for m in chosen], dtype=torch.float32))
        if fused:
            group.fused, group.exact = True, all(m.exact for m in chosen)
            base = chosen[0].original
            addresses += [triton_fuse.offsets([m.original for m in chosen], base),
                          triton_fuse.offsets([m.target for m in chosen], base)]
        groups.append(group)
    if addresses:   # every group's offsets in one copy
        moved = iter(upload(addresses, groups[0].device))
        for group in groups:
            group.originals, group.targets = next(moved), next(moved)
    return groups, rest


def stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, without a copy when they already lie side by side in one storage."""
    first, last = tensors[0], tensors[-1]
    step = first.numel() * first.element_size()
    start = first.data_ptr()
    side_by_side = (first.is_contiguous() and last.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
                    and all(t.data_ptr() == start + i * step and t.shape == first.shape and t.dtype == first.dtype
                            and t.is_contiguous() for i, t in enumerate(tensors)))
    if not side_by_side:
        return torch.stack(list(tensors))
    return first.as_strided((len(tensors), *first.shape), (first.numel(), *first.stride()), first.storage_offset())


def write(group: Group, columns: torch.Tensor, select: Sequence[int] | None = None,
          selection: torch.Tensor | None = None) -> None:
    """``target = round(W0 + (U * c) @ D)`` for the group's members (or those at ``select``; ``selection``
    is the same indices already on the device), given their (G, R) column weights. If the kernel fails,
    it is turned off for the process and this write (and every later one) takes the torch path, in
    chunks of at most :data:`CHUNK_BYTES` of product."""
    if group.fused and triton_fuse.disabled is None:
        try:
            triton_fuse.fuse_group(group.members[0].original, group.originals, group.targets, group.ups,
                                   group.downs, columns, group.selection(select) if selection is None else selection,
                                   ranks=group.members[0].ranks, exact=group.exact)
            return
        except Exception as error:   # a Triton or driver failure: every group falls back, once warned
            warnings.warn(triton_fuse.disable(error), RuntimeWarning, stacklevel=2)
    group.fused = False
    chosen = list(range(len(group.members))) if select is None else list(select)
    rows, cols = group.members[0].original.shape
    per_chunk = max(1, CHUNK_BYTES // (rows * cols * 4))
    for start in range(0, len(chosen), per_chunk):
        part = chosen[start:start + per_chunk]
        ups, downs, part_columns = group.ups, group.downs, columns
        if len(part) < len(group.members):
            index = torch.tensor(part, dtype=torch.int64).to(group.device)
            ups, downs, part_columns = ups.index_select(0, index), downs.index_select(0, index), columns.index_select(0, index)
        members = [group.members[i] for i in part]
        downs = downs if downs.dtype == torch.float32 else downs.float()   # half factors: widened per product
        sums = list(torch.bmm(ups * part_columns.unsqueeze(1), downs).unbind(0))   # ups * columns: fp32
        torch._foreach_add_(sums, [m.original for m in members])
        torch._foreach_copy_([m.target for m in members], sums)
