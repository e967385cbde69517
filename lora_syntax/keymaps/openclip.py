"""transformers CLIP text-model names <-> OpenCLIP names (A1111's SD2 and SDXL second text encoder).

OpenCLIP keeps q, k and v of a layer in one fused ``attn.in_proj_weight`` (``nn.MultiheadAttention``),
rows ``[q | k | v]``; transformers has three Linears. A LoRA on ``self_attn.q_proj`` therefore writes
rows ``0:d`` of the fused weight, ``k_proj`` rows ``d:2d``, ``v_proj`` rows ``2d:3d`` (d = width):

    text_model.encoder.layers.N.self_attn.q_proj  -> transformer.resblocks.N.attn  in_proj rows [0:d]
    text_model.encoder.layers.N.self_attn.out_proj -> transformer.resblocks.N.attn.out_proj
    text_model.encoder.layers.N.mlp.fc1 / fc2      -> transformer.resblocks.N.mlp.c_fc / c_proj
    text_model.encoder.layers.N.layer_norm1 / 2    -> transformer.resblocks.N.ln_1 / ln_2
    text_model.embeddings.token_embedding          -> token_embedding
    text_model.final_layer_norm                    -> ln_final
(facts from open_clip's ``ResidualAttentionBlock`` and the state-dict converters of diffusers and Forge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# transformers suffix inside ``text_model.encoder.layers.N`` -> OpenCLIP suffix inside ``transformer.resblocks.N``.
LAYER: dict[str, str] = {
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
}
# transformers suffix -> index of its rows in the fused ``attn.in_proj_weight`` ([q | k | v]).
FUSED_QKV: dict[str, int] = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
FUSED_MODULE = "attn"        # the nn.MultiheadAttention holding in_proj_weight / in_proj_bias
FUSED_WEIGHT, FUSED_BIAS = "in_proj_weight", "in_proj_bias"
GLOBAL: dict[str, str] = {
    "text_model.embeddings.token_embedding": "token_embedding",
    "text_model.final_layer_norm": "ln_final",
}

_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class OpenClipPlace:
    """Where a transformers CLIP module lives in an OpenCLIP model: a module, or a third of a fused weight."""

    module: str
    fused_index: int | None = None   # 0/1/2 = q/k/v rows of ``module.in_proj_weight``


def openclip_place(name: str) -> OpenClipPlace | None:
    """The OpenCLIP place of transformers CLIP module ``name`` (with the ``text_model.`` prefix)."""
    if name in GLOBAL:
        return OpenClipPlace(GLOBAL[name])
    match = _LAYER_RE.match(name)
    if match is None:
        return None
    layer, rest = match.groups()
    if rest in FUSED_QKV:
        return OpenClipPlace(f"transformer.resblocks.{layer}.{FUSED_MODULE}", FUSED_QKV[rest])
    if rest in LAYER:
        return OpenClipPlace(f"transformer.resblocks.{layer}.{LAYER[rest]}")
    return None


def transformers_names(layers: int) -> list[str]:
    """Every transformers CLIP module name an OpenCLIP text tower of ``layers`` layers has a place for."""
    names = list(GLOBAL)
    for n in range(layers):
        names += [f"text_model.encoder.layers.{n}.{s}" for s in (*FUSED_QKV, *LAYER)]
    return names
