"""Every adapter type against the ``lycoris-lora`` package's own maths (functional and module paths).

Per dtype, factors are drawn in fp32 and rounded to the file dtype. Our fp32 delta must equal
LyCORIS fed the same (rounded) tensors upcast to fp32 to fp32 tolerance, and LyCORIS computing in the
file dtype itself to that dtype's tolerance.
"""

from __future__ import annotations

import pytest
import torch

from lora_syntax.adapters.registry import build_adapter

lycoris_functional = pytest.importorskip("lycoris.functional")
from lycoris.functional import loha as f_loha  # noqa: E402
from lycoris.functional import locon as f_locon  # noqa: E402
from lycoris.functional import lokr as f_lokr  # noqa: E402
from lycoris.functional.general import weight_decompose  # noqa: E402
from lycoris.modules.full import FullModule  # noqa: E402
from lycoris.modules.glora import GLoRAModule  # noqa: E402
from lycoris.modules.ia3 import IA3Module  # noqa: E402
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.norms import NormModule  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# relative to the reference's largest magnitude: the file dtype's own rounding of the computation
LOWP_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
OUT, IN, RANK, K = 8, 6, 3, 3


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def rnd(*shape: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + sum(shape) * 31 + len(shape))
    return torch.randn(*shape, generator=g).to(dtype)


def assert_matches(ours: torch.Tensor, exact: torch.Tensor, lowp: torch.Tensor, dtype: torch.dtype) -> None:
    """``ours`` (fp32) equals LyCORIS in fp32 tightly, and LyCORIS in ``dtype`` within its rounding."""
    assert ours.dtype == torch.float32
    exact, lowp = exact.float().reshape(ours.shape), lowp.float().reshape(ours.shape)
    scale = exact.abs().max().item()
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(ours, lowp, rtol=LOWP_TOL[dtype], atol=LOWP_TOL[dtype] * scale)


def both(fn, tensors: dict, dtype: torch.dtype):
    """LyCORIS' ``fn`` run on fp32 copies and on the file-dtype tensors themselves."""
    up = {k: (None if v is None else v.float()) for k, v in tensors.items()}
    return fn(**up), fn(**tensors)


# ---------------------------------------------------------------- LoRA / LoCon

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["linear", "conv1x1", "conv3x3", "tucker"])
def test_lora_matches_lycoris_functional(dtype, layout):
    kernel = {"linear": (), "conv1x1": (1, 1), "conv3x3": (K, K), "tucker": (K, K)}[layout]
    ones = (1, 1) if kernel else ()
    down = rnd(RANK, IN, *(ones if layout == "tucker" else kernel), dtype=dtype)
    up = rnd(OUT, RANK, *ones, dtype=dtype, seed=1)
    mid = rnd(RANK, RANK, *kernel, dtype=dtype, seed=2) if layout == "tucker" else None
    params = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0, dtype=dtype)}
    if mid is not None:
        params["lora_mid.weight"] = mid
    ours = build_adapter(params, where="t").delta(torch.zeros(OUT, IN, *kernel))
    exact, lowp = both(lambda d, u, m: f_locon.diff_weight(d, u, m, gamma=2.0 / RANK),
                       {"d": down, "u": up, "m": mid}, dtype)
    assert_matches(ours, exact, lowp, dtype)


@pytest.mark.parametrize("tucker", [False, True])
def test_lora_matches_lycoris_module_merge(tucker):
    conv = torch.nn.Conv2d(IN, OUT, K, bias=False)
    down = rnd(RANK, IN, *((1, 1) if tucker else (K, K)), dtype=torch.float32)
    up = rnd(OUT, RANK, 1, 1, dtype=torch.float32, seed=1)
    mid = rnd(RANK, RANK, K, K, dtype=torch.float32, seed=2) if tucker else None
    module = LoConModule.make_module_from_state_dict("m", conv, up, down, mid, torch.tensor(1.5), None)
    params = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(1.5)}
    if tucker:
        params["lora_mid.weight"] = mid
    adapter = build_adapter(params, where="t")
    merged, _ = module.get_merged_weight(multiplier=0.7)
    torch.testing.assert_close(adapter.patched(conv.weight, 0.7), merged, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- LoHa

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["linear", "conv_flat", "tucker"])
def test_loha_matches_lycoris_functional(dtype, layout):
    kernel = () if layout == "linear" else (K, K)
    if layout == "tucker":
        a_shape, b_shape = (RANK, OUT), (RANK, IN)
    else:
        a_shape, b_shape = (OUT, RANK), (RANK, IN * K * K if kernel else IN)
    t = {f"w{i}{s}": rnd(*(a_shape if s == "a" else b_shape), dtype=dtype, seed=10 * i + (s == "b"))
         for i in (1, 2) for s in "ab"}
    t1 = rnd(RANK, RANK, *kernel, dtype=dtype, seed=7) if layout == "tucker" else None
    t2 = rnd(RANK, RANK, *kernel, dtype=dtype, seed=8) if layout == "tucker" else None
    params = {f"hada_w{i}_{s}": t[f"w{i}{s}"] for i in (1, 2) for s in "ab"}
    params["alpha"] = torch.tensor(4.0)
    if t1 is not None:
        params |= {"hada_t1": t1, "hada_t2": t2}
    ours = build_adapter(params, where="t").delta(torch.zeros(OUT, IN, *kernel))
    def fn(w1d, w1u, w2d, w2u, t1, t2):
        return f_loha.diff_weight(w1d, w1u, w2d, w2u, t1, t2, gamma=4.0 / RANK)
    exact, lowp = both(fn, {"w1d": t["w1b"], "w1u": t["w1a"], "w2d": t["w2b"], "w2u": t["w2a"],
                            "t1": t1, "t2": t2}, dtype)
    assert_matches(ours, exact, lowp, dtype)


def test_loha_matches_lycoris_module_at_unit_scale():
    # LyCORIS 4.1.3's LohaModule/LokrModule.get_diff_weight apply alpha/rank twice (get_weight already
    # scales), so the module path is only a reference at alpha == rank; the functional path covers the rest.
    lin = torch.nn.Linear(IN, OUT, bias=False)
    w1a, w1b, w2a, w2b = (rnd(*s, dtype=torch.float32, seed=i)
                          for i, s in enumerate([(OUT, RANK), (RANK, IN), (OUT, RANK), (RANK, IN)]))
    module = LohaModule.make_module_from_state_dict("m", lin, w1a, w1b, w2a, w2b, None, None,
                                                    torch.tensor(float(RANK)), None)
    adapter = build_adapter({"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b,
                             "alpha": torch.tensor(float(RANK))}, where="t")
    torch.testing.assert_close(adapter.delta(lin.weight), module.get_diff_weight()[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- LoKr

LOKR_LAYOUTS = {
    # name: (w1 full?, w2 kind, kernel)
    "full_full": (True, "full", ()),
    "full_lowrank": (True, "lowrank", ()),
    "both_lowrank": (False, "lowrank", ()),
    "lowrank_full": (False, "full", ()),
    "conv_full_full": (True, "full", (K, K)),
    "conv_lowrank_flat": (True, "lowrank_flat", (K, K)),
    "conv_tucker": (True, "tucker", (K, K)),
}


def lokr_factors(layout: str, dtype: torch.dtype) -> dict:
    """Factors for a (4·4, 2·6, *k) LoKr: w1 (4, 2), w2 (4, 6[, k, k]); rank 2."""
    w1_full, w2_kind, kernel = LOKR_LAYOUTS[layout]
    r = 2
    f = {"w1": None, "w1a": None, "w1b": None, "w2": None, "w2a": None, "w2b": None, "t": None}
    if w1_full:
        f["w1"] = rnd(4, 2, dtype=dtype, seed=1)
    else:
        f["w1a"], f["w1b"] = rnd(4, r, dtype=dtype, seed=2), rnd(r, 2, dtype=dtype, seed=3)
    if w2_kind == "full":
        f["w2"] = rnd(4, 6, *kernel, dtype=dtype, seed=4)
    elif w2_kind == "lowrank":
        f["w2a"], f["w2b"] = rnd(4, r, dtype=dtype, seed=5), rnd(r, 6, dtype=dtype, seed=6)
    elif w2_kind == "lowrank_flat":
        f["w2a"], f["w2b"] = rnd(4, r, dtype=dtype, seed=5), rnd(r, 6 * K * K, dtype=dtype, seed=6)
    else:
        f["w2a"], f["w2b"] = rnd(r, 4, dtype=dtype, seed=5), rnd(r, 6, dtype=dtype, seed=6)
        f["t"] = rnd(r, r, *kernel, dtype=dtype, seed=7)
    return f


def lokr_params(f: dict, alpha: float) -> dict:
    names = {"w1": "lokr_w1", "w1a": "lokr_w1_a", "w1b": "lokr_w1_b", "w2": "lokr_w2",
             "w2a": "lokr_w2_a", "w2b": "lokr_w2_b", "t": "lokr_t2"}
    return {names[k]: v for k, v in f.items() if v is not None} | {"alpha": torch.tensor(alpha)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", sorted(LOKR_LAYOUTS))
def test_lokr_matches_lycoris_functional(dtype, layout):
    f = lokr_factors(layout, dtype)
    kernel = LOKR_LAYOUTS[layout][2]
    ours = build_adapter(lokr_params(f, alpha=3.0), where="t").delta(torch.zeros(16, 12, *kernel))
    decomposed = f["w1"] is None or f["w2"] is None
    scale = 3.0 / 2 if decomposed else 1.0  # alpha/rank only when a factor is decomposed
    fn = lambda **k: f_lokr.kron_weight(**k, scale=scale)  # noqa: E731
    exact, lowp = both(fn, f, dtype)
    assert_matches(ours, exact, lowp, dtype)
    if f["t"] is None:
        # LyCORIS' own scale rule (functional.lokr.diff_weight takes alpha as gamma) agrees
        exact_rule = f_lokr.diff_weight(*(None if v is None else v.float() for v in f.values()), gamma=3.0)
        torch.testing.assert_close(ours, exact_rule.reshape(ours.shape), rtol=1e-5, atol=1e-5 * ours.abs().max())


# ---------------------------------------------------------------- DoRA

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("on_out", [True, False])
@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_dora_matches_lycoris_weight_decompose(dtype, on_out, multiplier):
    weight = rnd(OUT, IN, K, K, dtype=dtype, seed=20)
    down, up = rnd(RANK, IN, K, K, dtype=dtype, seed=21), rnd(OUT, RANK, 1, 1, dtype=dtype, seed=22)
    magnitude = (rnd(OUT, 1, 1, 1, dtype=dtype, seed=23) if on_out else rnd(1, IN, 1, 1, dtype=dtype, seed=23)).abs()
    adapter = build_adapter({"lora_up.weight": up, "lora_down.weight": down, "dora_scale": magnitude,
                             "alpha": torch.tensor(1.0)}, where="t")
    assert not adapter.additive and adapter.kind == "dora"

    def ref(w, d, u, s):
        merged = w + f_locon.diff_weight(d, u, None, gamma=1.0 / RANK)
        target = weight_decompose(merged, s, 1, on_out)
        return w + multiplier * (target - w)  # ComfyUI/LyCORIS at multiplier 1: W + m·(W_dora − W)
    exact, lowp = both(ref, {"w": weight, "d": down, "u": up, "s": magnitude}, dtype)
    assert_matches(adapter.patched(weight, multiplier), exact, lowp, dtype)


def test_dora_matches_lycoris_module_merge():
    lin = torch.nn.Linear(IN, OUT, bias=False)
    up, down = rnd(OUT, RANK, dtype=torch.float32, seed=1), rnd(RANK, IN, dtype=torch.float32, seed=2)
    magnitude = rnd(OUT, 1, dtype=torch.float32, seed=3).abs() + 0.5
    module = LoConModule.make_module_from_state_dict("m", lin, up, down, None, torch.tensor(2.0), magnitude)
    adapter = build_adapter({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0),
                             "dora_scale": magnitude}, where="t")
    torch.testing.assert_close(adapter.patched(lin.weight, 1.0), module.get_merged_weight(1.0)[0],
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- full, norm, IA3, GLoRA (module paths)

@pytest.mark.parametrize("dtype", DTYPES)
def test_full_matches_lycoris_module(dtype):
    lin = torch.nn.Linear(IN, OUT)
    diff, diff_b = rnd(OUT, IN, dtype=dtype, seed=1), rnd(OUT, dtype=dtype, seed=2)
    module = FullModule.make_module_from_state_dict("m", lin, diff, diff_b)
    adapter = build_adapter({"diff": diff, "diff_b": diff_b}, where="t")
    ref_w, ref_b = module.get_diff_weight(multiplier=1)
    torch.testing.assert_close(adapter.delta(lin.weight), ref_w.float(), rtol=0, atol=0)
    torch.testing.assert_close(adapter.bias_delta(), ref_b.float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_matches_lycoris_module(dtype):
    norm = torch.nn.LayerNorm(OUT)
    w_norm, b_norm = rnd(OUT, dtype=dtype, seed=1), rnd(OUT, dtype=dtype, seed=2)
    module = NormModule.make_module_from_state_dict("m", norm, w_norm, b_norm)
    adapter = build_adapter({"w_norm": w_norm, "b_norm": b_norm}, where="t")
    ref_w, ref_b = module.get_merged_weight(multiplier=1)
    torch.testing.assert_close(adapter.patched(norm.weight, 1.0), ref_w.float(), rtol=0, atol=0)
    torch.testing.assert_close(norm.bias + adapter.bias_delta(), ref_b.float(), rtol=0, atol=0)


@pytest.mark.parametrize("on_input", [False, True])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("multiplier", [1.0, 0.4])
def test_ia3_matches_lycoris_module(on_input, conv, multiplier):
    org = torch.nn.Conv2d(IN, OUT, K, bias=False) if conv else torch.nn.Linear(IN, OUT, bias=False)
    module = IA3Module("m", org, 1, train_on_input=on_input)
    module.weight.copy_(rnd(*module.weight.shape, dtype=torch.float32, seed=5))
    params = {"weight": module.weight.detach().clone(), "on_input": module.on_input.clone()}
    adapter = build_adapter(params, where="t")
    merged, _ = module.get_merged_weight(multiplier=multiplier)
    diff, _ = module.get_diff_weight(multiplier=1)
    torch.testing.assert_close(adapter.patched(org.weight, multiplier), merged, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adapter.delta(org.weight), diff, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("conv", [False, True])
def test_glora_matches_lycoris_module(dtype, conv):
    org = torch.nn.Conv2d(IN, OUT, K, bias=False) if conv else torch.nn.Linear(IN, OUT, bias=False)
    ones = (1, 1) if conv else ()
    a1, a2 = rnd(IN, RANK, *ones, dtype=dtype, seed=1), rnd(RANK, IN, *ones, dtype=dtype, seed=2)
    b1, b2 = rnd(OUT, RANK, *ones, dtype=dtype, seed=3), rnd(RANK, IN, *((K, K) if conv else ()), dtype=dtype, seed=4)
    alpha = torch.tensor(1.5)
    module = GLoRAModule.make_module_from_state_dict("m", org, a1.float(), a2.float(), b1.float(), b2.float(),
                                                     None, alpha)
    adapter = build_adapter({"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2,
                             "alpha": alpha}, where="t")
    ref, _ = module.get_diff_weight(multiplier=1)
    torch.testing.assert_close(adapter.delta(org.weight), ref, rtol=1e-5, atol=1e-5 * ref.abs().max())


# ---------------------------------------------------------------- what LyCORIS itself saves

ROUND_TRIP = {  # name: (module class, layer factory, constructor kwargs); alpha == rank keeps scale 1
    "locon_linear": (LoConModule, lambda: torch.nn.Linear(64, 48, bias=False), {}),
    "locon_conv_tucker": (LoConModule, lambda: torch.nn.Conv2d(16, 24, 3, bias=False), {"use_tucker": True}),
    "loha_linear": (LohaModule, lambda: torch.nn.Linear(64, 48, bias=False), {}),
    "loha_conv": (LohaModule, lambda: torch.nn.Conv2d(16, 24, 3, bias=False), {}),
    "loha_conv_tucker": (LohaModule, lambda: torch.nn.Conv2d(16, 24, 3, bias=False), {"use_tucker": True}),
    "lokr_linear": ("lokr", lambda: torch.nn.Linear(64, 64, bias=False), {}),
    "lokr_linear_both": ("lokr", lambda: torch.nn.Linear(64, 64, bias=False), {"decompose_both": True}),
    "lokr_conv": ("lokr", lambda: torch.nn.Conv2d(64, 64, 3, bias=False), {}),
    "lokr_conv_tucker": ("lokr", lambda: torch.nn.Conv2d(64, 64, 3, bias=False), {"use_tucker": True}),
    "dora_linear": (LoConModule, lambda: torch.nn.Linear(64, 48, bias=False), {"weight_decompose": True}),
    "dora_conv_in_axis": (LoConModule, lambda: torch.nn.Conv2d(16, 24, 3, bias=False),
                          {"weight_decompose": True, "wd_on_out": False}),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_state_dicts_written_by_lycoris_round_trip(name):
    from lycoris.modules.lokr import LokrModule
    cls, make_layer, kwargs = ROUND_TRIP[name]
    cls = LokrModule if cls == "lokr" else cls
    torch.manual_seed(len(name))
    layer = make_layer()
    module = cls("m", layer, 1.0, lora_dim=2, alpha=2, **kwargs)
    for p in module.parameters():
        if p is not layer.weight:
            p.copy_(torch.randn_like(p) * 0.2)
    state = {k: v for k, v in module.custom_state_dict().items()}
    adapter = build_adapter(state, where=name)
    shape = layer.weight.shape
    expected, _ = module.get_merged_weight(multiplier=1.0, shape=shape)
    torch.testing.assert_close(adapter.patched(layer.weight, 1.0), expected, rtol=1e-5, atol=1e-5)
    if adapter.additive:
        diff, _ = module.get_diff_weight(shape=shape)
        torch.testing.assert_close(adapter.delta(layer.weight), diff, rtol=1e-5, atol=1e-5)
