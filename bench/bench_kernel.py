"""The fused re-weight kernel alone (lora_syntax/triton_fuse.py) against the memory floor, per tile shape.

    python bench/bench_kernel.py [--dtype fp16|bf16|fp32] [--rank 96]

A group of SDXL's most common attention shape (1280x1280; 140 modules, 460 MB in fp16) with three rank-32
LoRAs (factors from fp16 files) is re-weighted by the kernel under a few tile shapes: factors kept in fp16
and multiplied as they are (what the engine does with fp16 files), widened to fp32 in one TF32 pass, and in
three; and by the batched-product path; each is
timed with CUDA events (median of ``triton.testing.do_bench``) and compared with one device-to-device
copy of the same weights (read + write: the floor of any re-weight). Needs CUDA and Triton.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_syntax import batched, triton_fuse  # noqa: E402

CONFIGS = [(128, 64, 4, 2), (64, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 2), (128, 128, 4, 3), (256, 64, 8, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--rank", type=int, default=96)
    parser.add_argument("--members", type=int, default=140)
    parser.add_argument("--side", type=int, default=1280)
    args = parser.parse_args()
    from triton.testing import do_bench

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = torch.device("cuda")
    g, n, r = args.members, args.side, args.rank
    originals = [torch.randn(n, n, device=device).to(dtype) for _ in range(g)]
    targets = [torch.empty_like(w) for w in originals]
    ups = (torch.randn(g, n, r, device=device) * 0.01).half().float()     # as from fp16 files: exact in TF32
    downs = (torch.randn(g, r, n, device=device) * 0.01).half().float()
    ranks = (r // 3, r // 3, r - 2 * (r // 3))                              # three LoRAs
    columns = torch.rand(g, len(ranks), device=device).repeat_interleave(torch.tensor(ranks, device=device), dim=1)
    groups = {}
    for kept in (torch.float16, torch.float32):   # factors as the engine keeps fp16 files' / widened
        members = [batched.Member(w, t, ups[i].to(kept), downs[i].to(kept), ranks, (1.0,) * 3, exact=True)
                   for i, (w, t) in enumerate(zip(originals, targets))]
        (groups[kept],), _ = batched.build_groups(members, fused=True)
    selection = groups[torch.float32].selection()
    nbytes = 2 * sum(w.numel() * w.element_size() for w in originals)
    flat_in = torch.cat([w.reshape(-1) for w in originals])
    flat_out = torch.empty_like(flat_in)
    copy_ms = do_bench(lambda: flat_out.copy_(flat_in), return_mode="median")
    print(f"{g} x {n}x{n} {args.dtype}, ranks {ranks}: weights read + written {nbytes / 1e9:.2f} GB; one copy "
          f"{copy_ms:.3f} ms = {nbytes / copy_ms / 1e6:.0f} GB/s")
    exact = [(w.double() + (ups[i].double() * columns[i].double()) @ downs[i].double()) for i, w in enumerate(originals[:4])]
    blockwise = all(k % triton_fuse.BLOCK_K == 0 for k in ranks)
    for kept, one_pass in ((torch.float16, True), (torch.float32, True), (torch.float32, False)):
        group = groups[kept]
        group.exact = one_pass
        mode = triton_fuse.precision(dtype, device, one_pass and blockwise)
        if triton_fuse.native_half(group.ups, group.downs, originals[0], mode, blockwise):
            mode = "fp16 factors"
        elif kept != torch.float32:
            continue   # fp32 weights: the kernel widens half factors, as the fp32 rows below do
        for config in CONFIGS:
            (triton_fuse.BLOCK_M, triton_fuse.BLOCK_N, triton_fuse.WARPS, triton_fuse.STAGES) = config
            run = lambda: batched.write(group, columns, None, selection)  # noqa: E731
            try:
                ms = do_bench(run, return_mode="median")
            except Exception as error:  # a config the compiler refuses on this GPU
                print(f"kernel {mode:12s} BM={config[0]} BN={config[1]} warps={config[2]} stages={config[3]}: {error}")
                continue
            ulps = max(float(((t.double() - e).abs() / (torch.finfo(dtype).eps * e.abs().clamp_min(1e-4))).max())
                       for t, e in zip(targets, exact))
            print(f"kernel {mode:12s} BM={config[0]:3d} BN={config[1]:3d} warps={config[2]} stages={config[3]}: "
                  f"{ms:.3f} ms = {nbytes / ms / 1e6:.0f} GB/s, {ms / copy_ms:.2f}x one copy; worst error {ulps:.2f} ulp")
    group = groups[torch.float32]
    group.fused = False
    ms = do_bench(lambda: batched.write(group, columns), return_mode="median")
    print(f"batched products (torch): {ms:.3f} ms = {ms / copy_ms:.2f}x one copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
