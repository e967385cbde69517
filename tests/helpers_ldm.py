"""LDM/SGM-named and OpenCLIP copies of the tiny diffusers models, as A1111 and Forge hold them."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch

from lora_syntax.keymaps.ldm import block_prefixes, ldm_name
from lora_syntax.keymaps.openclip import FUSED_QKV, LAYER
from lora_syntax.keymaps.tree import modules_of
from lora_syntax.keymaps.kohya import text_model_alias


def _place(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    *parents, last = path.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, torch.nn.Module())
        node = getattr(node, part)
    node.add_module(last, module)


def ldm_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A module tree holding copies of ``unet``'s weighted modules under their LDM/SGM names."""
    prefixes = block_prefixes(dict(unet.config))
    root = torch.nn.Module()
    for name in modules_of(unet):
        target = ldm_name(name, prefixes)
        assert target is not None, name
        _place(root, target, copy.deepcopy(unet.get_submodule(name)))
    return root


def _hf(te: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return te.get_submodule(name)
    except AttributeError:
        return te.get_submodule(text_model_alias(name))


class _Block(torch.nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(width)
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_2 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential(OrderedDict(c_fc=torch.nn.Linear(width, hidden), gelu=torch.nn.GELU(),
                                                   c_proj=torch.nn.Linear(hidden, width)))


def openclip_copy(te: torch.nn.Module) -> torch.nn.Module:
    """An OpenCLIP-layout text tower (``transformer.resblocks.N.attn.in_proj_weight``...) with ``te``'s values."""
    config = te.config
    width, layers = config.hidden_size, config.num_hidden_layers
    root = torch.nn.Module()
    root.token_embedding = copy.deepcopy(_hf(te, "text_model.embeddings.token_embedding"))
    root.transformer = torch.nn.Module()
    with torch.device(root.token_embedding.weight.device):
        root.transformer.resblocks = torch.nn.ModuleList(
            _Block(width, config.num_attention_heads, config.intermediate_size) for _ in range(layers))
    root.ln_final = copy.deepcopy(_hf(te, "text_model.final_layer_norm"))
    if root.token_embedding.weight.is_meta:
        return root
    with torch.no_grad():
        for n, block in enumerate(root.transformer.resblocks):
            layer = f"text_model.encoder.layers.{n}"
            qkv = sorted(FUSED_QKV, key=FUSED_QKV.get)
            block.attn.in_proj_weight.copy_(torch.cat([_hf(te, f"{layer}.{s}").weight for s in qkv]))
            block.attn.in_proj_bias.copy_(torch.cat([_hf(te, f"{layer}.{s}").bias for s in qkv]))
            for hf, oc in LAYER.items():
                target, source = block.get_submodule(oc), _hf(te, f"{layer}.{hf}")
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
    return root
