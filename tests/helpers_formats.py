"""LoRA state dicts in real file layouts for the tiny pipelines, and fused-weight comparisons."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from lora_syntax.keymaps.ldm import block_prefixes, ldm_name

# Module suffixes a LoRA trainer targets: attention and feed-forward linears, transformer projections.
UNET_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
UNET_CONVS = ("resnets.0.conv1", "resnets.1.conv2")  # a LoCon's 3x3 convs


def targets(component: torch.nn.Module, suffixes: Iterable[str]) -> list[str]:
    suffixes = tuple(suffixes)
    return [name for name, module in component.named_modules()
            if name.endswith(suffixes) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]


def factors(module: torch.nn.Module, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a Linear or Conv2d, kohya-shaped (conv down keeps the kernel)."""
    w = module.weight
    if w.ndim == 4:
        down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=gen) * 0.1
        up = torch.randn(w.shape[0], rank, 1, 1, generator=gen) * 0.1
    else:
        down = torch.randn(rank, w.shape[1], generator=gen) * 0.1
        up = torch.randn(w.shape[0], rank, generator=gen) * 0.1
    return down, up


def unet_modules(pipe, *, conv: bool) -> list[str]:
    return targets(pipe.unet, UNET_LINEARS + (UNET_CONVS if conv else ()))


def kohya_state_dict(pipe, arch: str, *, rank: int = 4, alpha: float = 2.0, conv: bool = True,
                     sgm_names: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """kohya keys for the tiny pipeline: UNet (diffusers or SGM names), text encoder(s), LoCon convs."""
    gen = torch.Generator().manual_seed(seed)
    prefixes = block_prefixes(dict(pipe.unet.config))
    sd: dict[str, torch.Tensor] = {}
    plan = [("lora_unet_", pipe.unet, unet_modules(pipe, conv=conv))]
    te_prefixes = ("lora_te1_", "lora_te2_") if arch == "sdxl" else ("lora_te_",)
    for prefix, attr in zip(te_prefixes, ("text_encoder", "text_encoder_2")):
        plan.append((prefix, getattr(pipe, attr), targets(getattr(pipe, attr), TE_LINEARS)))
    for prefix, component, names in plan:
        for name in names:
            module = component.get_submodule(name)
            down, up = factors(module, rank, gen)
            shown = ldm_name(name, prefixes) if (sgm_names and component is pipe.unet) else name
            if component is not pipe.unet and not shown.startswith("text_model."):
                shown = "text_model." + shown  # real kohya files spell CLIP modules as transformers 4 did
            key = prefix + shown.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def peft_state_dict(pipe, *, rank: int = 4, seed: int = 1, text_encoders: Iterable[str] = ("text_encoder",)
                    ) -> dict[str, torch.Tensor]:
    """diffusers/PEFT keys (``unet.X.lora_A.weight``) on linears only (PEFT conv LoRAs use 1x1 up)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    plan = [("unet", pipe.unet, targets(pipe.unet, UNET_LINEARS))]
    plan += [(attr, getattr(pipe, attr), targets(getattr(pipe, attr), TE_LINEARS)) for attr in text_encoders]
    for prefix, component, names in plan:
        for name in names:
            down, up = factors(component.get_submodule(name), rank, gen)
            sd[f"{prefix}.{name}.lora_A.weight"], sd[f"{prefix}.{name}.lora_B.weight"] = down, up
    return sd


def original_weights(pipe, components: Iterable[str]) -> dict[tuple[str, str], torch.Tensor]:
    found = {}
    for attr in components:
        for name, module in getattr(pipe, attr).named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                found[(attr, name)] = weight.detach().clone().float()
    return found


def expected_weights(loaded, originals: Mapping[tuple[str, str], torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """Original weights plus our adapters' deltas (multiplier 1)."""
    expected = dict(originals)
    for patch in loaded.patches:
        key = (patch.target.component, patch.target.module)
        expected[key] = expected[key] + patch.adapter.delta(originals[key])
    return expected


def fused_weights(pipe, state_dict: Mapping[str, torch.Tensor], components: Iterable[str]):
    """diffusers' own answer: ``load_lora_weights`` + ``fuse_lora``."""
    pipe.load_lora_weights({k: v.clone() for k, v in state_dict.items()}, adapter_name="oracle")
    pipe.fuse_lora(components=list(components), lora_scale=1.0)
    fused = {}
    for attr in components:
        for name, module in getattr(pipe, attr).named_modules():
            if ".lora_" in name or name.endswith(".base_layer"):
                continue  # PEFT's own factor layers and the wrapped layer, reached through the wrapper
            base = getattr(module, "base_layer", module)
            weight = getattr(base, "weight", None)
            if isinstance(weight, torch.Tensor) and isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
                fused[(attr, name)] = weight.detach().clone().float()
    return fused


def inventory_state_dict(path: Path, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in exactly the layout of a key inventory (small random values, alpha = 8)."""
    from helpers_flux import synthesise

    keys = json.loads(path.read_text(encoding="utf-8"))["keys"]
    return synthesise({key: tuple(shape) for key, shape in keys.items()}, torch.float32, seed)