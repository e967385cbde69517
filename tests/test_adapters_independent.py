"""Each adapter type checked a second way, independent of LyCORIS: by what the layer computes
(conv chains, forward passes) or by building the product element by element."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_syntax.adapters.registry import build_adapter

OUT, IN, RANK, K = 8, 6, 3, 3


def rnd(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


def test_lora_linear_is_a_sum_of_outer_products():
    up, down = rnd(OUT, RANK, seed=1), rnd(RANK, IN, seed=2)
    adapter = build_adapter({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.5)}, where="t")
    expected = sum(torch.outer(up[:, r], down[r]) for r in range(RANK)) * (1.5 / RANK)
    close(adapter.delta(torch.zeros(OUT, IN)), expected)


def test_lora_without_alpha_has_scale_one():
    up, down = rnd(OUT, RANK, seed=1), rnd(RANK, IN, seed=2)
    for params in ({}, {"alpha": torch.tensor(0.0)}):
        adapter = build_adapter({"lora_up.weight": up, "lora_down.weight": down, **params}, where="t")
        close(adapter.delta(torch.zeros(OUT, IN)), up @ down)


@pytest.mark.parametrize("tucker", [False, True])
def test_conv_lora_equals_the_conv_chain(tucker):
    x = rnd(2, IN, 7, 7, seed=3)
    up = rnd(OUT, RANK, 1, 1, seed=1)
    down = rnd(RANK, IN, 1, 1, seed=2) if tucker else rnd(RANK, IN, K, K, seed=2)
    params = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}
    h = F.conv2d(x, down)
    if tucker:
        params["lora_mid.weight"] = mid = rnd(RANK, RANK, K, K, seed=4)
        h = F.conv2d(h, mid)
    chain = F.conv2d(h, up) * (2.0 / RANK)
    delta = build_adapter(params, where="t").delta(torch.zeros(OUT, IN, K, K))
    close(F.conv2d(x, delta), chain)


@pytest.mark.parametrize("tucker", [False, True])
def test_loha_elementwise(tucker):
    if tucker:
        a1, b1, a2, b2 = rnd(RANK, OUT, seed=1), rnd(RANK, IN, seed=2), rnd(RANK, OUT, seed=3), rnd(RANK, IN, seed=4)
        t1, t2 = rnd(RANK, RANK, K, K, seed=5), rnd(RANK, RANK, K, K, seed=6)

        def half(a, t, b):  # tensordot path: (p, q, kh, kw) = sum_ij a[i,p] t[i,j,..] b[j,q]
            tb = torch.tensordot(t, b, dims=([1], [0]))          # (i, kh, kw, q)
            return torch.tensordot(a, tb, dims=([0], [0])).permute(0, 3, 1, 2)
        expected = half(a1, t1, b1) * half(a2, t2, b2)
        extra, shape = {"hada_t1": t1, "hada_t2": t2}, (OUT, IN, K, K)
    else:
        a1, b1, a2, b2 = rnd(OUT, RANK, seed=1), rnd(RANK, IN, seed=2), rnd(OUT, RANK, seed=3), rnd(RANK, IN, seed=4)
        expected = torch.einsum("pr,rq,ps,sq->pq", a1, b1, a2, b2)
        extra, shape = {}, (OUT, IN)
    params = {"hada_w1_a": a1, "hada_w1_b": b1, "hada_w2_a": a2, "hada_w2_b": b2, "alpha": torch.tensor(1.0)} | extra
    close(build_adapter(params, where="t").delta(torch.zeros(shape)), expected * (1.0 / RANK))


def kron_by_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """w1 ⊗ w2 assembled block by block (w2 may carry a conv kernel)."""
    rows = [torch.cat([w1[i, j] * w2 for j in range(w1.shape[1])], dim=1) for i in range(w1.shape[0])]
    return torch.cat(rows, dim=0)


@pytest.mark.parametrize("layout", ["full_full", "full_lowrank", "lowrank_lowrank", "conv_full", "conv_tucker"])
def test_lokr_block_assembly_and_scale_rule(layout):
    alpha, r = 3.0, 2
    kernel = (K, K) if layout.startswith("conv") else ()
    params: dict = {"alpha": torch.tensor(alpha)}
    if layout == "lowrank_lowrank":
        params |= {"lokr_w1_a": rnd(4, r, seed=1), "lokr_w1_b": rnd(r, 2, seed=2)}
        w1 = params["lokr_w1_a"] @ params["lokr_w1_b"]
    else:
        params["lokr_w1"] = w1 = rnd(4, 2, seed=1)
    if layout in ("full_full", "conv_full"):
        params["lokr_w2"] = w2 = rnd(4, 6, *kernel, seed=3)
    elif layout == "conv_tucker":
        a, b, t = rnd(r, 4, seed=3), rnd(r, 6, seed=4), rnd(r, r, K, K, seed=5)
        params |= {"lokr_w2_a": a, "lokr_w2_b": b, "lokr_t2": t}
        w2 = torch.stack([torch.stack([sum(a[i, p] * t[i, j] * b[j, q] for i in range(r) for j in range(r))
                                       for q in range(6)]) for p in range(4)])
    else:
        params |= {"lokr_w2_a": rnd(4, r, seed=3), "lokr_w2_b": rnd(r, 6, seed=4)}
        w2 = params["lokr_w2_a"] @ params["lokr_w2_b"]
    decomposed = layout not in ("full_full", "conv_full")
    scale = alpha / r if decomposed else 1.0       # LyCORIS: alpha is ignored when both factors are full
    adapter = build_adapter(params, where="t")
    close(adapter.delta(torch.zeros(16, 12, *kernel)), kron_by_blocks(w1, w2) * scale)
    assert adapter.rank == (r if decomposed else None)


@pytest.mark.parametrize("on_out", [True, False])
@pytest.mark.parametrize("conv", [False, True])
def test_dora_equals_the_paper_formula(on_out, conv):
    kernel = (K, K) if conv else ()
    weight, up = rnd(OUT, IN, *kernel, seed=1), rnd(OUT, RANK, *((1, 1) if conv else ()), seed=2)
    down = rnd(RANK, IN, *kernel, seed=3)
    magnitude = rnd(*((OUT, 1) if on_out else (1, IN)), *((1, 1) if conv else ()), seed=4).abs()
    adapter = build_adapter({"lora_up.weight": up, "lora_down.weight": down, "dora_scale": magnitude}, where="t")
    v = weight + (up.reshape(OUT, RANK) @ down.reshape(RANK, -1)).reshape(weight.shape)
    # DoRA (Liu et al. 2024): W' = m · V / ||V||, the norm over everything but the magnitude's axis
    expected = torch.empty_like(v)
    for c in range(v.shape[0 if on_out else 1]):
        part = v[c] if on_out else v[:, c]
        scaled = magnitude.flatten()[c] * part / torch.sqrt((part ** 2).sum())
        if on_out:
            expected[c] = scaled
        else:
            expected[:, c] = scaled
    close(adapter.patched(weight, 1.0), expected)
    close(adapter.patched(weight, 0.25), weight + 0.25 * (expected - weight))
    close(adapter.patched(weight, 0.0), weight)


def test_full_is_the_stored_difference():
    diff, diff_b = rnd(OUT, IN, seed=1), rnd(OUT, seed=2)
    adapter = build_adapter({"diff": diff.bfloat16(), "diff_b": diff_b.bfloat16()}, where="t")
    assert torch.equal(adapter.delta(torch.zeros(OUT, IN)), diff.bfloat16().float())
    assert torch.equal(adapter.bias_delta(), diff_b.bfloat16().float())
    weight = rnd(OUT, IN, seed=3)
    close(adapter.patched(weight, 0.5), weight + 0.5 * diff.bfloat16().float())


@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_rescales_the_layer_output_or_input(on_input):
    weight, x = rnd(OUT, IN, seed=1), rnd(5, IN, seed=2)
    scales = rnd(IN if on_input else OUT, seed=3)
    adapter = build_adapter({"weight": scales, "on_input": torch.tensor(int(on_input))}, where="t")
    assert adapter.additive  # W ⊙ (1 + m·w) is linear in m
    m = 0.7
    out = F.linear(x, adapter.patched(weight, m))
    expected = F.linear(x * (1 + m * scales), weight) if on_input else F.linear(x, weight) * (1 + m * scales)
    close(out, expected)


def test_norm_changes_the_affine_parameters():
    w_norm, b_norm, x = rnd(OUT, seed=1), rnd(OUT, seed=2), rnd(3, OUT, seed=3)
    norm = torch.nn.LayerNorm(OUT)
    adapter = build_adapter({"w_norm": w_norm, "b_norm": b_norm}, where="t")
    weight, bias = adapter.patched(norm.weight.detach(), 0.5), norm.bias.detach() + 0.5 * adapter.bias_delta()
    out = F.layer_norm(x, (OUT,), weight, bias)
    expected = F.layer_norm(x, (OUT,), norm.weight.detach() + 0.5 * w_norm, norm.bias.detach() + 0.5 * b_norm)
    close(out, expected)


def test_glora_forward_chain():
    weight, x = rnd(OUT, IN, seed=1), rnd(5, IN, seed=2)
    a1, a2, b1, b2 = rnd(IN, RANK, seed=3), rnd(RANK, IN, seed=4), rnd(OUT, RANK, seed=5), rnd(RANK, IN, seed=6)
    adapter = build_adapter({"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2,
                             "alpha": torch.tensor(1.0)}, where="t")
    # Δy = s·(W (a1 (a2 x)) + b1 (b2 x)), evaluated as successive layers
    expected = (F.linear(F.linear(F.linear(x, a2), a1), weight) + F.linear(F.linear(x, b2), b1)) / RANK
    close(F.linear(x, adapter.delta(weight)), expected)
