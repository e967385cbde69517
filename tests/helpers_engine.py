"""Engine test helpers: random PEFT-format LoRA files for tiny pipelines, and state snapshots."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_syntax.adapters.base import Adapter

# Attention and feed-forward linears of UNets/FLUX transformers and CLIP text encoders.
LINEAR_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
                   "q_proj", "k_proj", "v_proj", "out_proj")


def lora_state_dict(pipe, components=("unet", "text_encoder"), *, rank: int = 4, seed: int = 0,
                    scale: float = 0.2) -> dict[str, torch.Tensor]:
    """A PEFT/diffusers-format LoRA (``unet.<module>.lora_A.weight``...) on every attention/FF linear."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for component in components:
        for name, module in getattr(pipe, component).named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(LINEAR_SUFFIXES):
                state[f"{component}.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * scale
                state[f"{component}.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * scale
    return state


def write_lora(folder: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    """Save ``state`` as ``folder/name.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def snapshot(pipe) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of every torch component, cloned."""
    found = {}
    for comp_name, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            for key, value in comp.state_dict(keep_vars=False).items():
                found[f"{comp_name}.{key}"] = value.detach().clone()
    return found


def assert_bitwise(before: dict[str, torch.Tensor], pipe) -> None:
    after = snapshot(pipe)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.dtype == after[key].dtype and torch.equal(value, after[key]), key


class StandIn(Adapter):
    """Test adapters are built directly, never picked from file keys."""

    @classmethod
    def claims(cls, params):
        return False

    @classmethod
    def from_params(cls, params):
        raise NotImplementedError
