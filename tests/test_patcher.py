"""Patcher core: fp32 fusion, one rounding, restore by copy, atomic failures (stand-in modules and adapters)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from helpers_engine import StandIn
from lora_syntax.adapters.lora import LoraAdapter
from lora_syntax.errors import LoraApplyError, LoraShapeError
from lora_syntax.patcher import ModuleStack, Patcher, Term
from lora_syntax.targets import ModuleTarget


class Net(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.a = torch.nn.Linear(8, 6)
        self.b = torch.nn.Linear(6, 4, bias=False)
        self.c = torch.nn.Conv2d(4, 5, 3)
        self.register_buffer("stat", torch.arange(3.0))
        self.to(dtype)


def snapshot(*modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def assert_same(before, *modules):
    for saved, module in zip(before, modules):
        now = module.state_dict()
        assert saved.keys() == now.keys()
        for key in saved:
            assert saved[key].dtype == now[key].dtype and torch.equal(saved[key], now[key]), key


def lora(out_f, in_f, rank=2, seed=0, kernel=(), alpha=None):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(out_f, rank, *([1] * len(kernel)), generator=g)
    down = torch.randn(rank, in_f, *kernel, generator=g)
    return LoraAdapter(up=up, down=down, alpha=alpha)


@dataclass(frozen=True, eq=False)
class Scale(StandIn):
    """Non-additive stand-in: W' = W * (1 + m * s)."""

    kind: ClassVar[str] = "scale"
    additive: ClassVar[bool] = False
    s: float = 0.5

    def delta(self, weight):
        return weight.float() * self.s

    def patched(self, weight, multiplier):
        return weight.float() * (1 + multiplier * self.s)


@dataclass(frozen=True, eq=False)
class Broken(StandIn):
    """Fails while computing its delta (after the shape check passes)."""

    kind: ClassVar[str] = "broken"
    error: type = RuntimeError

    def delta(self, weight):
        if weight.device.type == "meta":
            return torch.empty_like(weight)
        raise self.error("boom")


@dataclass(frozen=True, eq=False)
class BiasOnly(StandIn):
    kind: ClassVar[str] = "biasonly"
    b: torch.Tensor = None

    def delta(self, weight):
        return torch.zeros_like(weight, dtype=torch.float32)

    def bias_delta(self):
        return self.b


def stack(module, *terms, component="net"):
    return ModuleStack(ModuleTarget(component, module), tuple(terms))


def test_fused_weight_is_fp32_sum_rounded_once():
    net = Net(torch.float16)
    w0 = net.a.weight.detach().float().clone()
    l1, l2 = lora(6, 8, seed=1, alpha=1.0), lora(6, 8, rank=3, seed=2)
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", l1, (0.7, 0.2)), Term("y", l2, (-0.3, -0.3)))])
    p.apply(1)
    expected = (w0 + 0.7 * l1.delta(w0) - 0.3 * l2.delta(w0)).half()
    assert torch.equal(net.a.weight, expected)
    p.apply(2)
    expected = (w0 + 0.2 * l1.delta(w0) - 0.3 * l2.delta(w0)).half()
    assert torch.equal(net.a.weight, expected)


def test_fp32_conv_and_non_additive_after_sum():
    net = Net()
    w0 = net.c.weight.detach().clone()
    conv = lora(5, 4, seed=3, kernel=(3, 3))
    p = Patcher({"net": net})
    p.load([stack("c", Term("s", Scale(0.5), (1.0,)), Term("l", conv, (0.5,)))])
    p.apply(1)
    expected = (w0 + 0.5 * conv.delta(w0)) * 1.5   # additive sum first, then the non-additive one
    torch.testing.assert_close(net.c.weight, expected, rtol=1e-6, atol=1e-6)


def test_bias_delta_and_restore():
    net = Net()
    before = snapshot(net)
    d = torch.arange(6.0)
    p = Patcher({"net": net})
    p.load([stack("a", Term("b", BiasOnly(b=d), (2.0,)))])
    p.apply(1)
    assert torch.equal(net.a.bias, before[0]["a.bias"] + 2 * d)
    p.restore()
    assert_same(before, net)


def test_only_changed_modules_are_rewritten():
    net = Net()
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", lora(6, 8), (1.0, 1.0, 0.5, 0.5))),
            stack("b", Term("y", lora(4, 6), (1.0, 1.0, 1.0, 0.0)))])
    assert p.change_points() == (3, 4)
    assert p.apply(1).modules == 2
    assert p.apply(2).modules == 0
    assert p.apply(3).modules == 1
    assert p.apply(4).modules == 1
    p.load(p.stacks)   # same stack again: nothing to redo
    assert p.apply(4).modules == 0


def test_failures_before_touching_leave_model_identical():
    net = Net()
    before = snapshot(net)
    p = Patcher({"net": net})
    with pytest.raises(LoraApplyError, match="nope"):
        p.load([stack("a", Term("x", lora(6, 8), (1.0,))), stack("nope", Term("x", lora(6, 8), (1.0,)))])
    with pytest.raises(LoraApplyError, match="component 'unet'"):
        p.load([stack("a", Term("x", lora(6, 8), (1.0,)), component="unet")])
    with pytest.raises(LoraShapeError, match="net.b"):
        p.load([stack("a", Term("x", lora(6, 8), (1.0,))), stack("b", Term("bad", lora(6, 8), (1.0,)))])
    assert_same(before, net)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_midway_restores_everything(error):
    net = Net()
    before = snapshot(net)
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", lora(6, 8), (1.0,))), stack("c", Term("bad", Broken(error), (1.0,)))])
    expected = KeyboardInterrupt if error is KeyboardInterrupt else LoraApplyError
    with pytest.raises(expected):
        p.apply(1)
    assert_same(before, net)
    assert p.backup_bytes == 0


@pytest.mark.parametrize("room", [True, False], ids=["swap", "copy"])
def test_random_sequences_restore_bitwise(room, monkeypatch):
    import lora_syntax.patcher as patcher_module

    monkeypatch.setattr(patcher_module, "_room_on_device", lambda weight, needed: room)
    rng = random.Random(1234)
    for _ in range(25):
        net = Net(rng.choice([torch.float32, torch.float16, torch.bfloat16]))
        before = snapshot(net)
        p = Patcher({"net": net})
        for _ in range(rng.randint(1, 8)):
            op = rng.choice(["load", "apply", "apply", "fail", "badname", "restore"])
            weights = lambda: tuple(rng.choice([0.0, 0.5, 1.0, -1.0]) for _ in range(3))  # noqa: E731
            good = [stack("a", Term("x", lora(6, 8, seed=rng.randint(0, 9)), weights())),
                    stack("c", Term("y", lora(5, 4, kernel=(3, 3)), weights()), Term("s", Scale(), weights()))]
            if op == "load":
                p.load(rng.sample(good, rng.randint(1, 2)))
            elif op == "apply":
                p.apply(rng.randint(1, 3))
            elif op == "fail":
                p.load(good + [stack("b", Term("z", Broken(), (1.0,) * 3))])
                with pytest.raises(LoraApplyError):
                    p.apply(rng.randint(1, 3))
                assert_same(before, net)
            elif op == "badname":
                with pytest.raises(LoraApplyError):
                    p.load(good + [stack("zz", Term("z", lora(6, 8), (1.0,) * 3))])
            else:
                p.restore()
                assert_same(before, net)
        p.restore()
        assert_same(before, net)
        assert p.backup_bytes == 0


def test_reload_restores_modules_no_longer_in_stack():
    net = Net()
    before = snapshot(net)
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", lora(6, 8), (1.0,))), stack("b", Term("y", lora(4, 6), (1.0,)))])
    p.apply(1)
    p.load([stack("a", Term("x", lora(6, 8), (1.0,)))])
    assert torch.equal(net.b.weight, before[0]["b.weight"])
    assert not torch.equal(net.a.weight, before[0]["a.weight"])
    p.restore()
    assert_same(before, net)


def test_fp32_in_place_path_matches_reference():
    net = Net()
    w0 = net.a.weight.detach().clone()
    l1, l2 = lora(6, 8, seed=4), lora(6, 8, rank=3, seed=5, alpha=1.5)
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", l1, (0.5, 0.7)), Term("y", l2, (0.5, -0.3)))])
    for step, (m1, m2) in ((1, (0.5, 0.5)), (2, (0.7, -0.3))):
        p.apply(step)
        expected = w0 + m1 * l1.delta(w0) + m2 * l2.delta(w0)
        torch.testing.assert_close(net.a.weight, expected, rtol=1e-6, atol=1e-6)
    p.restore()
    assert torch.equal(net.a.weight, w0)


def test_zero_weights_on_pristine_module_write_nothing():
    net = Net()
    before = snapshot(net)
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", lora(6, 8), (0.0, 1.0, 0.0)))])
    assert p.apply(1).modules == 0
    assert_same(before, net)
    assert p.apply(2).modules == 1
    assert p.apply(3).modules == 1        # back to 0: the original must be written again
    assert torch.equal(net.a.weight, before[0]["a.weight"])
    p.restore()
    assert_same(before, net)


def test_original_tensors_are_never_written_and_come_back_by_swap():
    net = Net(torch.float16)
    original = net.a.weight.data            # the module's own tensor object
    saved = original.clone()
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", lora(6, 8), (1.0, 0.5, 0.0)))])
    for step in (1, 2, 3, 2):
        p.apply(step)
        assert torch.equal(original, saved)  # fused values went to an engine buffer, not into it
    assert net.a.weight.data_ptr() != original.data_ptr()
    p.restore()
    assert net.a.weight.data_ptr() == original.data_ptr() and torch.equal(net.a.weight, saved)
    assert p.backup_bytes == 0


def test_weights_back_at_zero_show_the_original_tensor_again():
    net = Net()
    original = net.a.weight.data
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", lora(6, 8), (1.0, 0.0)))])
    p.apply(1)
    assert net.a.weight.data_ptr() != original.data_ptr()
    assert p.apply(2).modules == 1
    assert net.a.weight.data_ptr() == original.data_ptr()


def test_copy_mode_when_the_device_has_no_room(monkeypatch):
    import lora_syntax.patcher as patcher_module

    monkeypatch.setattr(patcher_module, "_room_on_device", lambda weight, needed: False)
    net = Net(torch.bfloat16)
    before = snapshot(net)
    own = net.a.weight.data_ptr()
    l1 = lora(6, 8, seed=3)
    w0 = net.a.weight.detach().float().clone()
    p = Patcher({"net": net})
    p.load([stack("a", Term("x", l1, (0.5, 1.0)))])
    p.apply(1)
    assert net.a.weight.data_ptr() == own      # written in place; the original waits on the CPU
    assert torch.equal(net.a.weight, (w0 + 0.5 * l1.delta(w0)).bfloat16())
    assert p.backup_bytes >= net.a.weight.numel() * 2
    p.apply(2)
    p.restore()
    assert_same(before, net)


def test_restore_after_the_host_moved_the_parameter():
    # a host replacing the parameter's data (module.to(...)) after patching: restore copies the original in
    net = Net()
    before = snapshot(net)
    p = Patcher({"net": net})
    l1 = lora(6, 8)
    w0 = net.a.weight.detach().clone()
    p.load([stack("a", Term("x", l1, (1.0, 0.5)))])
    p.apply(1)
    net.a.weight.data = net.a.weight.data.clone()
    p.apply(2)                                  # still reaches the weights the module now uses
    torch.testing.assert_close(net.a.weight, w0 + 0.5 * l1.delta(w0), rtol=1e-6, atol=1e-6)
    p.restore()
    assert_same(before, net)


def within_one_rounding(got: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per element: ``got`` is one of the two ``got.dtype`` values either side of ``exact`` (a faithful rounding),
    i.e. ``exact`` lies strictly between ``got``'s neighbours."""
    below = torch.nextafter(got, torch.full_like(got, float("-inf"))).double()
    above = torch.nextafter(got, torch.full_like(got, float("inf"))).double()
    return (below < exact) & (exact < above)


def fp32_low_rank_sum(w0: torch.Tensor, terms) -> torch.Tensor:
    """``W0 + sum(m * U @ D)`` in fp32 as one GEMM over the concatenated factors, each up-factor scaled by its
    weight (or the common weight as the GEMM's alpha): the patcher's documented formula, written out here."""
    ups, downs = zip(*(adapter.low_rank(w0.shape) for _, adapter in terms))
    weights = [m for m, _ in terms]
    up, down = torch.cat(ups, dim=1).float(), torch.cat(downs, dim=0).float()
    if len(set(weights)) == 1:
        return w0.float().addmm_(up, down, alpha=weights[0])
    scale = torch.tensor([m for (m, _), u in zip(terms, ups) for _ in range(u.shape[1])])
    return w0.float().addmm_(up * scale, down)


def test_within_one_rounding_accepts_both_neighbours_only():
    exact = torch.tensor([1.0 + 2 ** -12], dtype=torch.float64)          # between 1 and 1 + 2**-10 in fp16
    one, next_up = torch.tensor([1.0], dtype=torch.float16), torch.tensor([1.0 + 2 ** -10], dtype=torch.float16)
    two_up = torch.tensor([1.0 + 2 ** -9], dtype=torch.float16)
    assert within_one_rounding(one, exact).all() and within_one_rounding(next_up, exact).all()
    assert not within_one_rounding(two_up, exact).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_the_exact_sum_rounded_once(dtype):
    # The half-precision path rounds an fp32 sum once into the module's dtype. Where W0 and the delta cancel,
    # the fp32 GEMM's own error can move the result by more than one half-precision step from the fp64 sum,
    # and by how much depends on the CPU's matmul kernel. The invariant that holds on every machine: each
    # element equals the fp32 sum computed the same way (one GEMM over the concatenated factors) rounded once,
    # or is within one rounding of the fp64 sum.
    lin = torch.nn.Linear(64, 48).to(dtype)
    w0 = lin.weight.detach().clone()
    l1, l2 = lora(48, 64, rank=4, seed=6, alpha=2.0), lora(48, 64, rank=8, seed=7)
    p = Patcher({"net": torch.nn.ModuleDict({"a": lin})})
    p.load([stack("a", Term("x", l1, (0.6, 0.6)), Term("y", l2, (0.6, -0.2)))])
    for step, (m1, m2) in ((1, (0.6, 0.6)), (2, (0.6, -0.2))):
        p.apply(step)
        exact = w0.double() + m1 * l1.delta(w0.float()).double() + m2 * l2.delta(w0.float()).double()
        fp32 = fp32_low_rank_sum(w0, ((m1, l1), (m2, l2))).to(dtype)
        got = lin.weight.detach()
        assert got.dtype == dtype
        assert ((got == fp32) | within_one_rounding(got, exact)).all()
    p.restore()
    assert torch.equal(lin.weight, w0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_both_half_precision_write_paths_round_the_same_fp32_sum(dtype):
    from lora_syntax.fusing import low_rank_into

    g = torch.Generator().manual_seed(8)
    w0 = torch.randn(40, 24, generator=g).to(dtype)
    up, down = torch.randn(40, 6, generator=g) * 0.1, torch.randn(6, 24, generator=g) * 0.1
    by_add, by_copy = torch.empty_like(w0), torch.empty_like(w0)
    low_rank_into(w0, up, down, 0.7, by_add, half_by_add=True)     # the CUDA way
    low_rank_into(w0, up, down, 0.7, by_copy, half_by_add=False)   # the CPU way
    reference = (w0.float() + 0.7 * (up @ down)).to(dtype)
    assert torch.equal(by_add, reference) and torch.equal(by_copy, reference)


def test_the_next_load_of_the_same_loras_skips_the_shape_check_and_a_changed_one_redoes_it(monkeypatch):
    net = Net()
    same = [stack("a", Term("x", lora(6, 8, seed=1), (0.5,))), stack("b", Term("y", lora(4, 6, seed=2), (1.0,)))]
    checked = []
    real = LoraAdapter.check_fits
    monkeypatch.setattr(LoraAdapter, "check_fits", lambda self, shape: checked.append(tuple(shape)) or real(self, shape))
    patcher = Patcher({"net": net})
    patcher.load(same)
    assert checked == [(6, 8), (4, 6)]
    patcher.apply(1)
    patcher.restore()
    patcher.load(same)                        # the next generation: same adapter objects, same modules
    assert len(checked) == 2
    patcher.restore()
    other = [same[0], stack("b", Term("y", lora(4, 6, seed=3), (1.0,)))]   # a new adapter on b
    patcher.load(other)
    assert checked[2:] == [(4, 6)]
    patcher.release_factors()                 # what was checked goes with the kept factors
    patcher.load(other)
    assert checked[3:] == [(6, 8), (4, 6)]
    wrong = stack("b", Term("z", lora(4, 7, seed=4), (1.0,)))
    with pytest.raises(LoraShapeError, match="'z'"):
        patcher.load([same[0], wrong])        # a is skipped; b is checked and refused
    assert checked[5:] == [(4, 6)]
    patcher.restore()
    patcher.load(other)                       # the failed load left what was checked before as it was
    assert len(checked) == 6
