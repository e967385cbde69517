"""The grouping engine the FLUX.1 dialects share: split keys, place modules, split fused rows.

Every FLUX dialect is a *resolver* — file module name -> :class:`Placement` — plus the parameter
suffixes its files use. This module turns that into :class:`~lora_syntax.formats.base.Grouped`:

    key = "<module name>.<parameter suffix>"      (longest known suffix wins)
    fused module over targets t_1..t_n            -> one ModuleParams per t_j with rows = t_j's output rows
    BFL final_layer.adaLN_modulation.1            -> output halves swapped (LoRA up / diff / diff_b rows)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch

from ..keymaps import flux as fluxmap
from ..keymaps.blockids import block_of
from ..keymaps.keyscan import any_key, joined
from ..keymaps.tree import ModelTree
from ..targets import ModuleTarget
from .base import Grouped, ModuleParams
from .common import dotted, split_suffix

# Normalised (kohya/LyCORIS) parameter names, as the adapter registry reads them.
LYCORIS_PARAMS: tuple[str, ...] = (
    "lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "dora_scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "w_norm", "b_norm", "on_input", "a1.weight", "a2.weight", "b1.weight", "b2.weight",
)
IDENTITY: Mapping[str, str] = {name: name for name in LYCORIS_PARAMS}
# PEFT / diffusers / ai-toolkit names -> normalised names.
PEFT_PARAMS: Mapping[str, str] = {
    **IDENTITY, "lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight",
}
# XLabs ``processor.qkv_lora1.down.weight``.
XLABS_PARAMS: Mapping[str, str] = {"down.weight": "lora_down.weight", "up.weight": "lora_up.weight"}

# Parameters indexed by output row: what swapping a module's output halves must reorder.
ROW_PARAMS = ("lora_up.weight", "diff", "diff_b")


@dataclass(frozen=True)
class Placement:
    """A file module's destination: a component and its modules (several = fused rows, in order)."""

    component: str
    modules: tuple[str, ...]
    swap_halves: bool = False


Resolver = Callable[[str, ModelTree], "Placement | None"]


def underscore_index(tree: ModelTree, component: str) -> dict[str, str]:
    """``{module path with '.' -> '_': module path}`` of a component (kohya's flattened names).

    CLIP modules are also reachable with transformers 4's ``text_model.`` prefix, which kohya keeps.
    """
    index: dict[str, str] = {}
    for path in tree.modules.get(component, {}):
        flat = path.replace(".", "_")
        index[flat] = path
        if not path.startswith("text_model.") and component != fluxmap.TRANSFORMER:
            index.setdefault("text_model_" + flat, path)
    return index


def dotted_lookup(tree: ModelTree, component: str, path: str) -> str | None:
    """``path`` itself, or without transformers 4's ``text_model.`` prefix, when the component has it."""
    for candidate in (path, path.removeprefix("text_model.")):
        if tree.get(component, candidate) is not None:
            return candidate
    return None


def place_bfl(name: str, component: str = fluxmap.TRANSFORMER) -> Placement | None:
    """A :class:`Placement` for a dotted BFL transformer name."""
    found = fluxmap.place_bfl(name)
    return Placement(component, found.modules, found.swap_halves) if found else None


def _swapped(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``params`` with the two halves of every output-row tensor exchanged; ``None`` if a type can't.

    A per-row ``dora_scale`` ``[out, 1]`` is swapped with the rows; a per-column one ``[1, in]`` is
    unchanged by a row permutation of ``W + ΔW``."""
    if set(params) - set(ROW_PARAMS) - {"lora_down.weight", "lora_mid.weight", "alpha", "dora_scale"}:
        return None  # LoKr/LoHa factors cannot express a row permutation
    out = dict(params)
    names = list(ROW_PARAMS)
    scale = params.get("dora_scale")
    if scale is not None and scale.dim() >= 1 and scale.shape[0] > 1:
        names.append("dora_scale")
    for name in names:
        if name in out:
            first, second = out[name].chunk(2, dim=0)
            out[name] = torch.cat([second, first], dim=0)
    return out


@dataclass(frozen=True)
class _Entry:
    params: dict[str, torch.Tensor]
    keys: tuple[str, ...]


def _collect(state_dict: Mapping[str, torch.Tensor], suffixes: Mapping[str, str],
             unmatched: list[str]) -> dict[str, _Entry]:
    """Each module's parameters, by the longest suffix of ``suffixes`` (written without their leading dot:
    ``lora_up.weight``) that its keys end with."""
    table = dotted(tuple(suffixes.items()))   # once per file, not once per key
    groups: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, list[str]] = {}
    for key, tensor in state_dict.items():
        parts = split_suffix(key, table)
        if parts is None:
            unmatched.append(key)
            continue
        module, param = parts
        groups.setdefault(module, {})[param] = tensor
        keys.setdefault(module, []).append(key)
    return {m: _Entry(groups[m], tuple(keys[m])) for m in groups}


def _targets(tree: ModelTree, place: Placement, entry: _Entry) -> list[ModuleParams] | None:
    params = entry.params
    if place.swap_halves:
        params = _swapped(params)
        if params is None:
            return None
    if len(place.modules) == 1:
        module = place.modules[0]
        if tree.get(place.component, module) is None:
            return None
        block = block_of(tree.architecture, place.component, module, tree.config.get(place.component))
        return [ModuleParams(ModuleTarget(place.component, module, block), params, entry.keys)]
    rows = fluxmap.split_rows(tree, place.component, place.modules)
    if rows is None:
        return None
    config = tree.config.get(place.component)
    return [ModuleParams(ModuleTarget(place.component, m, block_of(tree.architecture, place.component, m, config)),
                         params, entry.keys, r, rows[-1][1]) for m, r in zip(place.modules, rows)]


def group_with(state_dict: Mapping[str, torch.Tensor], tree: ModelTree, suffixes: Mapping[str, str],
               resolve: Resolver) -> Grouped:
    """Group ``state_dict`` by module with ``resolve``; keys that place nowhere go to ``unmatched``."""
    unmatched: list[str] = []
    modules: list[ModuleParams] = []
    for name, entry in _collect(state_dict, suffixes, unmatched).items():
        place = resolve(name, tree)
        found = _targets(tree, place, entry) if place is not None else None
        if found is None:
            unmatched.extend(entry.keys)
        else:
            modules.extend(found)
    return Grouped(modules, unmatched)


def score_with(keys: Collection[str], patterns: tuple[re.Pattern[str], ...], *,
               companions: tuple[re.Pattern[str], ...] = ()) -> float:
    """Fraction of ``keys`` this dialect reads: those matching ``patterns``, plus those matching
    ``companions`` (text-encoder keys other architectures share) once some key matches ``patterns``."""
    if not keys:
        return 0.0
    text = joined(keys)
    if not any(any_key(p, keys, text, anchored=True) for p in patterns):
        return 0.0   # the usual answer for another dialect's file, from one scan per pattern
    own = sum(1 for key in keys if any(p.match(key) for p in patterns))
    if own == 0:
        return 0.0
    shared = sum(1 for key in keys if not any(p.match(key) for p in patterns)
                 and any(p.match(key) for p in companions))
    return (own + shared) / len(keys)


def prefixed(prefixes: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """``(component, rest)`` for the first of ``prefixes`` (``{prefix: component}``) ``name`` starts with."""
    for prefix, component in prefixes.items():
        if name.startswith(prefix):
            return component, name[len(prefix):]
    return None


# kohya-style text-encoder prefixes in FLUX files: CLIP-L is te1; T5-XXL is te2 (OneTrainer) or te3 (sd-scripts).
KOHYA_TE_PREFIXES: Mapping[str, str] = {
    "lora_te1_": fluxmap.CLIP_L, "lora_te_": fluxmap.CLIP_L,
    "lora_te2_": fluxmap.T5_XXL, "lora_te3_": fluxmap.T5_XXL,
}
KOHYA_TE_RE = re.compile(r"^lora_te[123]?_")


def kohya_te_resolver(tree: ModelTree) -> Resolver:
    """A resolver for ``lora_te{,1,2,3}_<flattened module path>`` against ``tree``'s text encoders."""
    indexes = {c: underscore_index(tree, c) for c in set(KOHYA_TE_PREFIXES.values())}

    def resolve(name: str, _tree: ModelTree) -> Placement | None:
        found = prefixed(KOHYA_TE_PREFIXES, name)
        if found is None:
            return None
        component, rest = found
        module = indexes[component].get(rest)
        return Placement(component, (module,)) if module else None

    return resolve
