"""kohya/LyCORIS module names -> model modules, built from the model's own module names (as ComfyUI does).

A kohya name is a prefix plus a module path with ``.`` replaced by ``_``:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q   (diffusers names)
    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q             (LDM/SGM names, SDXL)
    lora_te_text_model_encoder_layers_0_self_attn_q_proj                   (SD1.5/SD2 text encoder)
    lora_te1_..., lora_te2_...                                             (SDXL's two text encoders)
    lycoris_input_blocks_4_1_transformer_blocks_0_attn1_to_q              (LyCORIS' own prefix)

Everything architecture-specific is data: ``PREFIXES`` (component -> prefixes) and ``ALIASES`` (extra
names per component, e.g. LDM names, or FLUX's BFL names that split one fused file module onto several
model modules by output rows). A new architecture is a new row in both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .ldm import ldm_names
from .tree import ModelTree


@dataclass(frozen=True)
class Placement:
    """Where a file module lands: ``component``'s ``module``, taking output ``rows`` of a fused delta if set."""

    component: str
    module: str
    rows: tuple[int, int] | None = None


# An alias source yields (name with dots, placements) for one component of a tree.
AliasSource = Callable[[ModelTree, str], Iterator[tuple[str, tuple[Placement, ...]]]]

_UNET = ("lora_unet_", "lycoris_")
_SD_PREFIXES = {"unet": _UNET, "text_encoder": ("lora_te_", "lora_te1_", "lycoris_te_", "lycoris_te1_")}

# component -> kohya prefixes, per architecture.
PREFIXES: dict[str, Mapping[str, tuple[str, ...]]] = {
    "sd15": _SD_PREFIXES,
    "sd2": _SD_PREFIXES,
    "sdxl": {"unet": _UNET, "text_encoder": ("lora_te1_", "lycoris_te1_"),
             "text_encoder_2": ("lora_te2_", "lycoris_te2_")},
    "flux": {"transformer": ("lora_unet_", "lora_transformer_", "lycoris_"),
             "text_encoder": ("lora_te1_", "lora_te_"), "text_encoder_2": ("lora_te2_", "lora_te3_")},
}


def _ldm_aliases(tree: ModelTree, component: str) -> Iterator[tuple[str, tuple[Placement, ...]]]:
    """LDM/SGM names of a UNet (``input_blocks.4.1...``)."""
    if component != "unet":
        return
    for name, module in ldm_names(list(tree.modules[component]), tree.config.get(component, {})).items():
        yield name, (Placement(component, module),)


def _text_model_aliases(tree: ModelTree, component: str) -> Iterator[tuple[str, tuple[Placement, ...]]]:
    """CLIP paths with and without the leading ``text_model.``: transformers 4 names CLIPTextModel's modules
    ``text_model.encoder...`` (as kohya files do), transformers 5 ``encoder...``."""
    if not component.startswith("text_encoder"):
        return
    for module in tree.modules[component]:
        yield text_model_alias(module), (Placement(component, module),)


def text_model_alias(module: str) -> str:
    """The other spelling of a CLIP module path (``text_model.`` added or removed)."""
    prefix = "text_model."
    return module[len(prefix):] if module.startswith(prefix) else prefix + module


_SD_ALIASES: tuple[AliasSource, ...] = (_ldm_aliases, _text_model_aliases)

# architecture -> extra name sources besides the model's own module names.
ALIASES: dict[str, tuple[AliasSource, ...]] = {
    "sd15": _SD_ALIASES,
    "sd2": _SD_ALIASES,
    "sdxl": _SD_ALIASES,
    "flux": (_text_model_aliases,),  # BFL names are mapped by formats/flux_kohya.py
}


def _names(tree: ModelTree, component: str) -> Iterator[tuple[str, tuple[Placement, ...]]]:
    for module in tree.modules[component]:
        yield module, (Placement(component, module),)
    for source in ALIASES.get(tree.architecture, ()):
        yield from source(tree, component)


def _prefixes(tree: ModelTree, component: str) -> tuple[str, ...]:
    table = PREFIXES.get(tree.architecture, {})
    if component in table:
        return table[component]
    if component in ("unet", "transformer"):
        return ("lora_unet_", "lora_transformer_", "lycoris_")
    return ("lora_te_",)


_CACHE: OrderedDict[int, tuple[ModelTree, dict[str, tuple[Placement, ...]]]] = OrderedDict()


def kohya_map(tree: ModelTree) -> dict[str, tuple[Placement, ...]]:
    """``{kohya module name: placements}`` for every patchable module of ``tree`` (first name wins; cached)."""
    cached = _CACHE.get(id(tree))
    if cached is not None and cached[0] is tree:
        return cached[1]
    table = _build(tree)
    _CACHE[id(tree)] = (tree, table)  # the tree is held, so its id cannot be reused while cached
    while len(_CACHE) > 16:
        _CACHE.popitem(last=False)
    return table


def _build(tree: ModelTree) -> dict[str, tuple[Placement, ...]]:
    table: dict[str, tuple[Placement, ...]] = {}
    for component in tree.modules:
        prefixes = _prefixes(tree, component)
        for name, placements in _names(tree, component):
            flat = name.replace(".", "_")
            for prefix in prefixes:
                table.setdefault(prefix + flat, placements)
    return table
