"""load_lora against real files, real key inventories (full-size meta trees) and broken inputs."""

from __future__ import annotations

import pytest
import torch
from helpers_formats import inventory_state_dict, kohya_state_dict
from safetensors.torch import save_file

from lora_syntax.errors import ArchitectureMismatchError, LoraFileError, LoraShapeError
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.keymaps.reference import reference_tree
from lora_syntax.loader import load_lora
from lora_syntax.testing.tiny import tiny_pipeline

ATTN = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"


def lora(key: str, out: int, inp: int, rank: int = 4, alpha: float = 4.0) -> dict[str, torch.Tensor]:
    return {f"{key}.lora_down.weight": torch.randn(rank, inp) * 0.1, f"{key}.lora_up.weight": torch.randn(out, rank),
            f"{key}.alpha": torch.tensor(alpha)}


def test_real_sd15_attention_processor_file_maps_completely(shared_fixtures) -> None:
    path = shared_fixtures / "real-loras" / "sd15_diffusers_attnproc_rank4.safetensors"
    loaded = load_lora(path, reference_tree("sd15"))
    assert loaded.format == "diffusers-legacy" and loaded.architecture == "sd15"
    assert loaded.unmatched == () and len(loaded.patches) == 128  # 256 tensors = 128 up/down pairs
    assert loaded.adapter_types == frozenset({"lora"})
    assert {p.adapter.rank for p in loaded.patches} == {4}
    blocks = {p.target.block for p in loaded.patches}
    assert blocks == {"IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"} | {f"OUT{i:02d}" for i in range(3, 12)}
    assert loaded.metadata == {"format": "pt"} and loaded.path == path


def test_real_cloneofsimo_file_is_refused_with_the_reason(shared_fixtures) -> None:
    path = shared_fixtures / "real-loras" / "sd15_cloneofsimo_legacy_rank4.safetensors"
    with pytest.raises(LoraFileError, match=r"cloneofsimo.*positions.*not supported") as err:
        load_lora(path, reference_tree("sd15"))
    assert err.value.path == path and "sd15_cloneofsimo_legacy_rank4" in str(err.value)


@pytest.mark.parametrize("inventory,types", [("sdxl_lora_kohya_format", 986), ("sdxl_locon_kohya_unet_format", 788)])
def test_sdxl_inventories_map_with_zero_unmatched(shared_fixtures, inventory: str, types: int) -> None:
    state_dict = inventory_state_dict(shared_fixtures / "key-inventories" / f"{inventory}.json")
    loaded = load_lora(state_dict, reference_tree("sdxl"), name=inventory)
    assert loaded.unmatched == () and loaded.format == "kohya" and loaded.architecture == "sdxl"
    assert len(loaded.patches) * 3 == len(state_dict) == types * 3
    assert all(p.target.block is not None for p in loaded.patches)
    if "locon" in inventory:
        convs = [p for p in loaded.patches if p.target.module.endswith(("conv1", "conv2", "downsamplers.0.conv"))]
        assert convs and all(p.target.component == "unet" for p in convs)


def test_sdxl_file_against_sd15_names_both(shared_fixtures) -> None:
    state_dict = inventory_state_dict(shared_fixtures / "key-inventories" / "sdxl_lora_kohya_format.json")
    with pytest.raises(ArchitectureMismatchError, match=r"'ink wash' is an SDXL LoRA; the loaded model is SD1\.5") as err:
        load_lora(state_dict, reference_tree("sd15"), name="ink wash")
    assert (err.value.lora_architecture, err.value.model_architecture) == ("sdxl", "sd15")


def test_sd15_file_against_sdxl_is_refused() -> None:
    with pytest.raises(ArchitectureMismatchError, match="SD1.5 LoRA; the loaded model is SDXL"):
        load_lora(lora(ATTN, 640, 768), reference_tree("sdxl"), name="x")


def test_shape_mismatch_names_file_key_and_shapes() -> None:
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    state_dict = {**lora(ATTN, 640, 768), **lora(key, 320, 640)}  # to_q is (640, 640): wrong output rows
    with pytest.raises(LoraShapeError) as err:
        load_lora(state_dict, reference_tree("sd15"), name="bad")
    message = str(err.value)
    assert "'bad'" in message and key in message and "(640, 640)" in message and "(320, 4)" in message


def test_shape_mismatch_message_names_a_weight_key_and_says_it_once() -> None:
    """The alpha scalar tells the user nothing about shapes; the adapter's own text repeated ours."""
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    state_dict = {f"{key}.alpha": torch.tensor(4.0), **lora(key, 320, 640)}
    with pytest.raises(LoraShapeError) as err:
        load_lora(state_dict, reference_tree("sd15"), name="bad")
    message = str(err.value)
    assert f"key '{key}.lora_" in message and message.count("made for") == 1


def test_bias_on_a_module_without_bias_is_a_shape_error() -> None:
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # to_q has no bias
    with pytest.raises(LoraShapeError, match="no bias"):
        load_lora({f"{key}.diff": torch.zeros(640, 640), f"{key}.diff_b": torch.zeros(640)},
                  reference_tree("sd15"), name="b")


def test_unmatched_keys_are_reported_not_dropped() -> None:
    state_dict = {**lora(ATTN, 640, 768), **lora("lora_unet_no_such_module", 8, 8)}
    loaded = load_lora(state_dict, reference_tree("sd15"))
    assert len(loaded.patches) == 1 and loaded.patches[0].target.block == "IN04"
    assert loaded.unmatched == ("lora_unet_no_such_module.alpha", "lora_unet_no_such_module.lora_down.weight",
                                "lora_unet_no_such_module.lora_up.weight")


def test_nothing_mapped_is_an_error() -> None:
    with pytest.raises(LoraFileError, match="none of its 3 keys maps"):
        load_lora(lora("lora_unet_no_such_module", 8, 8), reference_tree("sd15"), name="n")


def test_unknown_layout_is_an_error() -> None:
    with pytest.raises(LoraFileError, match="no known LoRA key layout"):
        load_lora({"model.layer.weight": torch.zeros(2, 2)}, reference_tree("sd15"), name="n")


def test_lycoris_types_and_dora_map_through_kohya(shared_fixtures) -> None:
    tree = reference_tree("sd15")
    q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    fc = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    state_dict = {
        f"{q}.hada_w1_a": torch.randn(640, 2), f"{q}.hada_w1_b": torch.randn(2, 640),
        f"{q}.hada_w2_a": torch.randn(640, 2), f"{q}.hada_w2_b": torch.randn(2, 640), f"{q}.alpha": torch.tensor(2.0),
        f"{fc}.lokr_w1": torch.randn(4, 4), f"{fc}.lokr_w2": torch.randn(768, 192),
        **lora("lycoris_input_blocks_1_1_proj_in", 320, 320),
        f"lycoris_input_blocks_1_1_proj_in.dora_scale": torch.rand(320, 1),
    }
    state_dict["lycoris_input_blocks_1_1_proj_in.lora_down.weight"] = torch.randn(4, 320, 1, 1)
    state_dict["lycoris_input_blocks_1_1_proj_in.lora_up.weight"] = torch.randn(320, 4, 1, 1)
    loaded = load_lora(state_dict, tree, name="lyco")
    kinds = {p.target.module: p.adapter.kind for p in loaded.patches}
    assert kinds == {"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "loha",
                     next(m for m in tree.modules["text_encoder"] if m.endswith("layers.0.mlp.fc1")): "lokr",
                     "down_blocks.0.attentions.0.proj_in": "dora"}
    assert {p.target.block for p in loaded.patches} == {"IN04", "BASE", "IN01"}


def test_peft_dora_magnitude_becomes_dora_scale() -> None:
    tree = reference_tree("sd15")
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    loaded = load_lora({f"{module}.lora_A.weight": torch.randn(4, 768), f"{module}.lora_B.weight": torch.randn(640, 4),
                        f"{module}.lora_magnitude_vector": torch.rand(640) + 0.5}, tree)
    assert loaded.format == "peft" and loaded.adapter_types == frozenset({"dora"})


def test_file_on_disk_with_tiny_model(tmp_path) -> None:
    """A kohya file saved to disk and loaded against a tiny SD1.5-like model labelled sd15."""
    pipe = tiny_pipeline("sd15")
    path = tmp_path / "tiny.safetensors"
    save_file(kohya_state_dict(pipe, "sd15"), str(path), metadata={"ss_network_dim": "4", "ss_output_name": "tiny"})
    loaded = load_lora(path, tree_from_pipeline(pipe, "sd15"), metadata={"note": "x"})
    assert loaded.path == path and loaded.unmatched == ()
    assert loaded.metadata == {"ss_network_dim": "4", "ss_output_name": "tiny", "note": "x"}
    blocks = {p.target.block for p in loaded.patches if p.target.component == "unet"}
    assert blocks == {"IN01", "IN02", "IN04", "IN05", "M00", "OUT00", "OUT01", "OUT03", "OUT04", "OUT05"}


def test_alpha_that_is_not_one_number_is_a_named_error_not_a_traceback() -> None:
    state_dict = {**lora(ATTN, 640, 768), f"{ATTN}.alpha": torch.ones(2, 2)}
    with pytest.raises(LoraShapeError, match=r"'two'.*alpha should be a single number but has shape \(2, 2\)"):
        load_lora(state_dict, reference_tree("sd15"), name="two")


def test_shape_fit_says_a_file_with_mismatched_factors_is_damaged_not_for_another_model(tmp_path):
    """Regression: ``inspect`` counted a module whose own factors disagree on their rank as a misfit and
    concluded "made for another model", sending the user after another base model for a corrupt file."""
    from safetensors.torch import load_file, save_file

    from lora_syntax import demo
    from lora_syntax.errors import LoraFactorsError
    from lora_syntax.keymaps.build import tree_from_model_dir
    from lora_syntax.loader import shape_fit

    tensors = load_file(str(demo.LORA_DIR / "zorbstar.safetensors"))
    up = next(k for k in sorted(tensors) if k.endswith("lora_up.weight"))
    tensors[up] = torch.zeros(tensors[up].shape[0], tensors[up].shape[1] + 2)
    save_file(tensors, str(tmp_path / "rank.safetensors"))
    with pytest.raises(LoraFactorsError, match="factors do not fit each other.*the file is damaged"):
        shape_fit(tmp_path / "rank.safetensors", tree_from_model_dir(demo.MODEL_DIR, "sd15"))
