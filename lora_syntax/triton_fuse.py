"""One fused kernel per group on CUDA: each member's weight re-weighted in one pass over it.

For a group of modules of one shape (:mod:`lora_syntax.batched`), member ``g`` gets

    target_g = round( W0_g + (U_g * c_g) @ D_g )        c_g: the column weights (term weight x scale)

in one Triton kernel whose program reads a tile of ``W0_g`` once, builds the same tile of the low-rank
product in fp32 registers and writes the rounded sum once into ``target_g``. The batched-product path
materialises the fp32 product (and reads it twice more); here the only traffic is the weights read and
written once plus the small factors, which is the floor of a change point. The sum is fp32 and rounded
once, as everywhere in the engine. fp16/bf16 weights use the matrix units in three-pass TF32 (``tf32x3``:
each fp32 operand split in two, error near fp32's, far under the half-precision rounding that follows),
or one TF32 pass where the factors are exact in TF32 (fp16/bf16 files) and each rank block's weight is
applied to its fp32 product; factors kept in fp16 or bf16 then go into the matrix units as they are (the
same exact products, summed in fp32, at half the registers). fp32 weights use plain fp32 FMAs (``ieee``),
so fp32 models see fp32 arithmetic.

Members are addressed through device arrays of their tensors' offsets from one base tensor, built once
per group, so one launch covers tensors the model allocated separately, with vector-wide accesses. Without Triton (or off CUDA) :func:`available`
is false and the engine keeps the batched-product path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

try:  # an optional accelerator path: CPU installs and hosts without Triton keep the torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

# Tile of the output each program writes; the rank is consumed BLOCK_K columns at a time. The kernel is
# bound by reading and writing the weights: tiles big enough that the factors, re-read from L2 by every
# tile of a row or column, cost less than the weights; two stages are enough for ranks of a few dozen.
BLOCK_M, BLOCK_N, BLOCK_K, WARPS, STAGES = 128, 64, 32, 4, 2
# Address alignment the kernel needs of every original and target (bytes): one vector access.
ALIGNMENT = 16
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Why the kernel was turned off in this process (it failed once: the engine fell back to batched products).
disabled: str | None = None


def available(device: torch.device) -> bool:
    """Whether the fused kernel can write on ``device``: Triton is installed and the device is CUDA, or
    Triton's interpreter is on (``TRITON_INTERPRET=1``: the tests run the kernel on the CPU)."""
    if triton is None or disabled is not None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:
    _TRITON_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}

    @triton.jit
    def _fuse_group_kernel(base, originals, targets, ups, downs, columns, selection, rows, cols, rank,
                           OUT: tl.constexpr, VECTOR: tl.constexpr, PRECISION: tl.constexpr,
                           BLOCKWISE: tl.constexpr, NATIVE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                           BK: tl.constexpr):
        member = tl.load(selection + tl.program_id(1))
        tile = tl.program_id(0)
        tiles_n = tl.cdiv(cols, BN)
        rm = (tile // tiles_n) * BM + tl.arange(0, BM)
        rn = (tile % tiles_n) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        up_base = ups + member * rows * rank
        down_base = downs + member * rank * cols
        column_base = columns + member * rank
        # members are element offsets from ``base``, each a whole number of ALIGNMENT-byte vectors (``fits``):
        # saying so lets every access be one vector wide. W0 is read before the product so that its
        # latency overlaps the matrix work.
        original = base + tl.multiple_of(tl.load(originals + member), VECTOR)
        target = base + tl.multiple_of(tl.load(targets + member), VECTOR)
        offsets = rm[:, None].to(tl.int64) * cols + rn[None, :]
        inside = (rm[:, None] < rows) & (rn[None, :] < cols)
        w0 = tl.load(original + offsets, mask=inside, other=0.0)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in tl.range(0, rank, BK):
            kk = k0 + rk
            u = tl.load(up_base + rm[:, None] * rank + kk[None, :],
                        mask=(rm[:, None] < rows) & (kk[None, :] < rank), other=0.0)
            d = tl.load(down_base + kk[:, None] * cols + rn[None, :],
                        mask=(kk[:, None] < rank) & (rn[None, :] < cols), other=0.0)
            if not NATIVE:   # half factors multiplied as they are: exact products, summed in fp32
                u = u.to(tl.float32)
                d = d.to(tl.float32)
            if BLOCKWISE:   # the block lies in one term: its weight scales the block's fp32 product
                acc += tl.dot(u, d, input_precision=PRECISION) * tl.load(column_base + k0)
            else:
                c = tl.load(column_base + kk, mask=kk < rank, other=0.0)
                acc = tl.dot(u * c[None, :], d, acc, input_precision=PRECISION)
        fused = w0.to(tl.float32) + acc
        if OUT == tl.float32:
            tl.store(target + offsets, fused, mask=inside)
        else:   # round to nearest even, as torch does
            tl.store(target + offsets, fused.to(OUT, fp_downcast_rounding="rtne"), mask=inside)



def offsets(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Where each tensor starts, in elements from ``base`` (same dtype and device), as an int64 CPU tensor
    (moved to the device by the caller): what the kernel addresses the members through."""
    size, start = base.element_size(), base.data_ptr()
    return torch.tensor([(t.data_ptr() - start) // size for t in tensors], dtype=torch.int64)


def fits(original: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether a member can be written by the kernel: 2-D contiguous views of one supported dtype,
    aligned for vector access."""
    return (original.dtype == target.dtype and original.dtype in _DTYPES and original.is_contiguous()
            and target.is_contiguous() and original.data_ptr() % ALIGNMENT == 0
            and target.data_ptr() % ALIGNMENT == 0)


def fuse_group(base: torch.Tensor, originals: torch.Tensor, targets: torch.Tensor, ups: torch.Tensor,
               downs: torch.Tensor, columns: torch.Tensor, selection: torch.Tensor, *,
               ranks: Sequence[int] = (), exact: bool = False) -> None:
    """``target_g = round(W0_g + (U_g * c_g) @ D_g)`` for the members ``g`` in ``selection``, in one launch.

    ``originals`` / ``targets``: element offsets from ``base`` (:func:`offsets`) of (rows, cols) tensors of
    ``base``'s dtype, each passing :func:`fits`; ``ups`` (G, rows, R), ``downs`` (G, R, cols) contiguous,
    fp32 or half; ``columns`` (G, R) fp32; ``selection``: int64 member indices on the device. ``ranks``:
    the terms' ranks (when each is a multiple of :data:`BLOCK_K`, each block's weight is applied to its
    fp32 product); ``exact``: every factor is exact in TF32, so one TF32 pass computes the fp32 product.
    """
    _, rows, rank = ups.shape
    cols = downs.shape[2]
    blockwise = bool(ranks) and all(r % BLOCK_K == 0 for r in ranks)
    mode = precision(base.dtype, base.device, exact and blockwise)
    grid = (triton.cdiv(rows, BLOCK_M) * triton.cdiv(cols, BLOCK_N), selection.numel())
    _fuse_group_kernel[grid](base, originals, targets, ups, downs, columns, selection, rows, cols, rank,
                             OUT=_TRITON_DTYPES[base.dtype], VECTOR=ALIGNMENT // base.element_size(),
                             PRECISION=mode, BLOCKWISE=blockwise,
                             NATIVE=native_half(ups, downs, base, mode, blockwise), BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K,
                             num_warps=WARPS, num_stages=STAGES)


def precision(dtype: torch.dtype, device: torch.device, exact_in_tf32: bool) -> str:
    """How ``tl.dot`` multiplies fp32 factors. fp32 weights, and GPUs without TF32 (before Ampere, ROCm):
    fp32 FMAs. Factors exact in TF32 multiplied as they are (weights applied after the product): one TF32
    pass, whose products are exact and summed in fp32. Otherwise three-pass TF32 (each operand split in
    two), within fp32's error and far under the half-precision rounding that follows."""
    if (dtype == torch.float32 or device.type != "cuda" or torch.version.hip is not None   # ROCm: no TF32 modes
            or torch.cuda.get_device_capability(device) < (8, 0)):
        return "ieee"
    return "tf32" if exact_in_tf32 else "tf32x3"


def native_half(ups: torch.Tensor, downs: torch.Tensor, base: torch.Tensor, mode: str, blockwise: bool) -> bool:
    """Whether half factors go into the matrix units as they are, where one TF32 pass would take them
    widened (each rank block weighted after its product): fp16 x fp16 and bf16 x bf16 products are exact
    in fp32 as TF32's are, and summed in fp32, at half the registers and twice the matrix rate. Also under
    Triton's interpreter, so that the tests run this variant. fp32 weights keep fp32 FMAs."""
    if not blockwise or ups.dtype != downs.dtype or ups.dtype not in (torch.float16, torch.bfloat16):
        return False
    return mode == "tf32" or (base.device.type == "cpu" and base.dtype != torch.float32)


def disable(error: BaseException) -> str:
    """Turn the kernel off for this process after ``error`` (the engine writes by batched products from
    then on); the message to show once."""
    global disabled
    disabled = f"{type(error).__name__}: {error}"
    return (f"lora-syntax: the fused Triton kernel failed ({disabled}); LoRA weights are written by batched "
            "products from now on (same results, slower change points). Please report this with your GPU "
            "and Triton version.")


def warm_up(device: torch.device, dtype: torch.dtype, factor_dtype: torch.dtype = torch.float32) -> None:
    """Compile the kernel's variants for ``dtype`` weights now (or load them from Triton's disk cache), so
    that the first apply of a generation does not pay for it: rank blocks weighted after their product (one
    TF32 pass) and column weights inside it, for fp32 factors and for those kept in ``factor_dtype`` (files
    of one half dtype keep theirs on the device). Shapes divisible by 16, as real models' are."""
    weights = torch.zeros(2, 32, 32, dtype=dtype, device=device)
    where = offsets([weights[0], weights[1]], weights[0]).to(device)
    for kept in dict.fromkeys((torch.float32, factor_dtype)):
        for ranks, exact in (((BLOCK_K,), True), ((BLOCK_K // 2, BLOCK_K // 2), False)):
            rank = sum(ranks)
            fuse_group(weights[0], where[:1], where[1:], torch.zeros(1, 32, rank, dtype=kept, device=device),
                       torch.zeros(1, rank, 32, dtype=kept, device=device), torch.zeros(1, rank, device=device),
                       torch.zeros(1, dtype=torch.int64, device=device), ranks=ranks, exact=exact)
