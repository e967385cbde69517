"""Grouped writes: the modules of one shape re-weighted by one batched product instead of one GEMM each.

For a group of G modules of one shape, dtype, device and term ranks, each with its original ``W0_g``
(out, in), concatenated fp32 factors ``U_g`` (out, R), ``D_g`` (R, in) and column weights ``s_g`` (R,
each term's weight times its scale, over its rank's columns):

    P    = bmm(U * s, D)                 fp32 (G, out, in): one product for the whole group
    P_g += W0_g                          the fp32 sum (one foreach call)
    W_g  = round(P_g)                    one rounding, into the module's buffer (one foreach copy)

The originals are only read, the sum is taken in fp32 and rounded once, exactly as on the per-module
path; what changes is the number of calls: a handful per group instead of several per module, which
is what a change point costs on a GPU where the arithmetic itself is cheap. A group is built once per
stack (factors stacked once; each module's factors become views of the stack, so nothing is held twice)
and holds at most :data:`CHUNK_BYTES` of product, so the extra memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Largest fp32 product built at once (bytes); larger groups are split.
CHUNK_BYTES = 256 << 20
# Fewest modules worth a group: below this the per-module path is as cheap.
MIN_GROUP = 4


@dataclass(frozen=True)
class Member:
    """One module of a group: its original and target as 2-D views, its fp32 factors and term scales."""

    original: torch.Tensor          # (out, in) view of W0
    target: torch.Tensor            # (out, in) view of the tensor receiving the fused weight
    up: torch.Tensor                # (out, R) fp32
    down: torch.Tensor              # (R, in) fp32
    ranks: tuple[int, ...]          # rank of each low-rank term, in order
    scales: tuple[float, ...]       # scale of each low-rank term not folded into ``up``


@dataclass
class Group:
    """Modules sharing one batched product (built once per stack by :func:`build_groups`)."""

    members: list[Member]
    ups: torch.Tensor               # (G, out, R)
    downs: torch.Tensor             # (G, R, in)
    scales: torch.Tensor            # (G, T) term scales, on the device
    repeats: torch.Tensor           # (T,) the ranks, to spread term weights over columns


def group_key(member: Member) -> tuple:
    """Members with one key can share a batched product."""
    o = member.original
    return (tuple(o.shape), member.ranks, o.dtype, member.target.dtype, o.device)


def build_groups(members: Sequence[Member]) -> tuple[list[Group], list[int]]:
    """Groups of at least :data:`MIN_GROUP` members (split to :data:`CHUNK_BYTES`), and the indices of the
    members left to the per-module path. Each grouped member's factors are stacked once."""
    by_key: dict[tuple, list[int]] = {}
    for index, member in enumerate(members):
        by_key.setdefault(group_key(member), []).append(index)
    groups, rest = [], []
    for indices in by_key.values():
        if len(indices) < MIN_GROUP:
            rest.extend(indices)
            continue
        rows, cols = members[indices[0]].original.shape
        per_chunk = max(1, CHUNK_BYTES // (rows * cols * 4))
        for start in range(0, len(indices), per_chunk):
            chunk = [members[i] for i in indices[start:start + per_chunk]]
            device = chunk[0].original.device
            groups.append(Group(chunk, torch.stack([m.up for m in chunk]), torch.stack([m.down for m in chunk]),
                                torch.tensor([m.scales for m in chunk], dtype=torch.float32).to(device),
                                torch.tensor(chunk[0].ranks).to(device)))
    return groups, rest


def write(group: Group, weights: Sequence[Sequence[float]], select: Sequence[int] | None = None) -> None:
    """``target = round(W0 + (U * s) @ D)`` for the group's members (or those at ``select``), given each
    member's low-rank term weights."""
    device = group.ups.device
    ups, downs, scales, members = group.ups, group.downs, group.scales, group.members
    if select is not None:
        index = torch.tensor(select, device=device)
        ups, downs, scales = ups.index_select(0, index), downs.index_select(0, index), scales.index_select(0, index)
        members = [members[i] for i in select]
    terms = torch.tensor(weights, dtype=torch.float32).to(device, non_blocking=True) * scales
    columns = terms.repeat_interleave(group.repeats, dim=1, output_size=ups.shape[2])   # (G, R), no sync
    sums = list(torch.bmm(ups * columns.unsqueeze(1), downs).unbind(0))
    torch._foreach_add_(sums, [m.original for m in members])
    torch._foreach_copy_([m.target for m in members], sums)
