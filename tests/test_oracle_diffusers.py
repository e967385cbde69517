"""diffusers is the oracle: our key maps + adapter deltas must equal ``load_lora_weights`` + ``fuse_lora``.

Tiny SD1.5-like and SDXL-like pipelines get kohya (diffusers and SGM names, LoCon convs, both text
encoders) and PEFT LoRAs; every weight diffusers changes must equal original + our delta (fp32, atol
1e-5), and every weight it leaves alone must be one we leave alone.
"""

from __future__ import annotations

import pytest
import torch
from helpers_formats import (expected_weights, fused_weights, kohya_state_dict, original_weights,
                             peft_state_dict, targets, TE_LINEARS, UNET_LINEARS)

from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.loader import load_lora
from lora_syntax.testing.tiny import tiny_pipeline

pytest.importorskip("peft")


def components(arch: str) -> tuple[str, ...]:
    return ("unet", "text_encoder", "text_encoder_2") if arch == "sdxl" else ("unet", "text_encoder")


def assert_matches_diffusers(pipe, loaded, state_dict, comps) -> None:
    originals = original_weights(pipe, comps)
    expected = expected_weights(loaded, originals)
    fused = fused_weights(pipe, state_dict, comps)
    assert fused.keys() == originals.keys()
    changed = {k for k in originals if not torch.equal(fused[k], originals[k])}
    ours = {(p.target.component, p.target.module) for p in loaded.patches}
    assert changed == ours
    worst = max(float((fused[k] - expected[k]).abs().max()) for k in originals)
    assert worst < 1e-5, f"largest difference from diffusers: {worst}"


@pytest.mark.parametrize("arch,sgm", [("sd15", False), ("sdxl", True), ("sdxl", False)])
def test_kohya_matches_diffusers(arch: str, sgm: bool) -> None:
    pipe = tiny_pipeline(arch)
    state_dict = kohya_state_dict(pipe, arch, sgm_names=sgm, conv=True)
    loaded = load_lora(state_dict, tree_from_pipeline(pipe, arch), name="tiny")
    assert loaded.format == "kohya" and loaded.unmatched == ()
    assert len(loaded.patches) * 3 == len(state_dict)
    convs = [p for p in loaded.patches if p.target.module.endswith(("conv1", "conv2"))]
    assert convs and all(p.source_keys[0].endswith(".alpha") for p in convs)  # LoCon 3x3 convs are included
    assert_matches_diffusers(pipe, loaded, state_dict, components(arch))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_peft_matches_diffusers(arch: str) -> None:
    pipe = tiny_pipeline(arch)
    tes = components(arch)[1:]
    state_dict = peft_state_dict(pipe, text_encoders=tes)
    loaded = load_lora(state_dict, tree_from_pipeline(pipe), name="tiny-peft")
    assert loaded.format == "peft" and loaded.unmatched == ()
    assert {p.target.component for p in loaded.patches} == set(components(arch))
    assert_matches_diffusers(pipe, loaded, state_dict, components(arch))


def test_sd15_ldm_names_equal_diffusers_names() -> None:
    """SD1.5 kohya files with LDM names (diffusers cannot read them) land on the same modules, same deltas."""
    pipe = tiny_pipeline("sd15")
    tree = tree_from_pipeline(pipe, "sd15")
    plain = load_lora(kohya_state_dict(pipe, "sd15"), tree)
    ldm = load_lora(kohya_state_dict(pipe, "sd15", sgm_names=True), tree)
    assert any("input_blocks" in k for p in ldm.patches for k in p.source_keys)
    deltas = {}
    for patch in plain.patches:
        weight = tree_weight(pipe, patch.target)
        deltas[patch.target] = patch.adapter.delta(weight)
    assert {p.target for p in ldm.patches} == set(deltas)
    for patch in ldm.patches:
        assert torch.equal(patch.adapter.delta(tree_weight(pipe, patch.target)), deltas[patch.target])


def tree_weight(pipe, target) -> torch.Tensor:
    return getattr(pipe, target.component).get_submodule(target.module).weight.detach().float().clone()


def test_peft_alpha_from_diffusers_metadata(tmp_path) -> None:
    """A file saved by diffusers with ``lora_alpha`` in its metadata: scale alpha/r, as diffusers applies it."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    pipe = tiny_pipeline("sd15")
    state_dict = peft_state_dict(pipe, text_encoders=())
    unet_layers = {k[len("unet."):]: v for k, v in state_dict.items()}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in unet_layers})
    config = LoraConfig(r=4, lora_alpha=8, target_modules=modules).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=unet_layers,
                                              unet_lora_adapter_metadata=config)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    loaded = load_lora(path, tree_from_pipeline(pipe, "sd15"))
    assert loaded.format == "peft" and loaded.path == path
    patch = next(p for p in loaded.patches if p.target.module.endswith("attn2.to_q"))
    weight = tree_weight(pipe, patch.target)
    down = state_dict[f"unet.{patch.target.module}.lora_A.weight"]
    up = state_dict[f"unet.{patch.target.module}.lora_B.weight"]
    torch.testing.assert_close(patch.adapter.delta(weight), 2.0 * up @ down, atol=1e-6, rtol=1e-6)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["unet"])
    fused = pipe.unet.get_submodule(patch.target.module)
    fused_weight = getattr(fused, "base_layer", fused).weight.float()
    torch.testing.assert_close(fused_weight, weight + patch.adapter.delta(weight), atol=1e-5, rtol=0)


def test_attention_processor_keys_match_diffusers_names() -> None:
    """diffusers' old ``processor.to_q_lora`` keys land on the modules PEFT keys name, with the same delta."""
    pipe = tiny_pipeline("sd15")
    tree = tree_from_pipeline(pipe, "sd15")
    peft = peft_state_dict(pipe, text_encoders=())
    legacy = {}
    for key, tensor in peft.items():
        module, _, side = key[len("unet."):].rpartition(".lora_")
        if ".attn" not in module or "ff." in module:
            continue
        path, _, proj = module.rpartition(".")
        proj = "to_out" if proj == "0" else proj
        path = path.removesuffix(".to_out")
        legacy[f"{path}.processor.{proj}_lora.{'down' if side.startswith('A') else 'up'}.weight"] = tensor
    loaded = load_lora(legacy, tree)
    assert loaded.format == "diffusers-legacy" and loaded.unmatched == ()
    assert len(loaded.patches) == len(legacy) // 2 == len(targets(pipe.unet, UNET_LINEARS[:8]))
    for patch in loaded.patches:
        down = peft[f"unet.{patch.target.module}.lora_A.weight"]
        up = peft[f"unet.{patch.target.module}.lora_B.weight"]
        torch.testing.assert_close(patch.adapter.delta(tree_weight(pipe, patch.target)), up @ down)


def test_tiny_pipelines_run_and_are_independent_copies() -> None:
    for arch in ("sd15", "sdxl", "flux"):
        pipe = tiny_pipeline(arch)
        extra = {"max_sequence_length": 16} if arch == "flux" else {}
        image = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="pt",
                     generator=torch.Generator().manual_seed(0), **extra).images
        assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
        denoiser = pipe.transformer if arch == "flux" else pipe.unet
        next(denoiser.parameters()).data.zero_()
        fresh = tiny_pipeline(arch)
        fresh_denoiser = fresh.transformer if arch == "flux" else fresh.unet
        assert next(fresh_denoiser.parameters()).abs().sum() > 0
    assert len(targets(tiny_pipeline("sd15").text_encoder, TE_LINEARS)) == 12
