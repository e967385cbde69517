"""Which architecture a LoRA file was made for, from its key names and tensor shapes.

Evidence, strongest first:
1. ``SIGNATURES``: key patterns only one architecture has (FLUX block names, SDXL's second text
   encoder or 10-deep transformer stacks, ``label_emb``/``add_embedding``);
2. the cross-attention context width, read from the input side of an ``attn2`` key/value projection
   (``CONTEXT_WIDTHS``: 768 -> sd15, 1024 -> sd2, 2048 -> sdxl);
3. the text encoder width from a CLIP projection (768 -> sd15, 1024 -> sd2);
4. the metadata (``ss_base_model_version``, ``modelspec.architecture``), as a hint only.
A file that gives no evidence (a tiny test model's LoRA) detects as ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .keyscan import any_key, joined


@dataclass(frozen=True)
class Signature:
    """Keys matching ``pattern`` (a regex searched in each key) mean ``architecture``. ``needles``: words one
    of which every match contains, looked for first with a plain substring scan of all the keys at once
    (a pattern starting ``(^|[._])`` otherwise costs a regex attempt at every character of every key)."""

    architecture: str
    pattern: str
    needles: tuple[str, ...] = ()


# Checked in order; a new architecture appends its rows (FLUX first: its kohya files also use lora_te1_).
SIGNATURES: list[Signature] = [
    Signature("flux", r"(^|[._])(double_blocks|single_blocks)[._]\d+[._]", ("double_blocks", "single_blocks")),
    Signature("flux", r"(^|[._])single_transformer_blocks[._]\d+[._]", ("single_transformer_blocks",)),
    Signature("flux", r"(^|[._])transformer_blocks[._]\d+[._](attn[._]add_[qkv]_proj|ff_context)",
              ("add_q_proj", "add_k_proj", "add_v_proj", "ff_context")),
    Signature("flux", r"(^|[._])(context_embedder|x_embedder|time_text_embed)[._]",
              ("context_embedder", "x_embedder", "time_text_embed")),
    Signature("sdxl", r"^(lora_te2_|lycoris_te2_|text_encoder_2\.)"),
    Signature("sdxl", r"(input_blocks|output_blocks|middle_block)[._]\d+[._](\d+[._])?transformer_blocks[._][2-9][._]"),
    Signature("sdxl", r"(down_blocks|up_blocks)[._]\d+[._]attentions[._]\d+[._]transformer_blocks[._][2-9][._]"),
    Signature("sdxl", r"(^|[._])(label_emb|add_embedding)[._]", ("label_emb", "add_embedding")),
]

CONTEXT_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl", 4096: "flux"}
TEXT_WIDTHS = {768: "sd15", 1024: "sd2"}

# old diffusers attention-processor files put "processor." between attn2 and to_k_lora
_CONTEXT_KEY = re.compile(r"attn2[._](?:processor[._])?(to_[kv])(_lora)?[._]")
_TEXT_KEY = re.compile(r"self_attn[._](q_proj|k_proj|v_proj)|self_attn[._]to_[qkv]_lora")
# Parameters whose last dimension is the module's input width (2-d down/A factors).
_INPUT_SIDE = re.compile(r"(lora_down|lora_A|lora\.down|lora_linear_layer\.down|_lora\.down)(\.default)?\.weight$"
                         r"|hada_w[12]_b$")

# Metadata values -> architecture (substring match, lower case).
METADATA_HINTS: tuple[tuple[str, str], ...] = (
    ("flux", "flux"), ("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("sd_v2", "sd2"),
    ("stable-diffusion-v2", "sd2"), ("sd_v1", "sd15"), ("stable-diffusion-v1", "sd15"),
)


def _input_width(shapes: Mapping[str, tuple[int, ...]], key_pattern: re.Pattern) -> int | None:
    for key, shape in shapes.items():
        if key_pattern.search(key) and _INPUT_SIDE.search(key) and len(shape) == 2:
            return int(shape[1])
    return None


def metadata_hint(metadata: Mapping[str, str] | None) -> str | None:
    """The architecture a file's metadata claims, if any."""
    metadata = metadata or {}
    for field in ("modelspec.architecture", "ss_base_model_version"):
        value = str(metadata.get(field, "")).lower()
        for fragment, architecture in METADATA_HINTS:
            if fragment in value:
                return architecture
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "sd2"
    return None


def detect_architecture(shapes: Mapping[str, tuple[int, ...]],
                        metadata: Mapping[str, str] | None = None) -> str | None:
    """``"sd15"``, ``"sd2"``, ``"sdxl"``, ``"flux"`` or ``None``, from ``{key: shape}`` (metadata as a hint)."""
    text = joined(shapes)
    for signature in SIGNATURES:
        if text is not None and signature.needles and not any(needle in text for needle in signature.needles):
            continue
        if any_key(re.compile(signature.pattern), shapes, text, anchored=False):
            return signature.architecture
    width = _input_width(shapes, _CONTEXT_KEY)
    if width is not None:
        return CONTEXT_WIDTHS.get(width)
    width = _input_width(shapes, _TEXT_KEY)
    if width is not None and width in TEXT_WIDTHS:
        return TEXT_WIDTHS[width]
    return metadata_hint(metadata)
