"""diffusers UNet module names <-> the original LDM/SGM names (``input_blocks``, ``middle_block``, ``output_blocks``).

kohya's SDXL LoRAs (and some SD1.5 ones) name UNet modules by the original Stability code, e.g.
``input_blocks.4.1.transformer_blocks.0.attn1.to_q`` for diffusers'
``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``. The block prefix table is computed from
the UNet config (block count, ``layers_per_block``, which blocks have attention), so it holds for SD1.5,
SD2, SDXL and the tiny test UNets alike. With L = layers_per_block:

    down_blocks.i.resnets.j     -> input_blocks.{1+i*(L+1)+j}.0      attentions.j -> ...{same}.1
    down_blocks.i.downsamplers.0.conv -> input_blocks.{(i+1)*(L+1)}.0.op
    up_blocks.i.resnets.j       -> output_blocks.{i*(L+1)+j}.0       attentions.j -> ...{same}.1
    up_blocks.i.upsamplers.0    -> output_blocks.{i*(L+1)+L}.{1, or 2 when the block has attention}
    mid_block.resnets.0/attentions.0/resnets.1 -> middle_block.0/1/2
"""

from __future__ import annotations

from collections.abc import Mapping

# Whole-module renames outside the down/mid/up blocks.
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# Renames inside a ResnetBlock2D (diffusers suffix -> LDM suffix); attention blocks keep their names.
RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _layers(config: Mapping[str, object]) -> int:
    layers = config.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):  # per-block lists exist in diffusers; real SD models use one value
        layers = layers[0]
    return int(layers)


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type or "Attn" in block_type


def block_prefixes(config: Mapping[str, object]) -> dict[str, str]:
    """``{diffusers block prefix: LDM block prefix}`` for one UNet2DConditionModel config."""
    layers = _layers(config)
    down_types = list(config.get("down_block_types", ()))
    up_types = list(config.get("up_block_types", ()))
    table: dict[str, str] = {}
    for i, _ in enumerate(down_types):
        for j in range(layers):
            n = 1 + i * (layers + 1) + j
            table[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            table[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
        table[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (layers + 1)}.0.op"
    for i, block_type in enumerate(up_types):
        for j in range(layers + 1):
            n = i * (layers + 1) + j
            table[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{n}.0"
            table[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{n}.1"
        slot = 2 if _has_attention(block_type) else 1
        table[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{i * (layers + 1) + layers}.{slot}"
    table["mid_block.resnets.0"] = "middle_block.0"
    table["mid_block.attentions.0"] = "middle_block.1"
    table["mid_block.resnets.1"] = "middle_block.2"
    return table


def _translate(module: str, prefixes: Mapping[str, str], top_level: Mapping[str, str],
               resnet: Mapping[str, str], depth: int) -> str | None:
    """``module`` renamed by the longest block prefix of ``prefixes`` it starts with (up to ``depth`` parts),
    with the resnet layer names of ``resnet`` inside resnet blocks; ``None`` when no prefix matches."""
    if module in top_level:
        return top_level[module]
    parts = module.split(".")
    for cut in range(min(len(parts), depth), 1, -1):
        head = ".".join(parts[:cut])
        if head not in prefixes:
            continue
        target, rest = prefixes[head], parts[cut:]
        if ".resnets." in f".{head}." or ".resnets." in f".{target}.":   # the diffusers side names resnets
            tail = ".".join(rest)
            rest = [resnet.get(tail, tail)] if tail else []
        return ".".join([target, *rest])
    return None


def ldm_name(module: str, prefixes: Mapping[str, str]) -> str | None:
    """The LDM/SGM name of diffusers UNet module ``module``, or ``None`` when it has none."""
    return _translate(module, prefixes, TOP_LEVEL, RESNET, 5)


def ldm_names(modules: list[str] | tuple[str, ...] | Mapping[str, object],
              config: Mapping[str, object]) -> dict[str, str]:
    """``{LDM name: diffusers name}`` for every UNet module that has an LDM name."""
    prefixes = block_prefixes(config)
    return {name: module for module in modules if (name := ldm_name(module, prefixes)) is not None}


# -- the other direction: a model whose own modules have LDM/SGM names (A1111, Forge) -------------------

# A UNet block with attention has a transformer at slot 1 of its LDM block (``input_blocks.4.1.proj_in``...).
_ATTENTION_PARTS = ("proj_in", "transformer_blocks", "norm", "proj_out")


def _attention_at(modules: set[str], prefix: str) -> bool:
    return any(f"{prefix}.{part}" in modules or any(m.startswith(f"{prefix}.{part}.") for m in modules)
               for part in _ATTENTION_PARTS[:2])


def ldm_config(modules: list[str] | tuple[str, ...] | Mapping[str, object]) -> dict[str, object]:
    """The diffusers UNet config facts (``layers_per_block``, block types) read off LDM/SGM module names.

    ``input_blocks.{L+1}.0.op`` is the first downsampler, so L = its index - 1; the number of ``.op``
    modules + 1 is the block count; a block has attention when its slot 1 holds a transformer.
    """
    names = set(modules)
    ops = sorted(int(m.split(".")[1]) for m in names if m.startswith("input_blocks.") and m.endswith(".0.op"))
    if not ops:
        raise ValueError("not an LDM/SGM UNet: no input_blocks.N.0.op downsampler")
    layers = ops[0] - 1
    blocks = len(ops) + 1
    down = [("CrossAttnDownBlock2D" if _attention_at(names, f"input_blocks.{1 + i * (layers + 1)}.1")
             else "DownBlock2D") for i in range(blocks)]
    up = [("CrossAttnUpBlock2D" if _attention_at(names, f"output_blocks.{i * (layers + 1)}.1")
           else "UpBlock2D") for i in range(blocks)]
    return {"layers_per_block": layers, "down_block_types": down, "up_block_types": up}


def diffusers_prefixes(config: Mapping[str, object]) -> dict[str, str]:
    """``{LDM block prefix: diffusers block prefix}``: :func:`block_prefixes` inverted, attention slots only
    where the block has attention (``output_blocks.2.1`` is SD1.5's first upsampler, not an attention)."""
    down_types = list(config.get("down_block_types", ()))
    up_types = list(config.get("up_block_types", ()))
    inverse = {}
    for diffusers, ldm in block_prefixes(config).items():
        parts = diffusers.split(".")
        if parts[2] == "attentions" and parts[0] != "mid_block":
            types = down_types if parts[0] == "down_blocks" else up_types
            if not _has_attention(types[int(parts[1])]):
                continue
        inverse[ldm] = diffusers
    return inverse


_TOP_LEVEL_INVERSE = {ldm: diffusers for diffusers, ldm in TOP_LEVEL.items()}
_RESNET_INVERSE = {ldm: diffusers for diffusers, ldm in RESNET.items()}


def diffusers_name(module: str, prefixes: Mapping[str, str]) -> str | None:
    """The diffusers name of LDM/SGM UNet module ``module`` (``prefixes`` from :func:`diffusers_prefixes`)."""
    return _translate(module, prefixes, _TOP_LEVEL_INVERSE, _RESNET_INVERSE, 4)
