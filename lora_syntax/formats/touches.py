"""Which kinds of component a LoRA file has keys for, from its key names alone (no tensor, no model tree).

A kind is a tag key: ``"te"`` (every text encoder) or ``"unet"`` (the denoiser). The strength warning
needs no more: it sums text encoders and denoiser blocks apart (``plan.Plan.touching``). A key's kind is
that of its component prefix, the longest that matches, taken from the dialects' own tables:

    lora_te_text_model_encoder_layers_0_mlp_fc1.alpha             kohya (keymaps.kohya.PREFIXES)       te
    lycoris_input_blocks_4_1_proj_out.dora_scale                  kohya/LyCORIS                        unet
    text_encoder_2.text_model.encoder.layers.0....lora_A.weight   PEFT/diffusers (peft.COMPONENT_PREFIXES) te
    text_encoders.clip_l.transformer.text_model....lora_up.weight BFL/ComfyUI (flux_bfl.TEXT_PREFIXES)  te
    diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1          BFL                                  unet
    double_blocks.0.processor.qkv_lora1.down.weight               XLabs, bare BFL names (flux_bfl.NAME_RE) unet
A key with none of these (bare PEFT ``down_blocks...``, an embedding bundled in the file) tells nothing:
the file is then taken to touch every component (``None``), as when the files are not known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..keymaps.kohya import PREFIXES as KOHYA_PREFIXES
from .flux_bfl import NAME_RE as BFL_NAME, TEXT_PREFIXES as BFL_TEXT_PREFIXES, TRANSFORMER_PREFIXES
from .flux_common import KOHYA_TE_PREFIXES
from .peft import COMPONENT_PREFIXES

KINDS = ("te", "unet")


def kind_of(component: str) -> str:
    """``"te"`` for a text encoder, ``"unet"`` for a denoiser (``unet``, ``transformer``, ``transformer_2``)."""
    return "te" if component.startswith("text_encoder") else "unet"


def _prefix_table() -> tuple[tuple[str, str], ...]:
    """(prefix, kind), longest prefix first, from every dialect's component prefixes. Kinds do not depend
    on the architecture (FLUX's ``lora_unet_`` is its transformer, SD's its UNet: both the denoiser); a
    prefix two tables gave different kinds would make the answer depend on their order, so it is refused."""
    rows = [(prefix, kind_of(component)) for by_component in KOHYA_PREFIXES.values()
            for component, prefixes in by_component.items() for prefix in prefixes]
    rows += [(prefix, kind_of(component)) for prefix, component in KOHYA_TE_PREFIXES.items()]
    rows += [(component + ".", kind_of(component)) for component in COMPONENT_PREFIXES]
    rows += [(prefix, kind_of(component)) for prefix, component in BFL_TEXT_PREFIXES.items()]
    rows += [(prefix, "unet") for prefix in TRANSFORMER_PREFIXES if prefix]
    table = dict(rows)
    clash = sorted({prefix for prefix, kind in rows if table[prefix] != kind})
    if clash:
        raise ValueError(f"key prefixes {clash} name both a text encoder and a denoiser in the key maps")
    return tuple(sorted(table.items(), key=lambda row: -len(row[0])))


PREFIX_KINDS = _prefix_table()
_BARE_DENOISER = re.compile(BFL_NAME)


def key_kind(key: str) -> str | None:
    """The kind of component ``key`` is for, or None when its name does not say."""
    for prefix, kind in PREFIX_KINDS:
        if key.startswith(prefix):
            return kind
    return "unet" if _BARE_DENOISER.match(key) else None


def touched_kinds(keys: Iterable[str]) -> tuple[str, ...] | None:
    """The kinds (of :data:`KINDS`, in that order) a file's keys are for; None when some key does not say."""
    found: set[str] = set()
    for key in keys:
        kind = key_kind(key)
        if kind is None:
            return None
        found.add(kind)
    return tuple(kind for kind in KINDS if kind in found)
