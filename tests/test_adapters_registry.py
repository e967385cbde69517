"""The registry (choice by key signature, leftover and doubly-claimed keys), DoRA wrapping, DyLoRA
truncation, the low-rank fast path, row slicing for fused modules, devices and shape errors."""

from __future__ import annotations

import pytest
import torch

from lora_syntax.adapters import (
    DoraAdapter, FullAdapter, GloraAdapter, Ia3Adapter, LohaAdapter, LokrAdapter, LoraAdapter, NormAdapter,
    RowSlice, build_adapter, sliced,
)
from lora_syntax.adapters.base import Adapter
from lora_syntax.adapters.dora import dora_weight
from lora_syntax.errors import LoraFileError, LoraShapeError

OUT, IN, RANK, K = 12, 6, 3, 3


def rnd(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 7 * len(shape)))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


# one parameter set per type: (params, weight shape, class, kind)
CASES = {
    "lora": ({"lora_up.weight": rnd(OUT, RANK), "lora_down.weight": rnd(RANK, IN, seed=1),
              "alpha": torch.tensor(2.0)}, (OUT, IN), LoraAdapter, "lora"),
    "lora_conv": ({"lora_up.weight": rnd(OUT, RANK, 1, 1), "lora_down.weight": rnd(RANK, IN, K, K, seed=1)},
                  (OUT, IN, K, K), LoraAdapter, "lora"),
    "lora_tucker": ({"lora_up.weight": rnd(OUT, RANK, 1, 1), "lora_down.weight": rnd(RANK, IN, 1, 1, seed=1),
                     "lora_mid.weight": rnd(RANK, RANK, K, K, seed=2), "alpha": torch.tensor(1.0)},
                    (OUT, IN, K, K), LoraAdapter, "lora"),
    "loha": ({"hada_w1_a": rnd(OUT, RANK), "hada_w1_b": rnd(RANK, IN, seed=1), "hada_w2_a": rnd(OUT, RANK, seed=2),
              "hada_w2_b": rnd(RANK, IN, seed=3), "alpha": torch.tensor(1.0)}, (OUT, IN), LohaAdapter, "loha"),
    "loha_tucker": ({"hada_w1_a": rnd(RANK, OUT), "hada_w1_b": rnd(RANK, IN, seed=1),
                     "hada_w2_a": rnd(RANK, OUT, seed=2), "hada_w2_b": rnd(RANK, IN, seed=3),
                     "hada_t1": rnd(RANK, RANK, K, K, seed=4), "hada_t2": rnd(RANK, RANK, K, K, seed=5)},
                    (OUT, IN, K, K), LohaAdapter, "loha"),
    "lokr": ({"lokr_w1": rnd(3, 2), "lokr_w2_a": rnd(4, 2, seed=1), "lokr_w2_b": rnd(2, 3, seed=2),
              "alpha": torch.tensor(1.0)}, (OUT, IN), LokrAdapter, "lokr"),
    "full": ({"diff": rnd(OUT, IN), "diff_b": rnd(OUT, seed=1)}, (OUT, IN), FullAdapter, "full"),
    "ia3_out": ({"weight": rnd(OUT), "on_input": torch.tensor(0)}, (OUT, IN), Ia3Adapter, "ia3"),
    "ia3_in": ({"weight": rnd(IN), "on_input": torch.tensor(1)}, (OUT, IN), Ia3Adapter, "ia3"),
    "norm": ({"w_norm": rnd(OUT), "b_norm": rnd(OUT, seed=1)}, (OUT,), NormAdapter, "norm"),
    "glora": ({"a1.weight": rnd(IN, RANK), "a2.weight": rnd(RANK, IN, seed=1), "b1.weight": rnd(OUT, RANK, seed=2),
               "b2.weight": rnd(RANK, IN, seed=3), "alpha": torch.tensor(1.0)}, (OUT, IN), GloraAdapter, "glora"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_signature_selects_the_type(name):
    params, shape, cls, kind = CASES[name]
    adapter = build_adapter(params, where="unet.x")
    assert type(adapter) is cls and adapter.kind == kind and adapter.where == "unet.x"
    delta = adapter.delta(rnd(*shape, seed=9))
    assert delta.dtype == torch.float32 and delta.shape == shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_check_agrees_with_the_meta_computation(name):
    params, shape, _, _ = CASES[name]
    adapter = build_adapter(params, where="unet.x")
    assert adapter.check_fits(shape) == Adapter.check_fits(adapter, shape) == torch.Size(shape)
    flat = (shape[0], torch.Size(shape[1:]).numel()) if len(shape) > 1 else shape
    assert adapter.check_fits(flat) == torch.Size(flat)      # a conv LoRA may patch a linear of the same size
    wrong = tuple(n + 1 for n in shape)
    with pytest.raises((LoraShapeError, RuntimeError)):
        adapter.check_fits(wrong)


def test_leftover_keys_are_named():
    params = dict(CASES["lora"][0]) | {"lora_up.bias": rnd(OUT), "scale": torch.tensor(1.0)}
    with pytest.raises(LoraFileError, match=r"unet\.mid.*lora_up\.bias, scale"):
        build_adapter(params, where="unet.mid")


def test_keys_of_two_types_are_refused_and_named():
    params = dict(CASES["lora"][0]) | dict(CASES["loha"][0])
    with pytest.raises(LoraFileError, match=r"te\.q.*lora: alpha, lora_down\.weight.*loha: alpha, hada_w1_a"):
        build_adapter(params, where="te.q")


def test_unknown_and_incomplete_modules_are_refused():
    with pytest.raises(LoraFileError, match=r"m1: no adapter type recognises the keys foo"):
        build_adapter({"foo": rnd(3)}, where="m1")
    with pytest.raises(LoraFileError, match=r"m2: no adapter type.*lora_up\.weight"):
        build_adapter({"lora_up.weight": rnd(3, 1)}, where="m2")
    with pytest.raises(LoraFileError, match=r"m3: LoHa adapter is missing hada_w2_a, hada_w2_b"):
        build_adapter({"hada_w1_a": rnd(3, 1), "hada_w1_b": rnd(1, 2)}, where="m3")
    with pytest.raises(LoraFileError, match=r"m4: LoKr adapter needs lokr_w2"):
        build_adapter({"lokr_w1": rnd(3, 1)}, where="m4")


@pytest.mark.parametrize("name", ["lora", "lora_conv", "lora_tucker", "loha", "loha_tucker", "lokr", "full", "glora"])
@pytest.mark.parametrize("on_out", [True, False])
def test_dora_scale_wraps_any_base_type(name, on_out):
    params, shape, cls, _ = CASES[name]
    kernel = shape[2:]
    magnitude = rnd(*((OUT, 1) if on_out else (1, IN)), *[1] * len(kernel), seed=5).abs()
    adapter = build_adapter(dict(params) | {"dora_scale": magnitude}, where="t")
    assert isinstance(adapter, DoraAdapter) and type(adapter.base) is cls and not adapter.additive
    weight = rnd(*shape, seed=6)
    base_delta = build_adapter(params, where="t").delta(weight)
    expected = dora_weight(weight + base_delta, magnitude, on_out)
    close(adapter.patched(weight, 1.0), expected)
    close(adapter.patched(weight, 0.3), weight + 0.3 * (expected - weight))
    close(adapter.delta(weight), expected - weight)


def test_dora_scale_of_no_axis_is_a_shape_error():
    params = dict(CASES["lora"][0]) | {"dora_scale": rnd(5, 1)}
    with pytest.raises(LoraShapeError, match="dora_scale"):
        build_adapter(params, where="t").patched(rnd(OUT, IN), 1.0)


@pytest.mark.parametrize("name", ["lora", "lora_conv", "lora_tucker"])
def test_dylora_truncation_equals_sliced_factors(name):
    params, shape, _, _ = CASES[name]
    adapter = build_adapter(params, where="t")
    assert adapter.rank == RANK and adapter.truncated(RANK) is adapter and adapter.truncated(99) is adapter
    small = adapter.truncated(2)
    cut = {"lora_up.weight": params["lora_up.weight"][:, :2], "lora_down.weight": params["lora_down.weight"][:2]}
    if "lora_mid.weight" in params:
        cut["lora_mid.weight"] = params["lora_mid.weight"][:2, :2]
    if "alpha" in params:
        cut["alpha"] = params["alpha"]  # alpha kept: the scale becomes alpha / 2
    weight = torch.zeros(shape)
    assert small.rank == 2
    close(small.delta(weight), build_adapter(cut, where="t").delta(weight))


@pytest.mark.parametrize("name,shape", [("lora", (OUT, IN)), ("lora_conv", (OUT, IN, K, K)),
                                        ("lora_tucker", (OUT, IN, K, K)), ("lora", (OUT, IN, 1, 1))])
def test_low_rank_product_equals_delta(name, shape):
    adapter = build_adapter(CASES[name][0], where="t")
    up, down = adapter.low_rank(torch.Size(shape))
    assert up.dtype == down.dtype == torch.float32 and up.dim() == down.dim() == 2
    assert up.shape[1] == down.shape[0] == RANK
    close((up @ down).reshape(shape), adapter.delta(torch.zeros(shape)))


def test_low_rank_is_none_for_other_types():
    assert build_adapter(CASES["loha"][0], where="t").low_rank(torch.Size((OUT, IN))) is None


@pytest.mark.parametrize("name", sorted(CASES))
def test_sliced_equals_rows_of_the_full_delta(name):
    params, shape, _, _ = CASES[name]
    adapter = build_adapter(params, where="t")
    weight = rnd(*shape, seed=11)
    full = adapter.delta(weight)
    for start, stop in ((0, 4), (4, 8), (8, 12)):
        part = sliced(adapter, start, stop)
        close(part.delta(weight[start:stop]), full[start:stop])
        if adapter.bias_delta() is not None:
            close(part.bias_delta(), adapter.bias_delta()[start:stop])
    if type(adapter) is LoraAdapter:
        assert type(sliced(adapter, 0, 4)) is LoraAdapter  # keeps the low-rank fast path
        up, down = sliced(adapter, 0, 4).low_rank(torch.Size((4, *shape[1:])))
        close((up @ down).reshape(4, *shape[1:]), full[:4])
    if type(adapter) is LokrAdapter:
        assert isinstance(sliced(adapter, 0, 4), RowSlice) and sliced(adapter, 0, 4).kind == "lokr"


def test_sliced_dora_per_output_row_and_refused_per_input_column():
    params = dict(CASES["lora"][0])
    weight = rnd(OUT, IN, seed=12)
    on_out = build_adapter(params | {"dora_scale": rnd(OUT, 1).abs()}, where="t")
    close(sliced(on_out, 4, 8).patched(weight[4:8], 0.5), on_out.patched(weight, 0.5)[4:8])
    on_in = build_adapter(params | {"dora_scale": rnd(1, IN).abs()}, where="flux.qkv")
    with pytest.raises(LoraFileError, match="flux.qkv.*cannot be split"):
        sliced(on_in, 0, 4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_checks_on_meta_weights(name):
    params, shape, _, _ = CASES[name]
    adapter = build_adapter(params, where="unet.q").to("meta")
    assert adapter.delta(torch.empty(shape, device="meta")).shape == shape
    wrong = (*(s + 1 for s in shape[:2]), *shape[2:])
    with pytest.raises(LoraShapeError, match=r"unet\.q|fits neither"):
        adapter.delta(torch.empty(wrong, device="meta"))


def test_low_precision_factors_give_fp32_deltas_and_to_keeps_dtype():
    params = {k: v.to(torch.float16) for k, v in CASES["lora"][0].items()}
    adapter = build_adapter(params, where="t")
    assert adapter.delta(torch.zeros(OUT, IN, dtype=torch.float16)).dtype == torch.float32
    moved = adapter.to("cpu")
    assert moved.up.dtype == torch.float16 and moved.alpha == adapter.alpha
    assert "float16[12, 3]" in repr(adapter)


@pytest.mark.parametrize("params", [
    {"lora_up.weight": rnd(OUT, 4), "lora_down.weight": rnd(RANK, IN)},
    {"lora_up.weight": rnd(OUT, RANK, 1, 1), "lora_down.weight": rnd(RANK, IN, 1, 1),
     "lora_mid.weight": rnd(2, 2, K, K)},
    {"hada_w1_a": rnd(OUT, RANK), "hada_w1_b": rnd(RANK, IN), "hada_w2_a": rnd(OUT, 2), "hada_w2_b": rnd(RANK, IN)},
    {"lokr_w1": rnd(3, 2), "lokr_w2_a": rnd(4, 2), "lokr_w2_b": rnd(3, 3)},
    {"a1.weight": rnd(IN, RANK), "a2.weight": rnd(2, IN), "b1.weight": rnd(OUT, RANK), "b2.weight": rnd(RANK, IN)},
])
def test_factors_that_do_not_multiply_are_a_shape_error_naming_the_module(params):
    with pytest.raises(LoraShapeError, match=r"^unet\.up\.0: .*do not fit each other"):
        build_adapter(params, where="unet.up.0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CASES))
def test_deltas_follow_the_weight_device(name):
    params, shape, _, _ = CASES[name]
    adapter = build_adapter(params, where="t")          # factors stay on the CPU
    weight = rnd(*shape, seed=13)
    on_gpu = adapter.delta(weight.cuda())
    assert on_gpu.is_cuda
    close(on_gpu.cpu(), adapter.delta(weight))
