"""The FLUX.1 tables and dialect edge cases: names, blocks, text encoders, the final-layer swap."""

from __future__ import annotations

import pytest
import torch

from lora_syntax.formats import pick_dialect
from lora_syntax.formats.flux_bfl import DIALECT as BFL
from lora_syntax.formats.flux_dialects import FLUX_DIALECTS
from lora_syntax.formats.flux_kohya import DIALECT as KOHYA
from lora_syntax.keymaps import flux as fluxmap
from lora_syntax.keymaps.reference import reference_tree
from lora_syntax.loader import load_lora


@pytest.fixture(scope="module")
def tree():
    return reference_tree("flux")


def _lora(out_dim: int, in_dim: int, rank: int = 2) -> dict[str, torch.Tensor]:
    return {"lora_down.weight": torch.randn(rank, in_dim), "lora_up.weight": torch.randn(out_dim, rank),
            "alpha": torch.tensor(float(rank))}


def _file(name: str, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for k, v in params.items()}


def test_every_bfl_name_lands_on_a_real_flux_module(tree):
    names = [*fluxmap.GLOBAL] + [f"double_blocks.18.{n}" for n in fluxmap.DOUBLE_BLOCK] + \
        [f"single_blocks.37.{n}" for n in fluxmap.SINGLE_BLOCK]
    targets = [m for n in names for m in fluxmap.place_bfl(n).modules]
    assert all(tree.get("transformer", m) for m in targets)
    linears = {m for m, info in tree.modules["transformer"].items() if info.kind == "linear"}
    per_block = {m for m in linears if not m.startswith(("transformer_blocks.", "single_transformer_blocks."))
                 or m.startswith(("transformer_blocks.18.", "single_transformer_blocks.37."))}
    assert set(targets) == per_block, "the tables cover every linear of FLUX.1-dev, once"
    assert len(targets) == len(set(targets))


def test_kohya_underscore_names_round_trip():
    for name in [*fluxmap.GLOBAL, *(f"double_blocks.3.{n}" for n in fluxmap.DOUBLE_BLOCK),
                 *(f"single_blocks.30.{n}" for n in fluxmap.SINGLE_BLOCK)]:
        assert fluxmap.bfl_from_underscored(name.replace(".", "_")) == name
    assert fluxmap.bfl_from_underscored("double_blocks_3_img_attn_norm_query_norm") is None


def test_final_layer_halves_are_swapped_for_lora(tree):
    params = _lora(6144, 3072)
    grouped = KOHYA.group(_file("lora_unet_final_layer_adaLN_modulation_1", params), tree)
    (group,) = grouped.modules
    assert (group.target.module, group.target.block, group.rows) == ("norm_out.linear", "FINAL", None)
    up = params["lora_up.weight"]
    assert torch.equal(group.params["lora_up.weight"], torch.cat([up[3072:], up[:3072]]))
    assert torch.equal(group.params["lora_down.weight"], params["lora_down.weight"])


def test_final_layer_swap_is_refused_for_kronecker_factors(tree):
    """A LoKr cannot express the row swap: its keys are reported, not applied in the wrong order."""
    file = {"diffusion_model.final_layer.adaLN_modulation.1.lokr_w1": torch.randn(2, 2),
            "diffusion_model.final_layer.adaLN_modulation.1.lokr_w2": torch.randn(3072, 1536),
            "diffusion_model.final_layer.linear.lokr_w1": torch.randn(2, 2),
            "diffusion_model.final_layer.linear.lokr_w2": torch.randn(32, 1536)}
    grouped = BFL.group(file, tree)
    assert sorted(grouped.unmatched) == sorted(k for k in file if "adaLN" in k)
    assert [g.target.module for g in grouped.modules] == ["proj_out"]


def test_kohya_text_encoders_map_to_clip_l_and_t5(tree):
    file = {**_file("lora_unet_single_blocks_0_linear2", _lora(3072, 15360)),
            **_file("lora_te1_text_model_encoder_layers_11_mlp_fc2", _lora(768, 3072)),
            **_file("lora_te3_encoder_block_23_layer_1_DenseReluDense_wo", _lora(4096, 10240)),
            **_file("lora_te2_encoder_block_0_layer_0_SelfAttention_q", _lora(4096, 4096))}
    loaded = load_lora(file, tree, name="mixed")
    got = {(p.target.component, p.target.module, p.target.block) for p in loaded.patches}
    assert got == {("transformer", "single_transformer_blocks.0.proj_out", "S00"),
                   ("text_encoder", "encoder.layers.11.mlp.fc2", "BASE"),
                   ("text_encoder_2", "encoder.block.23.layer.1.DenseReluDense.wo", "BASE"),
                   ("text_encoder_2", "encoder.block.0.layer.0.SelfAttention.q", "BASE")}
    assert loaded.format == "flux-kohya" and loaded.unmatched == ()


def test_blocks_follow_the_lbw_names(tree):
    names = {"img_in": "EMBED", "time_in_in_layer": "EMBED", "guidance_in_out_layer": "EMBED",
             "double_blocks_7_txt_mod_lin": "D07", "single_blocks_12_modulation_lin": "S12",
             "final_layer_linear": "FINAL"}
    file = {}
    for name in names:
        place = fluxmap.place_bfl(fluxmap.bfl_from_underscored(name))
        info = tree.get("transformer", place.modules[0])
        file.update(_file(f"lora_unet_{name}", _lora(*info.weight_shape)))
    grouped = KOHYA.group(file, tree)
    blocks = {g.source_keys[0].split(".")[0].removeprefix("lora_unet_"): g.target.block for g in grouped.modules}
    assert blocks == names


def test_unknown_flux_module_is_reported_not_dropped(tree):
    file = {**_file("lora_unet_double_blocks_0_img_attn_qkv", _lora(9216, 3072)),
            **_file("lora_unet_double_blocks_0_img_attn_norm_key_norm", _lora(128, 128))}
    grouped = KOHYA.group(file, tree)
    assert sorted(grouped.unmatched) == sorted(k for k in file if "norm_key_norm" in k)
    assert len(grouped.modules) == 3


def test_comfyui_text_encoder_prefix_maps_to_clip_l(tree):
    file = {**_file("diffusion_model.double_blocks.0.img_mlp.2", _lora(3072, 12288)),
            **_file("text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj", _lora(768, 768))}
    grouped = BFL.group(file, tree)
    assert grouped.unmatched == []
    assert {(g.target.component, g.target.module) for g in grouped.modules} == {
        ("transformer", "transformer_blocks.0.ff.net.2"), ("text_encoder", "encoder.layers.0.self_attn.q_proj")}


def test_xlabs_single_block_qkv_splits_three_ways(tree):
    file = {"single_blocks.4.processor.qkv_lora.down.weight": torch.randn(2, 3072),
            "single_blocks.4.processor.qkv_lora.up.weight": torch.randn(9216, 2)}
    assert pick_dialect(file).name == "flux-xlabs"
    grouped = pick_dialect(file).group(file, tree)
    assert [(g.target.module, g.rows) for g in grouped.modules] == [
        ("single_transformer_blocks.4.attn.to_q", (0, 3072)), ("single_transformer_blocks.4.attn.to_k", (3072, 6144)),
        ("single_transformer_blocks.4.attn.to_v", (6144, 9216))]


def test_sd_kohya_files_are_not_claimed_by_flux_dialects():
    keys = ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight"]
    assert all(d.score(keys) == 0.0 for d in FLUX_DIALECTS)
    assert pick_dialect(keys[:2]).name == "kohya"


def test_fused_dora_splits_per_row_and_refuses_per_column(tree):
    from lora_syntax.errors import LoraFileError

    base = _file("lora_unet_double_blocks_0_img_attn_qkv", _lora(9216, 3072))
    rows = load_lora({**base, "lora_unet_double_blocks_0_img_attn_qkv.dora_scale": torch.rand(9216, 1) + 0.5},
                     tree, name="dora-rows")
    assert [p.target.module for p in rows.patches] == [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"]
    with pytest.raises(LoraFileError, match="cannot be split"):
        load_lora({**base, "lora_unet_double_blocks_0_img_attn_qkv.dora_scale": torch.rand(1, 3072) + 0.5},
                  tree, name="dora-columns")


def test_final_layer_per_row_dora_scale_is_swapped_with_the_rows(tree):
    params = {**_lora(6144, 3072), "dora_scale": torch.arange(6144.0).reshape(6144, 1)}
    (group,) = KOHYA.group(_file("lora_unet_final_layer_adaLN_modulation_1", params), tree).modules
    assert group.params["dora_scale"][0, 0] == 3072 and group.params["dora_scale"][3072, 0] == 0
