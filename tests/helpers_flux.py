"""Helpers for the FLUX.1 format tests: synthesise files from key inventories, predict delta shapes,
and compute our fused weights for comparison with diffusers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from lora_syntax.adapters.registry import build_adapter, sliced
from lora_syntax.formats.base import ModuleParams
from lora_syntax.keymaps.tree import ModelTree

FLUX_INVENTORIES = (
    "flux_lora_kohya_format", "flux_lora_kohya_with_te1_format", "flux_lora_diffusers_format",
    "flux_lora_diffusers_no_proj_mlp_format", "flux_lora_aitoolkit_format", "flux_lora_xlabs_format",
    "flux_dora_onetrainer_format", "flux_lokr_bfl_format",
)
# Inventory -> the dialect that must pick it.
EXPECTED_DIALECT = {
    "flux_lora_kohya_format": "flux-kohya", "flux_lora_kohya_with_te1_format": "flux-kohya",
    "flux_lora_diffusers_format": "flux-diffusers", "flux_lora_diffusers_no_proj_mlp_format": "flux-diffusers",
    "flux_lora_aitoolkit_format": "flux-aitoolkit", "flux_lora_xlabs_format": "flux-xlabs",
    "flux_dora_onetrainer_format": "flux-onetrainer", "flux_lokr_bfl_format": "flux-bfl",
}


def read_inventory(fixtures: Path, name: str) -> dict[str, tuple[int, ...]]:
    data = json.loads((fixtures / "key-inventories" / f"{name}.json").read_text(encoding="utf-8"))
    return {key: tuple(shape) for key, shape in data["keys"].items()}


def synthesise(shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Small random tensors of exactly these shapes (slices of one random pool: full-size FLUX
    inventories hold ~10^8 values); 0-d ``alpha`` set to 8."""
    largest = max((math.prod(shape) for shape in shapes.values()), default=1)
    pool = (torch.randn(largest, generator=torch.Generator().manual_seed(seed)) * 0.01).to(dtype)
    out = {}
    for key, shape in shapes.items():
        if key.endswith(".alpha"):
            out[key] = torch.tensor(8.0, dtype=dtype)
            continue
        out[key] = pool[:math.prod(shape)].reshape(shape).clone()
    return out


def by_source(groups: list[ModuleParams]) -> dict[tuple[str, ...], list[ModuleParams]]:
    """Grouped modules per file module (a fused file module yields several targets)."""
    units: dict[tuple[str, ...], list[ModuleParams]] = {}
    for group in groups:
        units.setdefault(group.source_keys, []).append(group)
    return units


def needed_shape(tree: ModelTree, targets: list[ModuleParams]) -> tuple[int, int]:
    """The 2-d delta shape a file module must have to cover ``targets`` (their rows stacked)."""
    infos = [tree.get(t.target.component, t.target.module) for t in targets]
    assert all(infos), [t.target for t in targets]
    return sum(i.weight_shape[0] for i in infos), math.prod(infos[0].weight_shape[1:])


def lokr_fitting(shapes: Mapping[str, tuple[int, ...]], tree: ModelTree, groups: list[ModuleParams]
                 ) -> dict[str, tuple[int, ...]]:
    """The inventory's LoKr keys with ``lokr_w2`` reshaped so ``w1 ⊗ w2`` fits the (fused) target.

    The shared BFL LoKr inventory's factor shapes are synthetic and do not multiply out to FLUX's."""
    fixed = dict(shapes)
    for keys, targets in by_source(groups).items():
        rows, cols = needed_shape(tree, targets)
        w1_key = next(k for k in keys if k.endswith("lokr_w1"))
        w2_key = next(k for k in keys if k.endswith("lokr_w2"))
        a, b = shapes[w1_key]
        fixed[w2_key] = (rows // a, cols // b)
    return fixed


def delta_shape(params: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """The 2-d shape of the delta these factors make, without computing it."""
    if "lora_up.weight" in params:
        return params["lora_up.weight"].shape[0], math.prod(params["lora_down.weight"].shape[1:])
    if "lokr_w1" in params and "lokr_w2" in params:
        w1, w2 = params["lokr_w1"].shape, params["lokr_w2"].shape
        return w1[0] * w2[0], w1[1] * w2[1]
    return None


def our_delta(group: ModuleParams, weight: torch.Tensor) -> torch.Tensor:
    """fp32 delta of one grouped module through the project's adapters (rows sliced)."""
    adapter = build_adapter(group.params, where=group.target.module)
    if group.rows is not None:
        adapter = sliced(adapter, *group.rows)
    return adapter.delta(weight.float())


def tiny_flux_transformer_config() -> dict[str, object]:
    """A FluxTransformer2DModel config a few channels wide, for when no tiny pipeline is at hand."""
    return dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
