"""The engine on every device this machine has (CPU always; CUDA when present, else those cases skip).

The same checks run per device so that CI on a CPU exercises every code path the GPU takes except the
device itself: fused weights against an fp64 reference (fp32: within a few fp32 roundings of the exact
sum; fp16/bf16: the fp32 sum rounded once), restore bit for bit by swapping the original tensor back,
and random apply / re-weight / error / restore sequences; each on both write paths (one GEMM per
module, batched products per group of one shape).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from lora_syntax import batched, factors, grouping, triton_fuse
from helpers_engine import StandIn
from lora_syntax.adapters.lora import LoraAdapter
from lora_syntax.errors import LoraApplyError
from lora_syntax.patcher import ModuleStack, Patcher, Term
from lora_syntax.targets import ModuleTarget

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]



@pytest.fixture(params=["per-module", "grouped", "fused", "per-module-moved", "fused-moved"])
def path(request, monkeypatch) -> dict:
    """Every write path, as Patcher arguments: one GEMM per module, batched products per group of one
    shape (groups of any size here), and the fused Triton kernel per group (where it runs). ``-moved``:
    the factors laid out as for an accelerator (raw copies, scales kept apart), on every device."""
    name = request.param.removesuffix("-moved")
    if name != request.param:
        monkeypatch.setattr(factors, "HOST_DEVICES", ("meta",))
    if name == "grouped":
        monkeypatch.setattr(batched, "MIN_GROUP", 1)
        return {"grouped": True, "fused": False}
    if name == "fused":
        device = request.node.callspec.params.get("device", "cpu")
        if not triton_fuse.available(torch.device(device)):
            pytest.skip("the fused kernel needs Triton and CUDA (or Triton's interpreter on the CPU)")
        return {"grouped": True, "fused": True}
    return {"grouped": False}


class Net(torch.nn.Module):
    """Linears of two shapes (grouping by shape), a conv, a module with a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(48, 64, bias=False)
        self.k = torch.nn.Linear(48, 64, bias=False)
        self.v = torch.nn.Linear(48, 64)
        self.ff = torch.nn.Linear(64, 96)
        self.conv = torch.nn.Conv2d(8, 16, 3)


def make_net(device: str, dtype: torch.dtype) -> Net:
    torch.manual_seed(0)
    return Net().to(device, dtype).requires_grad_(False)


def lora(module: torch.nn.Module, rank: int, seed: int, *, factor_dtype=torch.float32, alpha=None) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    weight = module.weight
    kernel = tuple(weight.shape[2:])
    up = torch.randn(weight.shape[0], rank, *([1] * len(kernel)), generator=g) * 0.05
    down = torch.randn(rank, weight.shape[1], *kernel, generator=g) * 0.05
    return LoraAdapter(up=up.to(factor_dtype), down=down.to(factor_dtype), alpha=alpha)


def stacks_for(net: Net, schedules: dict[str, list[tuple[float, ...]]]) -> list[ModuleStack]:
    """One stack per module: term i of module ``name`` has weights ``schedules[name][i]``.

    Terms differ in rank, alpha and file dtype (fp16 factors take the conversion path)."""
    found = []
    for name, per_term in schedules.items():
        module = net.get_submodule(name)
        terms = tuple(Term(f"l{i}", lora(module, rank=2 + 2 * i, seed=10 * sum(map(ord, name)) + i,
                                         factor_dtype=torch.float16 if i == 2 else torch.float32,
                                         alpha=None if i == 0 else float(i)), weights)
                      for i, weights in enumerate(per_term))
        found.append(ModuleStack(ModuleTarget("net", name), terms))
    return found


def reference(original: torch.Tensor, stack: ModuleStack, step: int) -> torch.Tensor:
    """fp64 ``W0 + sum m_i * delta_i`` (independent of the engine's GEMM layout)."""
    w = original.detach().to("cpu", torch.float64)
    for term, m in zip(stack.terms, stack.weights_at(step)):
        a = term.adapter
        up = a.up.double().reshape(a.up.shape[0], -1)
        down = a.down.double().reshape(a.down.shape[0], -1)
        w = w + m * a.scale * (up @ down).reshape(w.shape)
    return w


def assert_one_rounding(fused: torch.Tensor, exact: torch.Tensor) -> None:
    """fp16/bf16: at most half an ulp from the exact sum plus the fp32 sum's own error; fp32: a few ulps."""
    got = fused.detach().to("cpu", torch.float64)
    dtype = fused.dtype
    ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(torch.finfo(dtype).tiny)
    fp32_slack = 64 * torch.finfo(torch.float32).eps * exact.abs().max()
    bound = (4 * ulp if dtype == torch.float32 else 0.5 * ulp) + fp32_slack
    assert bool(((got - exact).abs() <= bound).all()), float(((got - exact).abs() - bound).max())
    if dtype != torch.float32:   # and equal to the fp32 reference rounded once, bar rare ties
        once = exact.float().to(dtype).double()
        assert int((got != once).sum()) <= 1 + got.numel() // 1000


def originals(net: Net) -> dict[str, torch.Tensor]:
    return {n: p.data for n, p in net.named_parameters()}


def assert_restored(net: Net, before: dict[str, torch.Tensor], copies: dict[str, torch.Tensor]) -> None:
    for name, param in net.named_parameters():
        assert param.data is before[name] or param.data.data_ptr() == before[name].data_ptr(), name
        assert torch.equal(param.data, copies[name]), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_fused_weights_are_the_exact_sum_rounded_once(device, dtype, path):
    net = make_net(device, dtype)
    before, copies = originals(net), {n: p.detach().clone() for n, p in net.named_parameters()}
    stacks = stacks_for(net, {"q": [(0.8,)], "k": [(0.8,), (0.5,)], "v": [(1.0,), (-0.3,), (0.7,)],
                              "ff": [(0.6,), (0.6,)], "conv": [(0.9,), (0.2,)]})
    patcher = Patcher({"net": net}, **path)
    patcher.load(stacks)
    report = patcher.apply(1)
    assert report.modules == 5
    if path.get("grouped"):   # every module in a group (ranks differ: groups of one), on the path asked for
        assert sum(len(g.slots) for g in patcher._groups) == 5 and not patcher._loose
        assert all(g.group.fused == path["fused"] for g in patcher._groups)
    for stack in stacks:
        param = net.get_submodule(stack.target.module).weight
        assert param.device.type == device and param.dtype == dtype
        assert param.data.data_ptr() != before[f"{stack.target.module}.weight"].data_ptr()   # a buffer, not W0
        assert_one_rounding(param, reference(copies[f"{stack.target.module}.weight"], stack, 1))
    assert all(torch.equal(before[n], copies[n]) for n in before)   # originals never written
    patcher.restore()
    assert_restored(net, before, copies)


@pytest.mark.parametrize("device", DEVICES)
def test_reweight_recomputes_from_the_original_and_restore_swaps_back(device, path):
    net = make_net(device, torch.float16)
    before, copies = originals(net), {n: p.detach().clone() for n, p in net.named_parameters()}
    stacks = stacks_for(net, {"q": [(0.8, 0.1, 0.8)], "k": [(0.8, 0.8, 0.8), (0.5, 1.0, 0.5)],
                              "ff": [(1.0, 0.0, 1.0)]})
    patcher = Patcher({"net": net}, **path)
    patcher.load(stacks)
    first = {s.target.module: None for s in stacks}
    for step in (1, 2, 3, 2, 1, 3):
        patcher.apply(step)
        for stack in stacks:
            weight = net.get_submodule(stack.target.module).weight.detach().clone()
            assert_one_rounding(weight, reference(copies[f"{stack.target.module}.weight"], stack, step))
            if step == 1:
                first[stack.target.module] = first[stack.target.module] if first[stack.target.module] is not None \
                    else weight
                assert torch.equal(weight, first[stack.target.module])   # same bits every time back at step 1
    patcher.restore()
    assert_restored(net, before, copies)
    assert patcher.backup_bytes == 0


@dataclass(frozen=True, eq=False)
class Exploding(StandIn):
    """Fits every module but fails while its delta is computed (after validation passed)."""

    kind: ClassVar[str] = "exploding"

    def delta(self, weight):
        if weight.device.type == "meta":
            return torch.empty_like(weight)
        raise RuntimeError("delta failed")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_random_apply_reweight_error_restore_sequences(device, seed, path):
    rng = random.Random(seed)
    dtype = rng.choice(DTYPES)
    net = make_net(device, dtype)
    before, copies = originals(net), {n: p.detach().clone() for n, p in net.named_parameters()}
    patcher = Patcher({"net": net}, in_place=rng.random() < 0.25, **path)
    names = ["q", "k", "v", "ff", "conv"]
    for _ in range(6):
        chosen = rng.sample(names, rng.randint(1, len(names)))
        schedules = {n: [tuple(rng.choice((0.0, 0.5, 1.0, -0.7)) for _ in range(4))
                         for _ in range(rng.randint(1, 3))] for n in chosen}
        stacks = stacks_for(net, schedules)
        if rng.random() < 0.25:   # a stack that fails while writing: everything restored, a LoraApplyError
            bad = stacks[-1]
            stacks[-1] = ModuleStack(bad.target, bad.terms + (Term("bad", Exploding(), (1.0,) * 4),))
            patcher.load(stacks)
            with pytest.raises(LoraApplyError, match="delta failed"):
                patcher.apply(1)
            assert_restored(net, before, copies)
            continue
        patcher.load(stacks)
        for step in rng.sample(range(1, 5), 3):
            patcher.apply(step)
            for stack in stacks:
                weight = net.get_submodule(stack.target.module).weight
                assert_one_rounding(weight, reference(copies[f"{stack.target.module}.weight"], stack, step))
        if rng.random() < 0.5:
            patcher.restore()
            assert_restored(net, before, copies)
    patcher.restore()
    assert_restored(net, before, copies)


@pytest.mark.parametrize("device", DEVICES)
def test_a_parameter_replaced_by_the_host_mid_run_gets_the_next_weights(device, path):
    net = make_net(device, torch.float16)
    copies = {n: p.detach().clone() for n, p in net.named_parameters()}
    stacks = stacks_for(net, {"q": [(0.8, 0.2)], "k": [(0.8, 0.2)], "v": [(0.5, 1.0)]})
    patcher = Patcher({"net": net}, **path)
    patcher.load(stacks)
    patcher.apply(1)
    moved = net.q.weight.detach().clone()
    net.q.weight.data = moved            # what module.to(...) does while patched
    patcher.apply(2)
    assert net.q.weight.data_ptr() == moved.data_ptr()
    for stack in stacks:
        weight = net.get_submodule(stack.target.module).weight
        assert_one_rounding(weight, reference(copies[f"{stack.target.module}.weight"], stack, 2))
    patcher.restore()
    for name, param in net.named_parameters():
        assert torch.equal(param.data, copies[name]), name


@pytest.mark.parametrize("device", DEVICES)
def test_factors_are_prepared_once_as_copies_on_the_cpu_and_moved_in_one_copy(device):
    net = make_net(device, torch.float32)
    stacks = stacks_for(net, {"q": [(0.8,)], "k": [(0.8,), (0.5,)], "ff": [(0.6,), (0.6,), (0.2,)]})
    patcher = Patcher({"net": net}, grouped=False)
    patcher.load(stacks)
    patcher.apply(1)
    slots = {key[1]: slot for key, slot in patcher._slots.items()}
    single = stacks[0].terms[0].adapter
    if device == "cpu":   # one fp32 LoRA: a copy of the file's tensors (never the file's map), the scale apart
        assert slots["q"].low_up.data_ptr() != single.up.data_ptr() and torch.equal(slots["q"].low_up, single.up)
        assert slots["q"].low_down.data_ptr() != single.down.data_ptr()
        assert torch.equal(slots["q"].low_down, single.down) and slots["q"].low_scales == (single.scale,)
    else:                 # every module's factors in one device tensor: one host-to-device copy
        storages = {slot.low_up.untyped_storage().data_ptr() for slot in slots.values()}
        storages |= {slot.low_down.untyped_storage().data_ptr() for slot in slots.values()}
        assert len(storages) == 1 and all(slot.low_up.device.type == "cuda" for slot in slots.values())
    patcher.apply(1)   # nothing changed: nothing rebuilt
    assert slots["k"].low_up is {key[1]: s for key, s in patcher._slots.items()}["k"].low_up


class Row(torch.nn.Module):
    """Six linears of one shape: one group whose members change at different steps."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(40, 24, bias=False) for _ in range(6))


@pytest.mark.parametrize("device", DEVICES)
def test_a_group_writes_only_the_members_whose_weights_change(device, path):
    torch.manual_seed(1)
    net = Row().to(device, torch.float16).requires_grad_(False)
    copies = {n: p.detach().clone() for n, p in net.named_parameters()}
    before = {n: p.data for n, p in net.named_parameters()}
    # members 0-2 change at step 3, members 3-5 keep one weight; every member starts at 0
    schedules = [(0.0, 0.0, 0.9, 0.9), (0.0, 0.0, 0.4, 0.4), (0.0, 0.0, 0.4, -0.5)] + [(0.0, 0.7, 0.7, 0.7)] * 3
    stacks = [ModuleStack(ModuleTarget("net", f"layers.{i}"),
                          (Term("a", lora(net.layers[i], 4, seed=i), weights),
                           Term("b", lora(net.layers[i], 4, seed=50 + i), tuple(w / 2 for w in weights))))
              for i, weights in enumerate(schedules)]
    patcher = Patcher({"net": net}, **path)
    patcher.load(stacks)
    assert patcher.apply(1).modules == 0                      # every weight 0: the originals stay
    assert all(p.data_ptr() == before[n].data_ptr() for n, p in net.named_parameters())
    written = [patcher.apply(step).modules for step in (2, 3, 4, 1)]
    if path.get("grouped"):
        assert len(patcher._groups) == 1
        assert written == [6, 3, 1, 6]                           # step 4: only member 2 changes
    for step in (4, 2):
        patcher.apply(step)
        for i, stack in enumerate(stacks):
            assert_one_rounding(net.layers[i].weight, reference(copies[f"layers.{i}.weight"], stack, step))
    patcher.restore()
    assert_restored(net, before, copies)


@pytest.mark.parametrize("device", DEVICES)
def test_the_next_load_of_the_same_adapters_reuses_their_factors(device):
    net = make_net(device, torch.float16)
    stacks = stacks_for(net, {"q": [(0.8,), (0.3,)], "k": [(0.8,), (0.5,)], "ff": [(0.6,), (0.6,)]})
    patcher = Patcher({"net": net})
    patcher.load(stacks)
    assert all(slot.cached for slot in patcher._slots.values())          # prepared (and moved) at load
    first = {key: slot.low_up.data_ptr() for key, slot in patcher._slots.items()}
    patcher.apply(1)
    patcher.restore()
    assert patcher.factor_bytes > 0                                     # kept for the next generation
    reweighted = [ModuleStack(s.target, tuple(Term(t.name, t.adapter, (0.1,)) for t in s.terms)) for s in stacks]
    fresh = stacks_for(net, {"ff": [(0.6,), (0.6,)]})                    # new adapter objects: prepared anew
    patcher.load(reweighted[:2] + fresh)
    again = {key: slot.low_up.data_ptr() for key, slot in patcher._slots.items()}
    assert again[("net", "q")] == first[("net", "q")] and again[("net", "k")] == first[("net", "k")]
    patcher.apply(1)
    for stack in reweighted[:2] + fresh:
        weight = net.get_submodule(stack.target.module).weight
        assert_one_rounding(weight, reference(originals_of(patcher, stack), stack, 1))
    patcher.restore(keep_factors=False)
    assert patcher.factor_bytes == 0


def originals_of(patcher: Patcher, stack: ModuleStack) -> torch.Tensor:
    return patcher._slots[(stack.target.component, stack.target.module)].weight.original


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_a_groups_factors_are_views_of_the_one_copy_that_moved_them():
    torch.manual_seed(0)
    net = Row().to("cuda", torch.float16).requires_grad_(False)
    stacks = [ModuleStack(ModuleTarget("net", f"layers.{i}"), (Term("a", lora(net.layers[i], 4, seed=i), (0.5,)),))
              for i in range(6)]
    patcher = Patcher({"net": net})
    patcher.load(stacks)
    moved = {slot.low_up.untyped_storage().data_ptr() for slot in patcher._slots.values()}
    patcher.apply(1)
    (state,) = patcher._groups
    assert {state.group.ups.untyped_storage().data_ptr(), state.group.downs.untyped_storage().data_ptr()} == moved
    patcher.restore()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_rank_blocks_of_exact_factors_are_weighted_after_their_product(device, dtype, path):
    """Ranks that are multiples of the kernel's rank block, factors from fp16 files (exact in TF32), terms
    with different alphas and weights: the kernel's one-pass path, against the fp64 reference."""
    torch.manual_seed(2)
    net = Row().to(device, dtype).requires_grad_(False)
    copies = {n: p.detach().clone() for n, p in net.named_parameters()}
    stacks = [ModuleStack(ModuleTarget("net", f"layers.{i}"), tuple(
        Term(f"l{j}", lora(net.layers[i], 32 * (j + 1), seed=10 * i + j, factor_dtype=torch.float16,
                           alpha=8.0 * (j + 1)), (0.7 - 0.4 * j, 1.1 + 0.2 * j)) for j in range(2)))
        for i in range(6)]
    patcher = Patcher({"net": net}, **path)
    patcher.load(stacks)
    for step in (1, 2):
        patcher.apply(step)
        for i, stack in enumerate(stacks):
            assert_one_rounding(net.layers[i].weight, reference(copies[f"layers.{i}.weight"], stack, step))
    if path.get("fused") and device == "cuda":
        assert all(state.group.exact for state in patcher._groups)
    patcher.restore()


@pytest.mark.parametrize("device", DEVICES)
def test_a_weight_changing_at_every_step_holds_few_rows_on_the_device(device, path):
    """40 distinct weight rows (a new weight at every step): right weights at every step, in order and
    jumping back, while a group holds at most ROWS_HELD rows of column weights."""
    torch.manual_seed(3)
    net = Row().to(device, torch.float16).requires_grad_(False)
    copies = {n: p.detach().clone() for n, p in net.named_parameters()}
    ramp = tuple(0.05 * s for s in range(1, 41))
    stacks = [ModuleStack(ModuleTarget("net", f"layers.{i}"), (Term("a", lora(net.layers[i], 4, seed=i), ramp),))
              for i in range(6)]
    patcher = Patcher({"net": net}, **path)
    patcher.load(stacks)
    for step in (*range(1, 41), 3, 38, 1):
        patcher.apply(step)
        if step in (1, 17, 40, 3):
            for i, stack in enumerate(stacks):
                assert_one_rounding(net.layers[i].weight, reference(copies[f"layers.{i}.weight"], stack, step))
        if path.get("grouped"):
            assert all(len(state._columns) <= grouping.ROWS_HELD for state in patcher._groups)
    patcher.restore()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("files", ["float16", "bfloat16", "mixed"])
@pytest.mark.parametrize("write", ["per-module", "grouped", "fused"])
def test_an_accelerator_keeps_factors_of_half_files_in_their_dtype(device, files, write, monkeypatch):
    """Factors bound for an accelerator stay in the files' half dtype when they share one (half the memory,
    exact in TF32), fp32 otherwise; every write path gives the sum rounded once from them."""
    monkeypatch.setattr(factors, "HOST_DEVICES", ("meta",))       # the accelerator layout, on any device
    monkeypatch.setattr(batched, "MIN_GROUP", 1)
    if write == "fused" and not triton_fuse.available(torch.device(device)):
        pytest.skip("the fused kernel needs Triton and CUDA (or Triton's interpreter on the CPU)")
    torch.manual_seed(4)
    net = Row().to(device, torch.float16).requires_grad_(False)
    copies = {n: p.detach().clone() for n, p in net.named_parameters()}
    kinds = {"float16": (torch.float16,) * 2, "bfloat16": (torch.bfloat16,) * 2,
             "mixed": (torch.float16, torch.bfloat16)}[files]
    stacks = [ModuleStack(ModuleTarget("net", f"layers.{i}"), tuple(
        Term(f"l{j}", lora(net.layers[i], 32, seed=20 * i + j, factor_dtype=kinds[j], alpha=4.0 * (j + 1)),
             (0.9 - 0.5 * j, 0.3 + 0.4 * j)) for j in range(2))) for i in range(6)]
    patcher = Patcher({"net": net}, grouped=write != "per-module", fused=write == "fused")
    patcher.load(stacks)
    kept = torch.float32 if files == "mixed" else kinds[0]
    for slot in patcher._slots.values():
        assert slot.low_up.dtype == slot.low_down.dtype == kept and slot.low_exact
        assert slot.extra_bytes == (slot.low_up.numel() + slot.low_down.numel()) * kept.itemsize
    for step in (1, 2, 1):
        patcher.apply(step)
        for i, stack in enumerate(stacks):
            assert_one_rounding(net.layers[i].weight, reference(copies[f"layers.{i}.weight"], stack, step))
    patcher.restore()
    assert all(torch.equal(p, copies[n]) for n, p in net.named_parameters())
