"""Key maps, block ids, LDM names and architecture detection against the real full-size layouts."""

from __future__ import annotations

import json

import pytest

from lora_syntax.keymaps.blockids import block_of
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.keymaps.detect import detect_architecture
from lora_syntax.keymaps.kohya import kohya_map
from lora_syntax.keymaps.ldm import block_prefixes, ldm_name
from lora_syntax.keymaps.reference import SD15_UNET, SDXL_UNET, reference_tree
from lora_syntax.testing.tiny import tiny_pipeline


@pytest.mark.parametrize("arch,component,module,block", [
    ("sd15", "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "IN04"),
    ("sd15", "unet", "down_blocks.0.resnets.1.conv1", "IN02"),
    ("sd15", "unet", "down_blocks.2.downsamplers.0.conv", "IN09"),
    ("sd15", "unet", "down_blocks.3.resnets.1.conv2", "IN11"),
    ("sd15", "unet", "mid_block.attentions.0.proj_in", "M00"),
    ("sd15", "unet", "up_blocks.0.resnets.0.conv1", "OUT00"),
    ("sd15", "unet", "up_blocks.0.upsamplers.0.conv", "OUT02"),
    ("sd15", "unet", "up_blocks.3.attentions.2.proj_out", "OUT11"),
    ("sd15", "unet", "conv_in", "IN00"),
    ("sd15", "unet", "time_embedding.linear_1", "IN00"),
    ("sd15", "unet", "conv_out", "OUT11"),
    ("sd15", "text_encoder", "text_model.encoder.layers.3.mlp.fc1", "BASE"),
    ("sdxl", "unet", "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k", "OUT05"),
    ("sdxl", "unet", "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2", "IN08"),
    ("sdxl", "unet", "add_embedding.linear_1", "IN00"),
    ("sdxl", "unet", "conv_norm_out", "OUT08"),
    ("sdxl", "text_encoder_2", "text_projection", "BASE"),
    ("flux", "transformer", "transformer_blocks.7.attn.to_q", "D07"),
    ("flux", "transformer", "single_transformer_blocks.12.proj_mlp", "S12"),
    ("flux", "transformer", "context_embedder", "EMBED"),
    ("flux", "transformer", "proj_out", "FINAL"),
])
def test_block_of(arch: str, component: str, module: str, block: str) -> None:
    config = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}.get(arch, {})
    assert block_of(arch, component, module, config) == block


def test_every_reference_unet_module_has_a_block() -> None:
    for arch, count in (("sd15", 25), ("sdxl", 19)):
        tree = reference_tree(arch)
        blocks = {block_of(arch, "unet", m, tree.config["unet"]) for m in tree.modules["unet"]}
        assert None not in blocks and len(blocks) == count


@pytest.mark.parametrize("module,ldm", [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_out", "out.2"),
    ("down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q", "input_blocks.4.1.transformer_blocks.1.attn1.to_q"),
    ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
    ("down_blocks.1.resnets.0.time_emb_proj", "input_blocks.4.0.emb_layers.1"),
    ("down_blocks.1.resnets.0.conv2", "input_blocks.4.0.out_layers.3"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
    ("mid_block.resnets.1.norm1", "middle_block.2.in_layers.0"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.2.conv1", "output_blocks.8.0.in_layers.2"),
])
def test_sdxl_ldm_names(module: str, ldm: str) -> None:
    assert ldm_name(module, block_prefixes(SDXL_UNET)) == ldm


def test_sd15_upsampler_without_attention_uses_slot_1() -> None:
    assert ldm_name("up_blocks.0.upsamplers.0.conv", block_prefixes(SD15_UNET)) == "output_blocks.2.1.conv"
    assert ldm_name("up_blocks.1.upsamplers.0.conv", block_prefixes(SD15_UNET)) == "output_blocks.5.2.conv"


def test_reference_trees_have_the_real_shapes() -> None:
    sd15, sd2, sdxl = reference_tree("sd15"), reference_tree("sd2"), reference_tree("sdxl")
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    assert sd15.get("unet", key).weight_shape == (640, 768)
    assert sd2.get("unet", key).weight_shape == (640, 1024)
    assert sdxl.get("unet", key).weight_shape == (640, 2048)
    assert sd15.get("unet", "down_blocks.0.attentions.0.proj_in").weight_shape == (320, 320, 1, 1)
    assert sdxl.get("text_encoder_2", "text_model.encoder.layers.31.mlp.fc1").weight_shape == (5120, 1280)
    assert len(sd2.modules["text_encoder"]) > len(sd15.modules["text_encoder"])  # 23 OpenCLIP-H layers vs 12
    assert reference_tree("sd15") is sd15


def test_kohya_map_has_diffusers_ldm_and_text_names() -> None:
    table = kohya_map(reference_tree("sdxl"))
    place = table["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"][0]
    assert (place.component, place.module) == ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    assert table["lora_unet_down_blocks_1_attentions_0_proj_in"][0].module == "down_blocks.1.attentions.0.proj_in"
    assert table["lora_te2_text_model_encoder_layers_0_mlp_fc1"][0].component == "text_encoder_2"
    # transformers 4 and 5 spell CLIP module paths with and without "text_model."; both map.
    short, long = table["lora_te1_encoder_layers_0_mlp_fc1"][0], table["lora_te1_text_model_encoder_layers_0_mlp_fc1"][0]
    assert short == long and short.module.endswith("encoder.layers.0.mlp.fc1")
    assert short.module in reference_tree("sdxl").modules["text_encoder"]
    assert table["lora_unet_label_emb_0_0"][0].module == "add_embedding.linear_1"


def test_tree_from_pipeline_detects_and_accepts_labels() -> None:
    pipe = tiny_pipeline("sdxl")
    tree = tree_from_pipeline(pipe)
    assert tree.architecture == "sdxl" and set(tree.modules) == {"unet", "text_encoder", "text_encoder_2"}
    assert tree.config["unet"]["layers_per_block"] == 2
    assert tree.config["text_encoder"]["hidden_size"] == 32
    assert tree_from_pipeline(tiny_pipeline("sd15")).architecture == "sd15"
    assert tree_from_pipeline(tiny_pipeline("flux")).denoiser == "transformer"
    assert tree_from_pipeline(tiny_pipeline("sd15"), "sd2").architecture == "sd2"


def _kohya_shapes(width: int) -> dict[str, tuple[int, ...]]:
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    return {f"{key}.lora_down.weight": (4, width), f"{key}.lora_up.weight": (640, 4), f"{key}.alpha": ()}


@pytest.mark.parametrize("shapes,metadata,expected", [
    (_kohya_shapes(768), None, "sd15"),
    (_kohya_shapes(1024), None, "sd2"),
    (_kohya_shapes(2048), None, "sdxl"),
    (_kohya_shapes(32), {"ss_base_model_version": "sdxl_base_v1-0"}, None),  # shapes beat the hint
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": (4, 768)}, None, "sd15"),
    ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1024)}, None, "sd2"),
    ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280)}, None, "sdxl"),
    ({"lora_unet_input_blocks_7_1_transformer_blocks_5_attn1_to_q.lora_down.weight": (4, 1280)}, None, "sdxl"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072)}, None, "flux"),
    ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)}, None, "flux"),
    ({"unet:0:up": (320, 4)}, {"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd15"),
    ({"unet:0:up": (320, 4)}, {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"unet:0:up": (320, 4)}, None, None),
])
def test_detect_architecture(shapes, metadata, expected) -> None:
    assert detect_architecture(shapes, metadata) == expected


def test_detect_real_inventories(shared_fixtures) -> None:
    for path in sorted((shared_fixtures / "key-inventories").glob("*.json")):
        keys = json.loads(path.read_text(encoding="utf-8"))["keys"]
        expected = path.name.split("_")[0]
        assert detect_architecture({k: tuple(v) for k, v in keys.items()}) == expected, path.name


def test_detect_old_attention_processor_layout() -> None:
    """diffusers' old processor keys put "processor." between attn2 and to_k_lora."""
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight"
    assert detect_architecture({key: (4, 768)}) == "sd15"
    assert detect_architecture({key: (4, 2048)}) == "sdxl"
