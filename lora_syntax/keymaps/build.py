"""Module trees from live diffusers pipelines, with the architecture read from the pipeline when not given."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import LoraError
from .tree import DENOISERS, TEXT_ENCODERS, ModelTree, modules_of, pipeline_components

# Pipeline class name fragments -> architecture, most specific first. ``None`` = decide by the UNet config.
PIPELINE_CLASSES: tuple[tuple[str, str | None], ...] = (
    ("StableDiffusionXL", "sdxl"),
    ("Flux", "flux"),
    ("StableDiffusion", None),
)

# Cross-attention width of the UNet -> architecture, for pipelines whose class is shared (SD1.5/SD2).
UNET_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


def config_dict(module: torch.nn.Module) -> dict[str, object]:
    """A component's config as a plain dict (diffusers FrozenDict or transformers PretrainedConfig)."""
    config = getattr(module, "config", None)
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return dict(config)


def tree_from_modules(architecture: str, components: Mapping[str, torch.nn.Module | None]) -> ModelTree:
    """A tree from ``{pipeline attribute: module}``; ``None`` components are skipped."""
    present = {name: module for name, module in components.items() if module is not None}
    return ModelTree(architecture, {name: modules_of(m) for name, m in present.items()},
                     {name: config_dict(m) for name, m in present.items()})


def pipeline_architecture(pipe: object) -> str | None:
    """``"sd15"``/``"sd2"``/``"sdxl"``/``"flux"`` from the pipeline class, or ``None`` when unknown."""
    class_name = type(pipe).__name__
    for fragment, architecture in PIPELINE_CLASSES:
        if fragment in class_name:
            if architecture is not None:
                return architecture
            unet = getattr(pipe, "unet", None)
            width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
            # SD-family pipelines with a non-standard width (tiny test models) are SD1.5-like.
            return UNET_WIDTHS.get(width, "sd15") if isinstance(width, int) else "sd15"
    return None


def _possible_architectures(pipe: object) -> frozenset[str] | None:
    """The families a pipeline can be: its class's, or for a Stable Diffusion pipeline with a UNet, the one its
    cross-attention width names (SD1.5 or SD2 for the non-standard widths of tiny models); None when unknown."""
    class_name = type(pipe).__name__
    for fragment, architecture in PIPELINE_CLASSES:
        if fragment in class_name:
            if architecture is not None:
                return frozenset({architecture})
            unet = getattr(pipe, "unet", None)
            if unet is None:
                return None
            width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
            return frozenset({UNET_WIDTHS[width]}) if width in UNET_WIDTHS else frozenset({"sd15", "sd2"})
    return None


def tree_from_pipeline(pipe: object, architecture: str | None = None) -> ModelTree:
    """The module tree of a diffusers pipeline's text encoders and denoiser.

    Label tiny or custom models explicitly (``architecture="sd15"``); otherwise it is read from the
    pipeline class and, for Stable Diffusion 1/2 pipelines, the UNet's cross-attention width. A label the
    pipeline contradicts (``"flux"`` on a Stable Diffusion pipeline) is refused: its keys and block ids would
    be mapped wrongly.
    """
    if architecture is not None:
        possible = _possible_architectures(pipe)
        if possible is not None and architecture not in possible:
            raise LoraError(f"architecture {architecture!r} was given, but this {type(pipe).__name__} is "
                            f"{' or '.join(sorted(possible))}: its LoRA keys and block ids would be mapped wrongly. "
                            "Leave the architecture out (it is read from the pipeline), or load a pipeline of that "
                            "family.")
    architecture = architecture or pipeline_architecture(pipe)
    if architecture is None:
        raise LoraError(f"cannot tell the architecture of a {type(pipe).__name__}; pass architecture="
                        "'sd15', 'sd2', 'sdxl' or 'flux'")
    return tree_from_modules(architecture, pipeline_components(pipe))


def _architecture_of_folder(index: Mapping[str, object], unet_config: Mapping[str, object] | None) -> str | None:
    """``pipeline_architecture`` for a model folder: its ``model_index.json`` class and UNet config."""
    class_name = str(index.get("_class_name", ""))
    for fragment, architecture in PIPELINE_CLASSES:
        if fragment in class_name:
            width = (unet_config or {}).get("cross_attention_dim")
            return architecture or (UNET_WIDTHS.get(width, "sd15") if isinstance(width, int) else "sd15")
    return None


def _meta_component(folder: Path, library: str, class_name: str) -> torch.nn.Module:
    """One component of a diffusers model folder, built from its config on the ``meta`` device (no weights)."""
    import importlib

    cls = getattr(importlib.import_module(library), class_name)
    with torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(str(folder)))
        from transformers import AutoConfig

        return cls(AutoConfig.from_pretrained(str(folder), local_files_only=True))


def tree_from_model_dir(folder: str | Path, architecture: str | None = None) -> ModelTree:
    """The module tree of a diffusers model folder (``model_index.json`` + one folder per component),
    from the components' configs only, so no weights are read; disk-cached like the reference trees.

    Lets ``inspect`` check a LoRA against the model it was made for (a pruned, resized or custom one).
    """
    import json

    from .tree_cache import cached_tree

    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        parts = {name: spec for name, spec in index.items()
                 if name in TEXT_ENCODERS + DENOISERS and isinstance(spec, list) and None not in spec}
        configs = {name: (folder / name / "config.json").read_text(encoding="utf-8") for name in parts}
        unet = json.loads(configs["unet"]) if "unet" in configs else None
    except (OSError, ValueError) as error:
        raise LoraError(f"'{folder}' is not a diffusers model folder (model_index.json and a config.json per "
                        f"component): {error}") from error
    architecture = architecture or _architecture_of_folder(index, unet)
    if architecture is None or not parts:
        raise LoraError(f"cannot tell the architecture of the model in '{folder}' ({index.get('_class_name')}); "
                        "it holds no text encoder or denoiser this tool knows.")

    def build() -> ModelTree:
        return tree_from_modules(architecture, {name: _meta_component(folder / name, *spec)
                                                for name, spec in parts.items()})

    return cached_tree(f"model-{architecture}", json.dumps([parts, configs], sort_keys=True), build)
