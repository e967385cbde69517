"""load_lora on damaged or unusual files: every one loads correctly or fails with a named LoraError.

Found by probing: fp8 factors, damaged PEFT ``lora_adapter_metadata``, factors of the wrong number of
axes, changes whose size matches the weight's but whose shape does not, fused FLUX rows too many, and
odd scalars. Each case asserts the error class and what its message names.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers_engine import assert_bitwise, lora_state_dict, snapshot, write_lora
from safetensors.torch import save_file

from lora_syntax.errors import LoraFactorsError, LoraFileError, LoraShapeError
from lora_syntax.hosts.diffusers import activate
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.loader import LARGE_VALUE, load_lora
from lora_syntax.testing.tiny import tiny_pipeline

PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"                         # conv 1x1, (32, 32, 1, 1)
TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"   # linear, (32, 32), no bias
QKV = "lora_unet_double_blocks_0_img_attn_qkv"                                  # tiny FLUX: 3 x 32 rows


def rnd(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.fixture(scope="module")
def sd15_tree():
    return tree_from_pipeline(tiny_pipeline("sd15"), "sd15")


@pytest.fixture(scope="module")
def flux_tree():
    return tree_from_pipeline(tiny_pipeline("flux"), "flux")


# --- fp8 factors: read as fp32, like every other dtype --------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_factors_load_and_give_the_fp32_delta_of_their_values(tmp_path, sd15_tree, dtype) -> None:
    up, down = rnd(32, 2).to(dtype), rnd(2, 32, seed=1).to(dtype)
    path = tmp_path / "fp8.safetensors"
    save_file({f"{TO_Q}.lora_up.weight": up, f"{TO_Q}.lora_down.weight": down, f"{TO_Q}.alpha": torch.tensor(1.0)},
              str(path))
    loaded = load_lora(path, sd15_tree)
    assert loaded.warnings == () and len(loaded.patches) == 1
    delta = loaded.patches[0].adapter.delta(torch.zeros(32, 32))
    assert delta.dtype == torch.float32
    torch.testing.assert_close(delta, 0.5 * up.float() @ down.float(), rtol=0, atol=1e-7)   # alpha 1 / rank 2


def test_fp8_factors_with_huge_values_get_the_large_value_warning(tmp_path, sd15_tree) -> None:
    """Regression: ``abs().max()`` has no fp8 kernel ("max_all not implemented for 'Float8_e5m2'")."""
    up = rnd(32, 2)
    up[3, 1] = 2 * LARGE_VALUE   # float8_e5m2 holds up to 57344
    path = tmp_path / "big.safetensors"
    save_file({f"{TO_Q}.lora_up.weight": up.to(torch.float8_e5m2),
               f"{TO_Q}.lora_down.weight": rnd(2, 32).to(torch.float8_e5m2)}, str(path))
    (warning,) = load_lora(path, sd15_tree).warnings
    assert f"tensor '{TO_Q}.lora_up.weight' holds values up to 2.05e+04" in warning


def test_fp8_lora_is_applied_by_the_engine_in_fp32_and_restored(tmp_path) -> None:
    pipe = tiny_pipeline("sd15")
    state = {k: v.to(torch.float8_e4m3fn) for k, v in lora_state_dict(pipe, ("unet",), seed=3).items()}
    write_lora(tmp_path, "fp8", state)
    before = snapshot(pipe)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    up, down = state[f"unet.{name}.lora_B.weight"].float(), state[f"unet.{name}.lora_A.weight"].float()
    with activate(pipe, "a <lora:fp8:0.5>", lora_dirs=[tmp_path], steps=1, architecture="sd15"):
        patched = pipe.unet.get_submodule(name).weight.detach().clone()
    expected = before[f"unet.{name}.weight"] + 0.5 * (up @ down)   # PEFT without alpha: scale 1
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-6)
    assert_bitwise(before, pipe)


# --- damaged PEFT lora_adapter_metadata ------------------------------------------------------------------------

def peft_lora() -> dict[str, torch.Tensor]:
    module = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    return {f"{module}.lora_A.weight": rnd(2, 32), f"{module}.lora_B.weight": rnd(32, 2, seed=1)}


@pytest.mark.parametrize("config,key,shown,why", [
    ('{"unet.lora_alpha": "x"}', "unet.lora_alpha", "'x'", "an alpha must be a finite real number"),
    ('{"unet.lora_alpha": [1]}', "unet.lora_alpha", "[1]", "an alpha must be a finite real number"),
    ('{"unet.lora_alpha": true}', "unet.lora_alpha", "True", "an alpha must be a finite real number"),
    ('{"unet.lora_alpha": 1e400}', "unet.lora_alpha", "inf", "an alpha must be a finite real number"),
    ('{"unet.lora_alpha": NaN}', "unet.lora_alpha", "nan", "an alpha must be a finite real number"),
    ('{"unet.lora_alpha": 1e39}', "unet.lora_alpha", "1e+39", "within float32's range"),
    ('{"unet.lora_alpha": ' + "9" * 400 + "}", "unet.lora_alpha", "999999", "an alpha must be a finite real number"),
    ('{"unet.lora_alpha": 4, "unet.alpha_pattern": "x"}', "unet.alpha_pattern", "'x'",
     "an alpha_pattern must map module names to alphas"),
    ('{"unet.lora_alpha": 4, "unet.alpha_pattern": {"[": 2}}', "unet.alpha_pattern['[']", "'['",
     "its name is not a valid pattern (unterminated character set"),
    ('{"unet.lora_alpha": 4, "unet.alpha_pattern": {"to_q": "big"}}', "unet.alpha_pattern['to_q']", "'big'",
     "an alpha must be a finite real number"),
])
def test_damaged_adapter_metadata_is_a_named_file_error(sd15_tree, config, key, shown, why) -> None:
    with pytest.raises(LoraFileError) as err:
        load_lora(peft_lora(), sd15_tree, metadata={"lora_adapter_metadata": config}, name="meta")
    message = str(err.value)
    assert message.startswith(f"LoRA 'meta': its lora_adapter_metadata is damaged: {key} is {shown}")
    assert why in message and "remove its lora_adapter_metadata" in message


def test_damaged_adapter_metadata_error_carries_the_file(tmp_path, sd15_tree) -> None:
    path = tmp_path / "meta.safetensors"
    save_file(peft_lora(), str(path), metadata={"lora_adapter_metadata": '{"unet.lora_alpha": 1e400}'})
    with pytest.raises(LoraFileError, match=r"^LoRA 'meta': its lora_adapter_metadata is damaged") as err:
        load_lora(path, sd15_tree)
    assert err.value.path == path


def test_valid_adapter_metadata_still_gives_alpha_and_patterns_match_as_peft(sd15_tree) -> None:
    """Patterns are matched as PEFT's ``get_pattern_key``: ``(.*\\.)?(pattern)$``, alternatives grouped."""
    config = json.dumps({"unet.lora_alpha": 8, "unet.alpha_pattern": {"attn2.to_k|attn1.to_q": 1}})
    loaded = load_lora(peft_lora(), sd15_tree, metadata={"lora_adapter_metadata": config}, name="ok")
    assert loaded.patches[0].adapter.alpha == 1.0


# --- factors with the wrong number of axes, or a kernel where none belongs ----------------------------------------

@pytest.mark.parametrize("params,message", [
    ({f"{TO_Q}.lora_down.weight": rnd(2), f"{TO_Q}.lora_up.weight": rnd(32, 2)},
     "LoRA factor lora_down.weight has shape (2,); it should be a matrix with 2 or more axes. The file is damaged."),
    ({f"{PROJ_IN}.lora_down.weight": rnd(2, 32, 1, 1), f"{PROJ_IN}.lora_up.weight": rnd(32, 2, 3, 3)},
     "LoRA factor lora_up.weight has shape (32, 2, 3, 3), but an up factor is (out, rank) or (out, rank, 1, 1); "
     "the file is damaged."),
    ({f"{TO_Q}.lora_down.weight": rnd(2, 32), f"{TO_Q}.lora_up.weight": rnd(32, 2, 2)},
     "LoRA factor lora_up.weight has shape (32, 2, 2), but an up factor is (out, rank) or (out, rank, 1, 1)"),
    ({f"{PROJ_IN}.lora_mid.weight": rnd(2, 2, 1, 1), f"{PROJ_IN}.lora_down.weight": rnd(2, 32, 3, 3),
      f"{PROJ_IN}.lora_up.weight": rnd(32, 2, 1, 1)},
     "LoRA factor lora_down.weight has shape (2, 32, 3, 3), but with a Tucker lora_mid.weight the kernel is the "
     "mid factor's"),
    ({f"{TO_Q}.hada_w1_a": rnd(32, 2), f"{TO_Q}.hada_w1_b": rnd(2), f"{TO_Q}.hada_w2_a": rnd(32, 2),
      f"{TO_Q}.hada_w2_b": rnd(2)}, "LoHa factor hada_w1_b has shape (2,); it should be a matrix"),
    ({f"{TO_Q}.lokr_w1": torch.tensor(1.0), f"{TO_Q}.lokr_w2": rnd(32, 32)},
     "LoKr factor lokr_w1 has shape (); it should be a matrix"),
    ({f"{TO_Q}.diff": torch.tensor(1.0)},
     "full adapter's diff is a scalar (one number, shape ()), not the weight change it stores; the file is damaged."),
    ({f"{TO_Q}.lokr_w1": rnd(4, 4), f"{TO_Q}.lokr_w1_a": rnd(4, 1), f"{TO_Q}.lokr_w2": rnd(8, 8)},
     "LoKr adapter has both lokr_w1 and lokr_w1_a: two layouts of one Kronecker factor"),
], ids=["down_1d", "up_kernel", "up_3d", "tucker_down_kernel", "loha_1d", "lokr_0d", "diff_0d", "lokr_w1_and_w1_a"])
def test_malformed_factors_are_named_as_a_damaged_file(tmp_path, sd15_tree, params, message) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(params, str(path))
    with pytest.raises(LoraFactorsError) as err:
        load_lora(path, sd15_tree)
    module = "unet." + ("down_blocks.0.attentions.0.proj_in" if PROJ_IN in next(iter(params))
                        else "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert str(err.value).startswith(f"LoRA 'bad' at {module}: ")
    assert message in str(err.value) and err.value.path == path


# --- a change whose size matches the weight's but whose shape does not ----------------------------------------------

@pytest.mark.parametrize("params,shapes", [
    ({f"{TO_Q}.lora_down.weight": rnd(2, 64), f"{TO_Q}.lora_up.weight": rnd(16, 2)},
     "lora_down.weight (2, 64), lora_up.weight (16, 2)"),
    ({f"{TO_Q}.diff": rnd(16, 64)}, "diff (16, 64)"),
    ({f"{TO_Q}.lokr_w1": rnd(4, 4, 1), f"{TO_Q}.lokr_w2": rnd(8, 8)}, "lokr_w1 (4, 4, 1), lokr_w2 (8, 8)"),
])
def test_a_change_of_the_right_size_but_the_wrong_shape_is_refused(sd15_tree, params, shapes) -> None:
    """Regression: only the number of values was compared, so a (16, 64) change was applied reshaped."""
    with pytest.raises(LoraShapeError) as err:
        load_lora(params, sd15_tree, name="wrong")
    assert not isinstance(err.value, LoraFactorsError)
    assert str(err.value) == (f"LoRA 'wrong', key '{next(iter(params))}' -> unet.down_blocks.0.attentions.0."
                              f"transformer_blocks.0.attn1.to_q: the module's weight has shape (32, 32) but the "
                              f"file has {shapes}; the LoRA was made for another model.")


@pytest.mark.parametrize("params", [
    {f"{TO_Q}.diff": rnd(32, 32, 1, 1)},                                                   # conv 1x1 diff on a linear
    {f"{PROJ_IN}.diff": rnd(32, 32)},                                                     # linear diff on a conv 1x1
    {f"{TO_Q}.lora_down.weight": rnd(2, 32, 1, 1), f"{TO_Q}.lora_up.weight": rnd(32, 2, 1, 1)},
], ids=["diff_conv1x1_on_linear", "diff_linear_on_conv1x1", "locon1x1_on_linear"])
def test_trailing_unit_axes_may_differ(sd15_tree, params) -> None:
    (patch,) = load_lora(params, sd15_tree, name="ok").patches
    weight = torch.zeros((32, 32) if TO_Q in next(iter(params)) else (32, 32, 1, 1))
    source = next(v for k, v in params.items() if k.endswith(("diff", "lora_up.weight")))
    delta = patch.adapter.delta(weight)
    assert delta.shape == weight.shape and delta.reshape(32, -1).any()
    if source.dim() == 2 and "diff" in next(iter(params)):
        assert torch.equal(delta.reshape(32, 32), source)


# --- fused FLUX rows: too few and too many are both refused ------------------------------------------------------

@pytest.mark.parametrize("params,shapes,rows", [
    ({f"{QKV}.lora_down.weight": rnd(2, 32), f"{QKV}.lora_up.weight": rnd(120, 2)},
     "lora_down.weight (2, 32), lora_up.weight (120, 2)", 120),
    ({f"{QKV}.lora_down.weight": rnd(2, 32), f"{QKV}.lora_up.weight": rnd(90, 2)},
     "lora_down.weight (2, 32), lora_up.weight (90, 2)", 90),
    ({f"{QKV}.lokr_w1": rnd(4, 4), f"{QKV}.lokr_w2": rnd(25, 8)}, "lokr_w1 (4, 4), lokr_w2 (25, 8)", 100),
    ({f"{QKV}.diff": rnd(97, 32)}, "diff (97, 32)", 97),
    ({f"{QKV}.lora_down.weight": rnd(2, 32), f"{QKV}.lora_up.weight": rnd(96, 2),
      f"{QKV}.dora_scale": rnd(120, 1)}, "dora_scale (120, 1), lora_down.weight (2, 32), lora_up.weight (96, 2)",
     "96 and 120"),
], ids=["lora_long", "lora_short", "lokr_long", "diff_long", "dora_scale_long"])
def test_fused_qkv_with_other_than_its_rows_is_refused(flux_tree, params, shapes, rows) -> None:
    with pytest.raises(LoraShapeError) as err:
        load_lora(params, flux_tree, name="qkv")
    assert str(err.value) == (
        f"LoRA 'qkv', key '{next(iter(params))}' -> "
        "transformer.transformer_blocks.0.attn.to_q: the fused module is split onto the model's modules by output "
        f"rows (96 in all; this module takes rows 0:32), but the file has {shapes} ({rows} rows); the LoRA was made "
        "for another model.")


def test_fused_qkv_with_its_rows_maps_onto_q_k_v(flux_tree) -> None:
    up = rnd(96, 2)
    loaded = load_lora({f"{QKV}.lora_down.weight": rnd(2, 32), f"{QKV}.lora_up.weight": up}, flux_tree, name="ok")
    assert [p.target.module.rsplit(".", 1)[1] for p in loaded.patches] == ["to_q", "to_k", "to_v"]
    assert torch.equal(loaded.patches[2].adapter.up, up[64:96])


# --- odd scalars and names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,dtype", [(torch.tensor(True), "bool"),
                                         (torch.tensor(2 + 1j, dtype=torch.complex64), "complex64")])
def test_an_alpha_that_is_not_a_real_number_is_refused(sd15_tree, alpha, dtype) -> None:
    params = {f"{TO_Q}.lora_down.weight": rnd(2, 32), f"{TO_Q}.lora_up.weight": rnd(32, 2), f"{TO_Q}.alpha": alpha}
    with pytest.raises(LoraFileError, match=rf"^LoRA 'a' at unet\.down_blocks\.0\.attentions\.0\.transformer_blocks"
                                            rf"\.0\.attn1\.to_q: alpha holds a {dtype} value; alpha must be a real "
                                            r"number \(float or integer\)\. The file is damaged\.$"):
        load_lora(params, sd15_tree, name="a")


def test_an_integer_alpha_is_still_read(sd15_tree) -> None:
    params = {f"{TO_Q}.lora_down.weight": rnd(2, 32), f"{TO_Q}.lora_up.weight": rnd(32, 2),
              f"{TO_Q}.alpha": torch.tensor(4, dtype=torch.uint8)}
    assert load_lora(params, sd15_tree, name="a").patches[0].adapter.scale == 2.0


def test_a_file_whose_only_key_is_empty_names_it(tmp_path, sd15_tree) -> None:
    path = tmp_path / "empty_key.safetensors"
    save_file({"": rnd(2, 32)}, str(path))
    with pytest.raises(LoraFileError) as err:
        load_lora(path, sd15_tree)
    assert "matches its keys, e.g. '' (an empty name); is it a LoRA file?" in str(err.value)
