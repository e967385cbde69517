"""diffusers as the oracle for the FLUX.1 key map, the fused qkv/linear1 splits and the final-layer swap.

1. kohya- and diffusers-format LoRAs for the tiny FLUX pipeline are loaded and fused by diffusers
   (``load_lora_weights`` + ``fuse_lora``); every fused weight must equal original + our delta (fp32).
2. diffusers' kohya loader hard-codes FLUX.1's 3072/12288 widths for ``linear1``; so a full-size,
   rank-2 kohya LoRA of every BFL module is converted by diffusers' own converter and each converted
   target's ``B @ A`` is compared with our rows on random probes (no full-size weight is built).
"""

from __future__ import annotations

import pytest
import torch

from lora_syntax.formats import pick_dialect
from lora_syntax.keymaps import flux as fluxmap
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.keymaps.reference import reference_tree
from lora_syntax.testing.tiny import tiny_pipeline
from lora_syntax.adapters.registry import build_adapter, sliced
from tests.helpers_flux import our_delta

RANK = 4


def _bfl_names(tree, *, singles: bool) -> list[str]:
    """Every dotted BFL module name the tree has targets for."""
    config = tree.config["transformer"]
    names = [n for n in fluxmap.GLOBAL if all(tree.get("transformer", m) for m in fluxmap.place_bfl(n).modules)]
    names += [f"double_blocks.{i}.{n}" for i in range(config["num_layers"]) for n in fluxmap.DOUBLE_BLOCK]
    if singles:
        names += [f"single_blocks.{i}.{n}" for i in range(config["num_single_layers"]) for n in fluxmap.SINGLE_BLOCK]
    return names


def kohya_flux_lora(tree, *, singles: bool, rank: int = RANK, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya FLUX LoRA on every BFL module (fused shapes from the tree), with alpha != rank."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in _bfl_names(tree, singles=singles):
        place = fluxmap.place_bfl(name)
        rows = fluxmap.split_rows(tree, "transformer", place.modules)[-1][1]
        cols = tree.get("transformer", place.modules[0]).weight_shape[1]
        key = "lora_unet_" + name.replace(".", "_")
        out[f"{key}.lora_down.weight"] = torch.randn(rank, cols, generator=gen) * 0.1
        out[f"{key}.lora_up.weight"] = torch.randn(rows, rank, generator=gen) * 0.1
        # diffusers ignores final_layer alphas (its "TODO: alphas"), so those keep scale 1 here.
        out[f"{key}.alpha"] = torch.tensor(float(rank) if "final_layer" in name else rank / 2.0)
    return out


def _linears(tree, component):
    return [m for m, info in tree.modules[component].items() if info.kind == "linear"]


def kohya_te1(tree, rank: int = RANK, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module in _linears(tree, "text_encoder"):
        if ".layers." not in module:
            continue
        info = tree.get("text_encoder", module)
        key = "lora_te1_text_model_" + module.removeprefix("text_model.").replace(".", "_")
        out[f"{key}.lora_down.weight"] = torch.randn(rank, info.weight_shape[1], generator=gen) * 0.1
        out[f"{key}.lora_up.weight"] = torch.randn(info.weight_shape[0], rank, generator=gen) * 0.1
        out[f"{key}.alpha"] = torch.tensor(rank * 2.0)
    return out


def peft_flux_lora(tree, rank: int = RANK, seed: int = 2) -> dict[str, torch.Tensor]:
    """A diffusers/PEFT FLUX LoRA on every linear of the transformer."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module in _linears(tree, "transformer"):
        out_dim, in_dim = tree.get("transformer", module).weight_shape
        out[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, in_dim, generator=gen) * 0.1
        out[f"transformer.{module}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.1
    return out


def _fused_by_diffusers(pipe, state_dict):
    """diffusers converts (``FluxPipeline.lora_state_dict``), loads and fuses the LoRA.

    diffusers 0.42 converts kohya's embedder/final-layer keys without the ``transformer.`` prefix and
    its loader then drops them silently; the prefix is restored between its two steps."""
    from diffusers import FluxPipeline

    converted = FluxPipeline.lora_state_dict({k: v.clone() for k, v in state_dict.items()})
    converted = {k if k.startswith(("transformer.", "text_encoder.")) else f"transformer.{k}": v
                 for k, v in converted.items()}
    pipe.load_lora_weights(converted, adapter_name="oracle")
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=1.0)
    pipe.unload_lora_weights()


def _compare(pipe, tree, state_dict, originals, expected_dialect):
    dialect = pick_dialect(state_dict.keys())
    assert dialect.name == expected_dialect
    grouped = dialect.group(state_dict, tree)
    assert grouped.unmatched == []
    _fused_by_diffusers(pipe, state_dict)
    checked = set()
    for group in grouped.modules:
        component, module = group.target.component, group.target.module
        original = originals[component][module]
        fused = getattr(pipe, component).get_submodule(module).weight.detach().float()
        ours = original.float() + our_delta(group, original)
        torch.testing.assert_close(fused, ours, rtol=1e-5, atol=1e-5, msg=f"{component}.{module}")
        checked.add((component, module))
    return checked


def _originals(pipe):
    return {c: {n: m.weight.detach().clone() for n, m in getattr(pipe, c).named_modules()
                if isinstance(m, torch.nn.Linear)} for c in ("transformer", "text_encoder")}


@pytest.fixture()
def pipe():
    return tiny_pipeline("flux")


def test_kohya_flux_equals_diffusers_fused_weights(pipe):
    tree = tree_from_pipeline(pipe, "flux")
    state_dict = kohya_flux_lora(tree, singles=False)
    checked = _compare(pipe, tree, state_dict, _originals(pipe), "flux-kohya")
    double = {m for c, m in checked if m.startswith("transformer_blocks.0.")}
    assert len(double) == 14  # 10 BFL modules, two of them qkv onto 3 targets each
    assert ("transformer", "norm_out.linear") in checked and ("transformer", "x_embedder") in checked


def test_kohya_flux_text_encoder_equals_diffusers(pipe):
    tree = tree_from_pipeline(pipe, "flux")
    state_dict = {**kohya_flux_lora(tree, singles=False), **kohya_te1(tree)}
    checked = _compare(pipe, tree, state_dict, _originals(pipe), "flux-kohya")
    assert sum(c == "text_encoder" for c, _ in checked) == 6 * tree.config["text_encoder"]["num_hidden_layers"]


def test_diffusers_flux_equals_diffusers_fused_weights(pipe):
    tree = tree_from_pipeline(pipe, "flux")
    state_dict = peft_flux_lora(tree)
    checked = _compare(pipe, tree, state_dict, _originals(pipe), "flux-diffusers")
    assert len(checked) == len(_linears(tree, "transformer"))


def test_full_size_kohya_split_equals_diffusers_converter():
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    tree = reference_tree("flux")
    state_dict = kohya_flux_lora(tree, singles=True, rank=2)
    grouped = pick_dialect(state_dict.keys()).group(state_dict, tree)
    assert grouped.unmatched == []
    converted = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in state_dict.items()})
    converted = {k.removeprefix("transformer."): v for k, v in converted.items()}
    assert len(converted) == 2 * len(grouped.modules)
    gen = torch.Generator().manual_seed(3)
    for group in grouped.modules:
        name = group.target.module
        adapter = build_adapter(group.params, where=name)
        if group.rows is not None:
            adapter = sliced(adapter, *group.rows)
        up, down = adapter.low_rank(tree.get("transformer", name).weight_shape)
        b_up, b_down = converted[f"{name}.lora_B.weight"], converted[f"{name}.lora_A.weight"]
        probe = torch.randn(down.shape[1], 3, generator=gen)
        torch.testing.assert_close(up @ (down @ probe), b_up @ (b_down @ probe), rtol=1e-5, atol=1e-6, msg=name)
    singles = [g for g in grouped.modules if g.target.module.startswith("single_transformer_blocks.37.")]
    assert {g.target.module.split(".", 2)[2]: g.rows for g in singles if g.rows} == {
        "attn.to_q": (0, 3072), "attn.to_k": (3072, 6144), "attn.to_v": (6144, 9216), "proj_mlp": (9216, 21504)}
