"""From a :class:`~lora_syntax.plan.Plan` and a LoRA library to the per-module stacks the patcher applies.

Stack hygiene happens here: a LoRA at weight 0 for the whole run is resolved (so typos still fail)
but never loaded; tags naming the same file (and ``dyn``) are merged into one entry whose weight is the
sum of theirs; ``dyn=`` truncates every adapter's rank; a term whose weight is 0 at every step of a
module is dropped from that module's stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ArchitectureMismatchError
from .patcher import ModuleStack, Term
from .targets import LoadedLora, ModuleTarget

# Architectures whose UNet layouts and key maps are interchangeable for a LoRA.
COMPATIBLE = {("sd15", "sd2"), ("sd2", "sd15")}


class WeightSource(Protocol):
    """What the stack needs of a plan entry (``lora_syntax.plan.LoraPlan`` fulfils it)."""

    name: str
    dyn: int | None
    is_zero: bool

    def weights(self, component: str, block: str | None = None) -> tuple[float, ...]: ...


@dataclass(frozen=True)
class StackEntry:
    """One LoRA file in the stack, with the plan entries (tags) that use it; their weights add up."""

    name: str
    loaded: LoadedLora
    plans: tuple[WeightSource, ...]
    dyn: int | None = None

    def weights(self, component: str, block: str | None) -> tuple[float, ...]:
        """Summed weights of every tag using this file, per step (index 0 = step 1)."""
        vectors = [p.weights(component, block) for p in self.plans]
        return tuple(sum(values) for values in zip(*vectors))


def check_architecture(loaded: LoadedLora, architecture: str | None, name: str) -> None:
    """Refuse a LoRA made for another model family than the pipeline's."""
    if architecture is None or loaded.architecture in (None, "", architecture):
        return
    if (loaded.architecture, architecture) in COMPATIBLE:
        return
    raise ArchitectureMismatchError(
        f"LoRA {name!r} ({loaded.path}) is for {loaded.architecture}; this model is {architecture}. "
        "Use a LoRA made for this model family, or remove the tag.",
        path=loaded.path, lora_architecture=loaded.architecture, model_architecture=architecture)


def merge_entries(items: Sequence[tuple[WeightSource, LoadedLora]]) -> tuple[tuple[StackEntry, ...], tuple[str, ...]]:
    """Entries in tag order with same-file tags merged (first tag's position); a warning for each merge of
    different names (``sepia`` and ``styles/sepia``); the same name twice is the plan's warning."""
    order: list[tuple[Path, int | None]] = []
    grouped: dict[tuple[Path, int | None], list[tuple[WeightSource, LoadedLora]]] = {}
    for plan, loaded in items:
        key = (Path(loaded.path), plan.dyn)
        if key not in grouped:
            order.append(key)
            grouped[key] = []
        grouped[key].append((plan, loaded))
    entries, warnings = [], []
    for key in order:
        group = grouped[key]
        if len({p.name.casefold() for p, _ in group}) > 1:   # one name used twice: the plan has said so
            names = ", ".join(repr(p.name) for p, _ in group)
            warnings.append(f"tags {names} use the same file {key[0].name}; it is applied once with their "
                            "weights added")
        entries.append(StackEntry(group[0][0].name, group[0][1], tuple(p for p, _ in group), key[1]))
    return tuple(entries), tuple(warnings)


def module_stacks(entries: Iterable[StackEntry]) -> tuple[ModuleStack, ...]:
    """Group every entry's patches per module, in tag order; all-zero terms are dropped."""
    terms: dict[tuple[str, str], list[Term]] = {}
    targets: dict[tuple[str, str], ModuleTarget] = {}
    for entry in entries:
        by_block: dict[tuple[str, str | None], tuple[float, ...]] = {}   # a few blocks, hundreds of modules
        for patch in entry.loaded.patches:
            target = patch.target
            where = (target.component, target.block)
            weights = by_block.get(where)
            if weights is None:
                weights = by_block[where] = entry.weights(*where)
            if not any(weights):
                continue
            adapter = patch.adapter.truncated(entry.dyn) if entry.dyn else patch.adapter
            key = (target.component, target.module)
            targets.setdefault(key, target)
            terms.setdefault(key, []).append(Term(entry.name, adapter, weights))
    return tuple(ModuleStack(targets[key], tuple(found)) for key, found in terms.items())


def resolve_stack(plan, library, tree) -> tuple[tuple[StackEntry, ...], tuple[str, ...]]:
    """Resolve and load every non-zero LoRA of ``plan`` from ``library`` against ``tree``.

    Every name is resolved before any file is loaded, so a typo fails fast; zero LoRAs are not loaded.
    """
    resolved = [(lora, library.resolve(lora.name)) for lora in plan.loras]
    wanted = [(lora, entry) for lora, entry in resolved if not lora.is_zero]
    items = []
    for (lora, _), loaded in zip(wanted, library.load_many([entry for _, entry in wanted], tree)):
        check_architecture(loaded, getattr(tree, "architecture", None), lora.name)
        items.append((lora, loaded))
    entries, warnings = merge_entries(items)
    found = tuple(dict.fromkeys(w for entry in entries for w in getattr(entry.loaded, "warnings", ())))
    return entries, found + warnings
