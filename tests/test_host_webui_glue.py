"""The A1111/Forge glue's model discovery, without a host: where each host keeps the UNet and text encoders
(A1111's hijack wrappers and SDXL conditioner with its size embedders, Forge's forge_objects), and that a
LoRA fused through what it finds equals the diffusers model's fused weights."""

from __future__ import annotations

import copy
from types import SimpleNamespace as NS

import torch

from helpers_engine import lora_state_dict, write_lora
from helpers_ldm import ldm_copy, openclip_copy
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.keymaps.kohya import text_model_alias
from lora_syntax.keymaps.tree import pipeline_components
from lora_syntax.keymaps.view import FusedRows, component_tree
from lora_syntax.library import LoraLibrary
from lora_syntax.session import EngineSession
from lora_syntax.testing.tiny import tiny_pipeline
from scripts import lora_syntax_webui as glue


def a1111_sdxl(pipe):
    """A1111's SDXL model: LDM UNet, conditioner with hijack-wrapped CLIP-L and OpenCLIP-G, size embedders."""
    size = torch.nn.Module()       # ConcatTimestepEmbedderND: no text encoder
    embedders = [NS(wrapped=NS(transformer=copy.deepcopy(pipe.text_encoder))),
                 NS(wrapped=NS(model=openclip_copy(pipe.text_encoder_2))), size, size]
    return NS(is_sdxl=True, model=NS(diffusion_model=ldm_copy(pipe.unet)), conditioner=NS(embedders=embedders))


def forge_sdxl(pipe):
    clip = NS(clip_l=NS(transformer=copy.deepcopy(pipe.text_encoder)),
              clip_g=NS(transformer=copy.deepcopy(pipe.text_encoder_2)))
    unet = NS(model=NS(diffusion_model=ldm_copy(pipe.unet), storage_dtype=torch.float16))
    return NS(is_sdxl=True, forge_objects=NS(unet=unet, clip=NS(cond_stage_model=clip)))


def _weight(component, name):
    try:
        return component.get_submodule(name).weight
    except AttributeError:
        return component.get_submodule(text_model_alias(name)).weight


def test_components_found_where_each_host_keeps_them(tmp_path):
    pipe = tiny_pipeline("sdxl")
    write_lora(tmp_path, "ink", lora_state_dict(pipe, ("unet", "text_encoder", "text_encoder_2"), seed=4))
    models = (a1111_sdxl(pipe), forge_sdxl(pipe))      # copies made before the diffusers model is patched
    ours = EngineSession(pipeline_components(pipe), tree_from_pipeline(pipe, "sdxl"), LoraLibrary([tmp_path]))
    run = ours.start("a cat <lora:ink:0.7>", 2)
    for model in models:
        components = glue.host_components(model)
        assert sorted(components) == ["text_encoder", "text_encoder_2", "unet"]
        assert glue.architecture(model, components["unet"]) == "sdxl"
        tree = component_tree("sdxl", components)
        host = EngineSession(components, tree, LoraLibrary([tmp_path])).start("a cat <lora:ink:0.7>", 2)
        for component, modules in tree.modules.items():
            for name in modules:
                assert torch.equal(_weight(components[component], name), _weight(getattr(pipe, component), name))
        host.end()
    assert isinstance(glue.host_components(models[0])["text_encoder_2"].get_submodule(
        "text_model.encoder.layers.0.self_attn.q_proj"), FusedRows)
    run.end()


def test_forge_storage_flag_refuses_fp8_and_quantized():
    pipe = tiny_pipeline("sdxl")
    model = forge_sdxl(pipe)
    assert glue.forge_storage(model) is None
    model.forge_objects.unet.model.storage_dtype = torch.float8_e4m3fn
    assert "float8_e4m3fn" in glue.forge_storage(model)
    model.forge_objects.unet.model.storage_dtype = "nf4"
    assert "nf4" in glue.forge_storage(model)
