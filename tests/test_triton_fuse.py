"""The fused Triton kernel of grouped writes (lora_syntax/triton_fuse.py) and the stacking it relies on.

On a CPU the kernel runs in Triton's interpreter: the engine checks of tests/test_engine_cuda.py run
again in a subprocess with ``TRITON_INTERPRET=1`` (the variable must be set before Triton compiles
anything), so CI checks the kernel's arithmetic, indexing, masks and member selection without a GPU.
On CUDA the same checks run natively in tests/test_engine_cuda.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_syntax import batched, triton_fuse

ROOT = Path(__file__).resolve().parents[1]


# On a CUDA machine tests/test_engine_cuda.py runs the kernel natively; the interpreter is for CPUs.
needs_interpreter = pytest.mark.skipif(triton_fuse.triton is None or torch.cuda.is_available(),
                                       reason="Triton is not installed, or CUDA runs the kernel natively")


def run_in_interpreter(script: str) -> None:
    """Run ``script`` in a fresh Python with Triton's interpreter on (patched as the tests' conftest does);
    it must print ``ok``."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    prelude = "from helpers_triton import patch_interpreter; patch_interpreter()\n"
    done = subprocess.run([sys.executable, "-c", prelude + script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-3000:]


@needs_interpreter
def test_every_engine_check_passes_with_the_kernel_in_tritons_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "fused and cpu",
                           "tests/test_engine_cuda.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= 8 and "failed" not in done.stdout


@needs_interpreter
def test_the_kernel_writes_only_the_selected_members_and_rounds_once():
    script = """
import torch
from lora_syntax import triton_fuse
torch.manual_seed(0)
G, M, N, R = 4, 70, 150, 40   # not multiples of the tiles: the masks are exercised
for dtype in (torch.float16, torch.float32):
    w0 = [torch.randn(M, N).to(dtype) for _ in range(G)]
    out = [torch.full((M, N), float("nan")).to(dtype) for _ in range(G)]
    ups, downs, columns = torch.randn(G, M, R), torch.randn(G, R, N), torch.rand(G, R)
    triton_fuse.fuse_group(w0[0], triton_fuse.offsets(w0, w0[0]), triton_fuse.offsets(out, w0[0]), ups, downs,
                           columns, torch.tensor([0, 2]), ranks=(8, 32), exact=dtype == torch.float16)
    for g in range(G):
        if g in (1, 3):
            assert out[g].isnan().all(), g   # not selected: not written
            continue
        exact = w0[g].double() + (ups[g].double() * columns[g].double()) @ downs[g].double()
        once = (w0[g].float() + (ups[g] * columns[g]) @ downs[g]).to(dtype)
        ulp = torch.finfo(dtype).eps * exact.abs()
        assert ((out[g].double() - exact).abs() <= (4 if dtype == torch.float32 else 0.5) * ulp + 1e-5).all()
        if dtype == torch.float16:
            assert (out[g] == once).double().mean() > 0.999
print("ok")
"""
    run_in_interpreter(script)


@needs_interpreter
def test_half_factors_go_into_the_dot_as_they_are_with_the_same_result_as_widened_ones():
    script = """
import torch
from lora_syntax import triton_fuse
torch.manual_seed(1)
G, M, N, ranks = 3, 70, 150, (32, 64)   # rank blocks of BLOCK_K: each block's weight after its product
R = sum(ranks)
for dtype in (torch.float16, torch.bfloat16):
    w0 = [torch.randn(M, N).to(dtype) for _ in range(G)]
    ups, downs = (torch.randn(G, M, R) * 0.3).to(dtype), (torch.randn(G, R, N) * 0.3).to(dtype)
    columns = torch.rand(G, R)
    for g in range(G):   # one weight per term, as the engine's columns are
        columns[g, :32], columns[g, 32:] = columns[g, 0], columns[g, 32]
    assert triton_fuse.native_half(ups, downs, w0[0], "ieee", True)
    assert not triton_fuse.native_half(ups.float(), downs.float(), w0[0], "ieee", True)
    assert not triton_fuse.native_half(ups, downs, w0[0], "ieee", False)
    written = {}
    for kept in (dtype, torch.float32):   # as they are, and widened to fp32 (one TF32-exact pass)
        out = [torch.empty(M, N, dtype=dtype) for _ in range(G)]
        triton_fuse.fuse_group(w0[0], triton_fuse.offsets(w0, w0[0]), triton_fuse.offsets(out, w0[0]),
                               ups.to(kept), downs.to(kept), columns, torch.tensor([0, 1, 2]), ranks=ranks,
                               exact=True)
        written[kept] = out
    for g in range(G):
        # both are fp32 sums of exact products, in another order: a rare last-bit tie may round apart
        same = (written[dtype][g] == written[torch.float32][g]).double().mean()
        assert same > 0.999, (dtype, g, float(same))
        exact = w0[g].double() + (ups[g].double() * columns[g].double()) @ downs[g].double()
        ulp = torch.finfo(dtype).eps * exact.abs()
        assert ((written[dtype][g].double() - exact).abs() <= 0.5 * ulp + 1e-5).all(), (dtype, g)
print("ok")
"""
    run_in_interpreter(script)


def test_factors_lying_side_by_side_are_stacked_without_a_copy():
    flat = torch.arange(5 * 6 * 4, dtype=torch.float32)
    views = [flat[i * 24:(i + 1) * 24].view(6, 4) for i in range(5)]
    stacked = batched.stacked(views)
    assert stacked.shape == (5, 6, 4) and stacked.data_ptr() == flat.data_ptr() and stacked.is_contiguous()
    assert torch.equal(stacked, torch.stack(views))
    apart = [views[0], views[2]]                  # a gap: a real stack (a copy)
    assert batched.stacked(apart).data_ptr() != flat.data_ptr()
    assert torch.equal(batched.stacked(apart), torch.stack(apart))


def test_the_kernel_takes_only_aligned_contiguous_tensors_of_one_dtype():
    w = torch.zeros(64, 64, dtype=torch.float16)
    assert triton_fuse.fits(w, torch.zeros_like(w))
    assert not triton_fuse.fits(w, torch.zeros(64, 64, dtype=torch.float32))
    assert not triton_fuse.fits(w.t(), torch.zeros_like(w))                     # strided
    shifted = torch.zeros(4097, dtype=torch.float16)[1:].view(64, 64)                    # 2-byte aligned
    assert not triton_fuse.fits(shifted, torch.zeros_like(w))
    assert not triton_fuse.available(torch.device("meta"))


def test_a_failing_kernel_is_turned_off_once_and_the_write_falls_back(monkeypatch):
    from lora_syntax.adapters.lora import LoraAdapter
    from lora_syntax.patcher import ModuleStack, Patcher, Term
    from lora_syntax.targets import ModuleTarget

    torch.manual_seed(0)
    net = torch.nn.ModuleList(torch.nn.Linear(32, 16, bias=False) for _ in range(3)).to(torch.float16)
    stacks = [ModuleStack(ModuleTarget("net", str(i)), (Term("a", LoraAdapter(
        up=torch.randn(16, 4) * 0.1, down=torch.randn(4, 32) * 0.1), (0.5,)),)) for i in range(3)]
    expected = Patcher({"net": net}, grouped=True, fused=False)
    monkeypatch.setattr(triton_fuse, "disabled", None)
    monkeypatch.setattr(triton_fuse, "available", lambda device: triton_fuse.disabled is None)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(triton_fuse, "fuse_group", broken)
    originals = [m.weight.detach().clone() for m in net]
    patcher = Patcher({"net": net}, grouped=True)
    patcher.load(stacks)
    with pytest.warns(RuntimeWarning, match="fused Triton kernel failed .*no kernel image"):
        patcher.apply(1)
    assert triton_fuse.disabled and not any(state.group.fused for state in patcher._groups)
    fused = [m.weight.detach().clone() for m in net]
    patcher.restore()
    assert all(torch.equal(m.weight, w) for m, w in zip(net, originals))
    expected.load(stacks)
    expected.apply(1)
    assert all(torch.equal(m.weight, w) for m, w in zip(net, fused))   # the batched path's exact result
    expected.restore()
