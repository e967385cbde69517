"""diffusers / PEFT keys: a component prefix (or none), the diffusers module path, a PEFT suffix.

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight     PEFT
    text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight            PEFT, text encoder
    transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight                    PEFT, FLUX
    down_blocks.1.attentions.0.proj_in.lora_A.weight                                  bare (component guessed)
    unet.mid_block.attentions.0.proj_out.lora.down.weight                             diffusers < 0.24
    text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight        diffusers < 0.24 TE
    unet.up_blocks.1.attentions.0.proj_out.lora_magnitude_vector                       PEFT DoRA
    unet.up_blocks.1.attentions.0.proj_out.alpha                                       kohya-converted alpha
PEFT files carry no alpha (scale 1) unless ``.alpha`` keys or diffusers' ``lora_adapter_metadata``
(``{"unet.lora_alpha": 8, "unet.alpha_pattern": {...}}``) give one; see :func:`apply_adapter_metadata`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

import torch

from ..errors import LoraFileError
from ..io import parse_json
from ..keymaps.kohya import text_model_alias
from ..keymaps.tree import ModelTree
from .base import Grouped, ModuleParams
from .common import build_grouped, find_component, split_suffix

SUFFIXES = {
    ".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight",
    ".lora_A.default.weight": "lora_down.weight", ".lora_B.default.weight": "lora_up.weight",
    ".lora.down.weight": "lora_down.weight", ".lora.up.weight": "lora_up.weight",
    ".lora_linear_layer.down.weight": "lora_down.weight", ".lora_linear_layer.up.weight": "lora_up.weight",
    ".lora_magnitude_vector": "dora_scale", ".lora_magnitude_vector.weight": "dora_scale",
    ".lora_magnitude_vector.default.weight": "dora_scale",
    ".alpha": "alpha",
}

COMPONENT_PREFIXES = ("unet", "transformer", "transformer_2", "text_encoder", "text_encoder_2", "text_encoder_3")
WRAPPERS = ("base_model.model.",)  # PEFT's own wrapper prefix, dropped
FLOAT32_MAX = torch.finfo(torch.float32).max   # alphas are kept as float32 tensors


@lru_cache(maxsize=1 << 16)   # scoring and grouping parse each key, and LoRAs for one model share keys
def parse_key(key: str) -> tuple[str | None, str, str] | None:
    """``(component or None, module path, normalised param)`` of a PEFT/diffusers key, or ``None``."""
    parts = split_suffix(key, SUFFIXES)
    if parts is None or "." not in parts[0]:
        return None
    path, param = parts
    component = None
    head, _, rest = path.partition(".")
    if head in COMPONENT_PREFIXES:
        component, path = head, rest
    for wrapper in WRAPPERS:
        if path.startswith(wrapper):
            path = path[len(wrapper):]
    return component, path, param


def place(tree: ModelTree, component: str | None, path: str) -> tuple[str, str] | None:
    """The tree's ``(component, module)`` for a parsed key; ``None`` when the model has no such module."""
    if component is None:
        component = find_component(tree, path) or find_component(tree, text_model_alias(path))
        if component is None:
            return None
    elif component == "unet" and "unet" not in tree.modules:
        component = tree.denoiser
    modules = tree.modules.get(component, {})
    if path not in modules and component.startswith("text_encoder"):
        path = text_model_alias(path)  # transformers 4 vs 5 CLIP module names
    return (component, path) if path in modules else None


class PeftDialect:
    """diffusers and PEFT files (``lora_A/lora_B``, the older ``lora.down/lora.up``)."""

    name = "peft"

    def score(self, keys: Collection[str]) -> float:
        return sum(parse_key(k) is not None for k in keys) / max(len(keys), 1)

    def group(self, state_dict: Mapping[str, torch.Tensor], tree: ModelTree) -> Grouped:
        groups: dict[tuple[str, str], dict[str, str]] = {}
        unmatched = []
        for key in state_dict:
            parsed = parse_key(key)
            target = place(tree, parsed[0], parsed[1]) if parsed else None
            if parsed is None or target is None:
                unmatched.append(key)
            else:
                groups.setdefault(target, {})[parsed[2]] = key
        grouped = build_grouped(groups, state_dict, unmatched)
        return Grouped([_dora_shape(m, tree) for m in grouped.modules], grouped.unmatched)


def _dora_shape(params: ModuleParams, tree: ModelTree) -> ModuleParams:
    """PEFT stores DoRA's magnitude as ``(out,)``; LyCORIS' ``dora_scale`` is ``(out, 1, ...)``."""
    scale = params.params.get("dora_scale")
    info = tree.get(params.target.component, params.target.module)
    if scale is None or info is None or scale.ndim != 1:
        return params
    shaped = scale.reshape(scale.shape[0], *([1] * (len(info.weight_shape) - 1)))
    return replace(params, params={**params.params, "dora_scale": shaped})


def _alpha_for(module: str, alpha: float | None, patterns: Sequence[tuple[re.Pattern[str], float]]) -> float | None:
    """The alpha of ``module``: the first ``alpha_pattern`` entry matching it, else the component's."""
    for pattern, value in patterns:
        if pattern.match(module):
            return value
    return alpha


def _damaged(key: str, value: object, why: str) -> LoraFileError:
    """The error for a damaged metadata entry (the loader names the file before it)."""
    try:
        shown = repr(value)
    except ValueError:   # an integer past Python's digit limit for str()
        shown = "a number too long to show"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return LoraFileError(f"its lora_adapter_metadata is damaged: {key} is {shown}, but {why}. "
                         "Re-save the LoRA, or remove its lora_adapter_metadata.")


def _real(value: object, key: str) -> float:
    """A metadata alpha as a float; anything but a finite real number (a string, a list, a bool, JSON's
    ``1e400`` read as infinity, ``NaN``, a number past float32's range, where alphas are kept) is damaged
    metadata."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and abs(number) <= FLOAT32_MAX:
            return number
    raise _damaged(key, value, "an alpha must be a finite real number (within float32's range)")


def _patterns(config: Mapping[str, object], key: str) -> list[tuple[re.Pattern[str], float]]:
    """The ``alpha_pattern`` at ``key`` (``{module regex: alpha}``), matched as PEFT's ``get_pattern_key``:
    ``(.*\\.)?(regex)$`` from the start of the module path."""
    table = config.get(key) or {}
    if not isinstance(table, dict):
        raise _damaged(key, table, "an alpha_pattern must map module names to alphas")
    patterns = []
    for name, value in table.items():
        try:
            pattern = re.compile(rf"(.*\.)?({name})$")
        except (re.error, RecursionError, OverflowError) as err:   # RecursionError: ((((... nested too deep
            raise _damaged(f"{key}[{name!r}]", name, f"its name is not a valid pattern ({err})") from err
        patterns.append((pattern, _real(value, f"{key}[{name!r}]")))
    return patterns


def apply_adapter_metadata(grouped: Grouped, metadata: Mapping[str, str] | None, source: str = "this file") -> Grouped:
    """Add ``alpha`` from diffusers' ``lora_adapter_metadata`` to modules whose keys carry none
    (``source`` names the file in the warning about metadata that is not JSON). An alpha that is not a
    finite real number, or a pattern that is not a valid one, is a :class:`LoraFileError` naming its key."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return grouped
    config = parse_json(raw, what=f"the lora_adapter_metadata of {source}")
    if not isinstance(config, dict):
        return grouped
    alphas: dict[str, tuple[float | None, list[tuple[re.Pattern[str], float]]]] = {}
    modules = []
    for params in grouped.modules:
        component = params.target.component
        if component not in alphas:   # checked once per component, whether or not a module needs it
            alpha = config.get(f"{component}.lora_alpha")
            alphas[component] = (None if alpha is None else _real(alpha, f"{component}.lora_alpha"),
                                 _patterns(config, f"{component}.alpha_pattern"))
        value = _alpha_for(params.target.module, *alphas[component])
        if "alpha" not in params.params and value is not None and "lora_down.weight" in params.params:
            params = replace(params, params={**params.params, "alpha": torch.tensor(value)})
        modules.append(params)
    return Grouped(modules, grouped.unmatched)
