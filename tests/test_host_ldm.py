"""The same LoRA files on models with LDM/SGM module names (A1111, Forge) and OpenCLIP text towers with
fused q/k/v (A1111's SD2/SDXL): the fused weights equal those on the diffusers model, bit for bit, with
the same block ids, and every weight comes back bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from helpers_engine import lora_state_dict, write_lora
from helpers_formats import inventory_state_dict, kohya_state_dict
from helpers_ldm import ldm_copy, openclip_copy
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.keymaps.kohya import text_model_alias
from lora_syntax.keymaps.ldm import block_prefixes, ldm_name
from lora_syntax.keymaps.reference import reference_tree
from lora_syntax.keymaps.view import component_tree, ldm_unet, openclip_text, same_names
from lora_syntax.keymaps.tree import pipeline_components
from lora_syntax.library import LoraLibrary
from lora_syntax.loader import load_lora
from lora_syntax.session import EngineSession
from lora_syntax.testing.tiny import tiny_pipeline

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
PROMPT = "a cat <lora:kohya:0.8> <lora:sgm:0.5@1,1@3:in=0.5> <lora:peft:te=0.7:unet=0.3>"


def _host_components(pipe, arch: str, openclip: tuple[str, ...]) -> dict:
    """The pipeline's models as a host holds them: LDM UNet, OpenCLIP where asked, transformers CLIP otherwise."""
    found = {"unet": ldm_unet(ldm_copy(pipe.unet))}
    for attr in ("text_encoder", "text_encoder_2"):
        te = getattr(pipe, attr, None)
        if te is not None:
            found[attr] = openclip_text(openclip_copy(te)) if attr in openclip else same_names(copy.deepcopy(te))
    return found


def _weight(component, name: str) -> torch.Tensor:
    try:
        return component.get_submodule(name).weight
    except AttributeError:
        return component.get_submodule(text_model_alias(name)).weight


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    found = {}
    for arch in ("sd15", "sdxl"):
        folder = tmp_path_factory.mktemp(f"loras-{arch}")
        pipe = tiny_pipeline(arch)
        tes = ("text_encoder", "text_encoder_2") if arch == "sdxl" else ("text_encoder",)
        write_lora(folder, "kohya", kohya_state_dict(pipe, arch, seed=1))
        write_lora(folder, "sgm", kohya_state_dict(pipe, arch, sgm_names=True, seed=2))
        write_lora(folder, "peft", lora_state_dict(pipe, ("unet", *tes), seed=3))
        found[arch] = folder
    return found


def _fused(components, tree, folder: Path, prompt: str, step: int) -> tuple[dict, object]:
    session = EngineSession(components, tree, LoraLibrary([folder]))
    run = session.start(prompt, 4)
    run.step(step)
    return session, run


@pytest.mark.parametrize("arch,openclip", [("sd15", ()), ("sd15", ("text_encoder",)),
                                           ("sdxl", ("text_encoder_2",))])
def test_fused_weights_equal_the_diffusers_model(folders, arch, openclip):
    pipe = tiny_pipeline(arch)
    host = _host_components(pipe, arch, openclip)
    host_tree = component_tree(arch, host)
    diffusers_tree = tree_from_pipeline(pipe, arch)
    originals = {(c, n): _weight(host[c], n).detach().clone() for c in host_tree.modules for n in host_tree.modules[c]}
    _, ours = _fused(pipeline_components(pipe), diffusers_tree, folders[arch], PROMPT, 3)
    _, theirs = _fused(host, host_tree, folders[arch], PROMPT, 3)
    changed = 0
    for component, modules in host_tree.modules.items():
        for name in modules:
            expected = _weight(getattr(pipe, component), name)
            got = _weight(host[component], name)
            assert torch.equal(expected, got), f"{component}.{name}"
            changed += not torch.equal(got, originals[(component, name)])
    assert changed > 50
    assert [s.target.block for s in ours.session.patcher.stacks] == [s.target.block for s in theirs.session.patcher.stacks]
    theirs.end()
    ours.end()
    for (component, name), value in originals.items():
        assert torch.equal(_weight(host[component], name), value), f"{component}.{name}"


def test_fused_qkv_rows_are_written_in_place_and_restored():
    pipe = tiny_pipeline("sdxl")
    host = _host_components(pipe, "sdxl", ("text_encoder_2",))
    fused = host["text_encoder_2"].root.transformer.resblocks[0].attn.in_proj_weight
    before, storage = fused.detach().clone(), fused.data_ptr()
    q = host["text_encoder_2"].get_submodule("text_model.encoder.layers.0.self_attn.q_proj")
    width = fused.shape[1]
    assert q.weight.shape == (width, width) and q.weight.data_ptr() == storage
    k = host["text_encoder_2"].get_submodule("text_model.encoder.layers.0.self_attn.k_proj")
    assert k.weight.data_ptr() == storage + width * width * fused.element_size()


def test_block_ids_are_the_ldm_indices():
    pipe = tiny_pipeline("sd15")
    tree = component_tree("sd15", {"unet": ldm_unet(ldm_copy(pipe.unet))})
    from lora_syntax.keymaps.blockids import block_of
    prefixes = block_prefixes(dict(pipe.unet.config))
    for name in tree.modules["unet"]:
        block = block_of("sd15", "unet", name, tree.config["unet"])
        ldm = ldm_name(name, prefixes)
        assert block == block_of("sd15", "unet", name, dict(pipe.unet.config)), name
        head = ldm.split(".")[:2]
        if head[0] in ("input_blocks", "output_blocks"):
            assert block == f"{'IN' if head[0] == 'input_blocks' else 'OUT'}{int(head[1]):02d}", name


def test_real_files_map_onto_full_size_ldm_models():
    """Real SD1.5 and SDXL (kohya SGM names) files place every key on the LDM-named full-size models
    exactly where they place them on the diffusers models (meta device: shapes only)."""
    cases = [("sd15", FIXTURES / "real-loras" / "sd15_diffusers_attnproc_rank4.safetensors"),
             ("sdxl", FIXTURES / "key-inventories" / "sdxl_lora_kohya_format.json"),
             ("sdxl", FIXTURES / "key-inventories" / "sdxl_locon_kohya_unet_format.json")]
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures absent: {FIXTURES}")
    from lora_syntax.keymaps.reference import REFERENCE_BUILDERS
    for arch, path in cases:
        with torch.device("meta"):
            components = REFERENCE_BUILDERS[arch]()
        host = {"unet": ldm_unet(ldm_copy(components["unet"]))}
        for attr in ("text_encoder", "text_encoder_2"):
            if attr in components:
                host[attr] = (openclip_text(openclip_copy(components[attr])) if attr == "text_encoder_2"
                              else same_names(components[attr]))
        host_tree = component_tree(arch, host)
        source = inventory_state_dict(path) if path.suffix == ".json" else path
        reference = load_lora(source, reference_tree(arch))
        ours = load_lora(source, host_tree)
        assert not ours.unmatched and len(ours.patches) == len(reference.patches) > 0, path.name

        def norm(p):
            return (p.target.component, text_model_alias(p.target.module) if p.target.module.startswith("encoder.")
                    else p.target.module, p.target.block)
        assert sorted(map(norm, ours.patches)) == sorted(map(norm, reference.patches)), path.name
