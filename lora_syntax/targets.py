"""Named records that travel from the LoRA loader to the patch engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .adapters.base import Adapter


@dataclass(frozen=True)
class ModuleTarget:
    """Where a change lands: a pipeline component, a module path inside it, and its block.

    ``component`` is the diffusers pipeline attribute (``unet``, ``transformer``, ``text_encoder``,
    ``text_encoder_2``...); ``module`` the dotted name from ``component.named_modules()``;
    ``block`` a block id of :mod:`lora_syntax.blocks` (``IN04``, ``M00``, ``OUT11``, ``D07``, ``S12``, ``BASE``...).
    """

    component: str
    module: str
    block: str | None = None


@dataclass(frozen=True)
class ModulePatch:
    """One adapter aimed at one module, with the file keys it came from (for error messages)."""

    target: ModuleTarget
    adapter: Adapter
    source_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA file mapped onto a model: every patch, and every key that did not map."""

    path: Path
    architecture: str                      # "sd15", "sd2", "sdxl", "flux"
    format: str                            # "kohya", "peft", "diffusers-legacy", "flux-xlabs"...
    patches: tuple[ModulePatch, ...]
    unmatched: tuple[str, ...] = ()        # file keys that map to no module of the model
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # usable but suspect (absurd magnitudes)
    nbytes: int = field(default=0, compare=False)  # bytes of the tensors its patches hold (a load cache's budget)

    @property
    def adapter_types(self) -> frozenset[str]:
        return frozenset(p.adapter.kind for p in self.patches)
