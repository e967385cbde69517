"""A host's own modules seen under the diffusers names every key map and block rule is written for.

A1111 and Forge hold SD models with LDM/SGM module names (``input_blocks.4.1...``) and, in A1111, OpenCLIP
text towers with fused q/k/v. Instead of a second set of key maps, each host component is wrapped in a
:class:`HostComponent`: a table ``{diffusers name: host place}`` (built from the data tables of
:mod:`~lora_syntax.keymaps.ldm` and :mod:`~lora_syntax.keymaps.openclip`) whose ``get_submodule`` hands
the patcher the host's module. So a LoRA file maps onto an LDM model exactly as onto the diffusers model,
with the same block ids, and the fused weights are computed by the same code from the same values.
A q/k/v third of a fused ``in_proj_weight`` is a :class:`FusedRows`: the patcher writes its rows in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .build import UNET_WIDTHS
from .ldm import diffusers_name, diffusers_prefixes, ldm_config
from .openclip import FUSED_BIAS, FUSED_WEIGHT, openclip_place, transformers_names
from .tree import ModelTree, ModuleInfo

# Class-name fragments -> module kind, for hosts whose layers are not torch.nn subclasses (Forge's Linear).
KINDS: tuple[tuple[str, str], ...] = (("Linear", "linear"), ("Conv", "conv"), ("Embedding", "embedding"),
                                      ("Norm", "norm"))


class FusedRows:
    """Output rows ``index*d:(index+1)*d`` of a fused ``in_proj_weight``, seen as a module with ``weight``/``bias``.

    The rows are views into the host's tensor: the patcher writes them in place (``in_place_only``) and
    restores them by copy. State-dict hooks go to the owning module.
    """

    in_place_only = True

    def __init__(self, owner: torch.nn.Module, index: int) -> None:
        self.owner = owner
        self.index = index

    def _rows(self, name: str) -> torch.Tensor | None:
        fused = getattr(self.owner, name, None)
        if not isinstance(fused, torch.Tensor):
            return None
        third = fused.shape[0] // 3
        return fused.detach()[self.index * third:(self.index + 1) * third]

    @property
    def weight(self) -> torch.Tensor | None:
        return self._rows(FUSED_WEIGHT)

    @property
    def bias(self) -> torch.Tensor | None:
        return self._rows(FUSED_BIAS)

    def register_load_state_dict_pre_hook(self, hook):  # noqa: ANN001, ANN201 - torch's own signature
        return self.owner.register_load_state_dict_pre_hook(hook)


def module_kind(module: object) -> str | None:
    """``linear``/``conv``/``norm``/``embedding`` from the class hierarchy's names, or ``None``."""
    if isinstance(module, FusedRows):
        return "linear"
    for cls in type(module).__mro__:
        for fragment, kind in KINDS:
            if fragment in cls.__name__:
                return kind
    return None


def weighted_modules(root: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every module of ``root`` with a ``weight`` tensor of a kind a LoRA can change, by dotted name."""
    found = {}
    for name, module in root.named_modules():
        weight = getattr(module, "weight", None)
        if name and isinstance(weight, torch.Tensor) and weight.ndim >= 1 and module_kind(module):
            found[name] = module
    return found


class HostComponent:
    """A host component under diffusers names: ``places[diffusers name]`` is a host module path, or
    ``(path, index)`` for a q/k/v third of a fused weight."""

    def __init__(self, root: torch.nn.Module, places: Mapping[str, str | tuple[str, int]],
                 config: Mapping[str, object] | None = None) -> None:
        self.root = root
        self.places = dict(places)
        self.config = dict(config or {})

    def get_submodule(self, name: str) -> object:
        place = self.places.get(name)
        if place is None:
            raise AttributeError(f"the host model has no module for {name!r}")
        if isinstance(place, tuple):
            return FusedRows(self.root.get_submodule(place[0]), place[1])
        return self.root.get_submodule(place)

    def named_modules(self) -> Iterator[tuple[str, object]]:
        for name in self.places:
            yield name, self.get_submodule(name)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.root.parameters()


def same_names(root: torch.nn.Module) -> HostComponent:
    """A component whose names already are the diffusers ones (transformers CLIP in A1111/Forge)."""
    return HostComponent(root, {name: name for name in weighted_modules(root)})


def ldm_unet(root: torch.nn.Module) -> HostComponent:
    """An LDM/SGM-named UNet (``input_blocks``, ``middle_block``, ``output_blocks``) under diffusers names."""
    modules = weighted_modules(root)
    config = ldm_config(list(modules))
    prefixes = diffusers_prefixes(config)
    places = {name: module for module in modules if (name := diffusers_name(module, prefixes)) is not None}
    return HostComponent(root, places, config)


def openclip_text(root: torch.nn.Module) -> HostComponent:
    """An OpenCLIP text tower (``transformer.resblocks``, fused ``in_proj_weight``) under transformers names."""
    layers = len(root.get_submodule("transformer.resblocks"))
    places: dict[str, str | tuple[str, int]] = {}
    for name in transformers_names(layers):
        place = openclip_place(name)
        try:
            root.get_submodule(place.module)
        except AttributeError:
            continue
        places[name] = place.module if place.fused_index is None else (place.module, place.fused_index)
    return HostComponent(root, places)


def component_tree(architecture: str, components: Mapping[str, HostComponent]) -> ModelTree:
    """The :class:`ModelTree` of host components (names and shapes as the diffusers model has them)."""
    modules: dict[str, dict[str, ModuleInfo]] = {}
    for component, view in components.items():
        infos = {}
        for name, module in view.named_modules():
            weight = module.weight
            infos[name] = ModuleInfo(tuple(weight.shape), isinstance(getattr(module, "bias", None), torch.Tensor),
                                     module_kind(module) or "linear")
        modules[component] = infos
    return ModelTree(architecture, modules, {name: view.config for name, view in components.items()})


def unet_architecture(unet: HostComponent) -> str | None:
    """``sd15``/``sd2``/``sdxl`` from the cross-attention width of an SD UNet, ``None`` for other widths."""
    for name, place in unet.places.items():
        if name.endswith("attn2.to_k"):
            return UNET_WIDTHS.get(int(unet.root.get_submodule(place).weight.shape[1]))
    return None
