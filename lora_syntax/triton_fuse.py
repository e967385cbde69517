"""One fused kernel per group on CUDA: each member's weight re-weighted in one pass over it.

For a group of modules of one shape (:mod:`lora_syntax.batched`), member ``g`` gets

    target_g = round( W0_g + (U_g * c_g) @ D_g )        c_g: the column weights (term weight x scale)

in one Triton kernel whose program reads a tile of ``W0_g`` once, builds the same tile of the low-rank
product in fp32 registers and writes the rounded sum once into ``target_g``. The batched-product path
materialises the fp32 product (and reads it twice more); here the only traffic is the weights read and
written once plus the small factors, which is the floor of a change point. The sum is fp32 and rounded
once, as everywhere in the engine. fp16/bf16 weights use the matrix units in three-pass TF32 (``tf32x3``:
each fp32 operand split in two, error near fp32's, far under the half-precision rounding that follows);
fp32 weights use plain fp32 FMAs (``ieee``), so fp32 models see fp32 arithmetic.

Members are addressed through device arrays of their tensors' addresses, built once per group, so one
launch covers tensors the model allocated separately. Without Triton (or off CUDA) :func:`available`
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

# Tile of the output each program writes; the rank is consumed BLOCK_K columns at a time.
BLOCK_M, BLOCK_N, BLOCK_K = 64, 128, 32
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
    @triton.jit
    def _fuse_group_kernel(originals, targets, ups, downs, columns, selection, rows, cols, rank,
                           OUT: tl.constexpr, PRECISION: tl.constexpr,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        member = tl.load(selection + tl.program_id(1))
        tile = tl.program_id(0)
        tiles_n = tl.cdiv(cols, BN)
        rm = (tile // tiles_n) * BM + tl.arange(0, BM)
        rn = (tile % tiles_n) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        up_base = ups + member * rows * rank
        down_base = downs + member * rank * cols
        column_base = columns + member * rank
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in tl.range(0, rank, BK):
            kk = k0 + rk
            u = tl.load(up_base + rm[:, None] * rank + kk[None, :],
                        mask=(rm[:, None] < rows) & (kk[None, :] < rank), other=0.0).to(tl.float32)
            c = tl.load(column_base + kk, mask=kk < rank, other=0.0)
            d = tl.load(down_base + kk[:, None] * cols + rn[None, :],
                        mask=(kk[:, None] < rank) & (rn[None, :] < cols), other=0.0).to(tl.float32)
            acc = tl.dot(u * c[None, :], d, acc, input_precision=PRECISION)
        original = tl.load(originals + member).to(tl.pointer_type(OUT))
        target = tl.load(targets + member).to(tl.pointer_type(OUT))
        offsets = rm[:, None].to(tl.int64) * cols + rn[None, :]
        inside = (rm[:, None] < rows) & (rn[None, :] < cols)
        w0 = tl.load(original + offsets, mask=inside, other=0.0).to(tl.float32)
        if OUT == tl.float32:
            tl.store(target + offsets, w0 + acc, mask=inside)
        else:   # round to nearest even, as torch does
            tl.store(target + offsets, (w0 + acc).to(OUT, fp_downcast_rounding="rtne"), mask=inside)

    _TRITON_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def addresses(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors' data addresses as an int64 tensor on ``device`` (what the kernel reads them through)."""
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device)


def fits(original: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether a member can be written by the kernel: 2-D contiguous views of one supported dtype,
    aligned for vector access."""
    return (original.dtype == target.dtype and original.dtype in _DTYPES and original.is_contiguous()
            and target.is_contiguous() and original.data_ptr() % ALIGNMENT == 0
            and target.data_ptr() % ALIGNMENT == 0)


def fuse_group(originals: torch.Tensor, targets: torch.Tensor, ups: torch.Tensor, downs: torch.Tensor,
               columns: torch.Tensor, selection: torch.Tensor, dtype: torch.dtype) -> None:
    """``target_g = round(W0_g + (U_g * c_g) @ D_g)`` for the members ``g`` in ``selection``, in one launch.

    ``originals`` / ``targets``: int64 address arrays (:func:`addresses`) of (rows, cols) tensors of
    ``dtype``; ``ups`` (G, rows, R), ``downs`` (G, R, cols) contiguous, fp32 or half; ``columns`` (G, R)
    fp32; ``selection``: int64 member indices on the device.
    """
    _, rows, rank = ups.shape
    cols = downs.shape[2]
    grid = (triton.cdiv(rows, BLOCK_M) * triton.cdiv(cols, BLOCK_N), selection.numel())
    _fuse_group_kernel[grid](originals, targets, ups, downs, columns, selection, rows, cols, rank,
                             OUT=_TRITON_DTYPES[dtype], PRECISION=_precision(dtype, ups.device),
                             BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, num_warps=4)


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    """fp32 arithmetic for fp32 weights and on GPUs without TF32 (before Ampere); else three-pass TF32."""
    if dtype == torch.float32 or device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return "ieee"
    return "tf32x3"


def disable(error: BaseException) -> str:
    """Turn the kernel off for this process after ``error`` (the engine writes by batched products from
    then on); the message to show once."""
    global disabled
    disabled = f"{type(error).__name__}: {error}"
    return (f"lora-syntax: the fused Triton kernel failed ({disabled}); LoRA weights are written by batched "
            "products from now on (same results, slower change points). Please report this with your GPU "
            "and Triton version.")


def warm_up(device: torch.device, dtype: torch.dtype) -> None:
    """Compile the kernel for ``dtype`` now (or load it from Triton's disk cache), so that the first
    apply of a generation does not pay for it. Shapes divisible by 16, as real models' are."""
    w0 = torch.zeros(32, 32, dtype=dtype, device=device)
    out = torch.empty_like(w0)
    factors = torch.zeros(1, 32, 16, device=device), torch.zeros(1, 16, 32, device=device)
    fuse_group(addresses([w0], device), addresses([out], device), *factors, torch.zeros(1, 16, device=device),
               torch.zeros(1, dtype=torch.int64, device=device), dtype)
