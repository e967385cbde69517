"""Helpers the key dialects share: normalised parameter names and building :class:`Grouped` results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

import torch

from ..keymaps.tree import DENOISERS, ModelTree
from ..targets import ModuleTarget
from .base import Grouped, ModuleParams

# Normalised (LyCORIS/kohya) parameter names an adapter can carry, as they follow ``name.`` in a kohya key.
KOHYA_PARAMS = frozenset({
    "lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "dora_scale", "scale",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "weight", "bias", "on_input", "w_norm", "b_norm",
    "a1.weight", "a2.weight", "b1.weight", "b2.weight", "oft_blocks", "oft_diag", "oft_R", "rescale",
})


def split_suffix(key: str, suffixes: Mapping[str, str]) -> tuple[str, str] | None:
    """``(module part, normalised param)`` for the longest matching file suffix, or ``None``.

    Suffixes start with a dot, so the ones a key can end with are its last 1, 2, 3... dotted segments: a
    few dictionary look-ups per key (most segments first, i.e. longest first) instead of a scan of the table."""
    counts = _segment_counts(suffixes)
    cuts, cut = [], len(key)
    for _ in range(counts[0]):
        cut = key.rfind(".", 0, cut)
        if cut <= 0:
            break
        cuts.append(cut)
    for count in counts:
        if count <= len(cuts):
            normal = suffixes.get(key[cuts[count - 1]:])
            if normal is not None:
                return key[:cuts[count - 1]], normal
    return None


_COUNTS: dict[int, tuple[Mapping[str, str], tuple[int, ...]]] = {}


def _segment_counts(suffixes: Mapping[str, str]) -> tuple[int, ...]:
    """The numbers of dotted segments the suffixes have, most first (computed once per table object)."""
    known = _COUNTS.get(id(suffixes))
    if known is not None and known[0] is suffixes:
        return known[1]
    if not suffixes or not all(suffix.startswith(".") for suffix in suffixes):
        raise ValueError("every suffix starts with '.'")
    counts = tuple(sorted({suffix.count(".") for suffix in suffixes}, reverse=True))
    if len(_COUNTS) >= 256:   # the tables are module constants; a caller making new ones cannot grow this
        _COUNTS.clear()
    _COUNTS[id(suffixes)] = (suffixes, counts)
    return counts


@lru_cache(maxsize=64)
def dotted(suffixes: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """A table of suffixes written without their leading dot (``lora_up.weight``), with it."""
    return {"." + suffix: normal for suffix, normal in suffixes}


def find_component(tree: ModelTree, module: str, preferred: Iterable[str] = DENOISERS) -> str | None:
    """The component of ``tree`` that has ``module`` (denoisers first), for keys without a component prefix."""
    order = [c for c in preferred if c in tree.modules] + [c for c in tree.modules if c not in preferred]
    return next((c for c in order if module in tree.modules[c]), None)


def build_grouped(groups: Mapping[tuple[str, str], Mapping[str, str]], state_dict: Mapping[str, torch.Tensor],
                  unmatched: list[str]) -> Grouped:
    """``Grouped`` from ``{(component, module): {normalised param: file key}}``."""
    modules = []
    for (component, module), params in groups.items():
        modules.append(ModuleParams(
            target=ModuleTarget(component, module),
            params={name: state_dict[key] for name, key in params.items()},
            source_keys=tuple(sorted(params.values()))))
    return Grouped(modules, sorted(unmatched))
