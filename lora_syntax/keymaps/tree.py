"""What a LoRA is mapped against: the model's components, module names and weight shapes.

Built from a live pipeline, or from an architecture's reference config on the ``meta`` device
(no weights), so ``inspect`` and the format tests need no model files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

# Module types whose ``weight`` a LoRA can change.
PATCHABLE = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding)

DENOISERS = ("unet", "transformer", "transformer_2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass(frozen=True)
class ModuleInfo:
    """Shape facts about one patchable module."""

    weight_shape: tuple[int, ...]
    has_bias: bool
    kind: str  # "linear", "conv", "norm", "embedding"


@dataclass(frozen=True)
class ModelTree:
    """``modules[component][module_path] -> ModuleInfo`` for one model of ``architecture``.

    ``config`` holds per-component facts a key map needs (e.g. ``layers_per_block``).
    """

    architecture: str
    modules: Mapping[str, Mapping[str, ModuleInfo]]
    config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def get(self, component: str, module: str) -> ModuleInfo | None:
        return self.modules.get(component, {}).get(module)

    @property
    def denoiser(self) -> str:
        """The pipeline attribute holding the denoiser (``unet`` or ``transformer``)."""
        return next((c for c in DENOISERS if c in self.modules), "unet")


def _kind(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        return "conv"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    return "norm"


def modules_of(component: torch.nn.Module) -> dict[str, ModuleInfo]:
    """Every patchable module of ``component`` with a weight, by dotted name."""
    found = {}
    for name, module in component.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PATCHABLE) and isinstance(weight, torch.Tensor):
            found[name] = ModuleInfo(tuple(weight.shape), getattr(module, "bias", None) is not None, _kind(module))
    return found


def pipeline_components(pipe: object, names: Iterable[str] = TEXT_ENCODERS + DENOISERS) -> dict[str, torch.nn.Module]:
    """The text encoders and denoisers a diffusers pipeline has."""
    return {name: getattr(pipe, name) for name in names
            if isinstance(getattr(pipe, name, None), torch.nn.Module)}
