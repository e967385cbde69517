"""Grouped writes: the modules of one shape re-weighted by one batched product instead of one GEMM each.

For a group of G modules of one shape, dtype and device, each with its original ``W0_g`` (out, in),
its concatenated fp32 factors ``U_g`` (out, R), ``D_g`` (R, in) and its column weights ``s_g`` (R):

    P    = bmm(U * s, D)                 fp32 (G, out, in): one product for the whole group
    P_g += W0_g                          the fp32 sum (one foreach call)
    W_g  = round(P_g)                    one rounding, into the module's buffer (one foreach copy)

The originals are only read, the sum is taken in fp32 and rounded once, exactly as on the per-module
path; what changes is the number of calls: a handful per group instead of several per module, which
is what a change point costs on a GPU where the arithmetic itself is cheap. ``P`` is built in chunks
of at most :data:`CHUNK_BYTES`, so the extra memory stays bounded.
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
class Job:
    """One module to write: where its original is, where the result goes, its factors and column weights."""

    original: torch.Tensor          # (out, in) view of W0
    target: torch.Tensor            # (out, in) view of the tensor receiving the fused weight
    up: torch.Tensor                # (out, R) fp32
    down: torch.Tensor              # (R, in) fp32
    columns: tuple[float, ...]      # the weight of each of the R columns of ``up`` (scale included)


def group_key(job: Job) -> tuple:
    """Jobs with one key can share a batched product."""
    return (tuple(job.original.shape), job.up.shape[1], job.original.dtype, job.target.dtype, job.original.device)


def write_groups(jobs: Sequence[Job]) -> list[Job]:
    """Write every job that belongs to a group of at least :data:`MIN_GROUP`; return the others."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(group_key(job), []).append(job)
    rest = []
    for members in groups.values():
        if len(members) < MIN_GROUP:
            rest.extend(members)
            continue
        rows, cols = members[0].original.shape
        per_chunk = max(1, CHUNK_BYTES // (rows * cols * 4))
        for start in range(0, len(members), per_chunk):
            write_chunk(members[start:start + per_chunk])
    return rest


def write_chunk(jobs: Sequence[Job]) -> None:
    """Fuse ``jobs`` (one group key) with one batched product: ``target = round(W0 + (U * s) @ D)``."""
    device = jobs[0].original.device
    ups = torch.stack([job.up for job in jobs])
    columns = torch.tensor([job.columns for job in jobs], dtype=torch.float32).to(device, non_blocking=True)
    product = torch.bmm(ups.mul_(columns.unsqueeze(1)), torch.stack([job.down for job in jobs]))
    sums = list(product.unbind(0))
    torch._foreach_add_(sums, [job.original for job in jobs])
    torch._foreach_copy_([job.target for job in jobs], sums)
