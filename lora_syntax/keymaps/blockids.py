"""Which lora-block-weight block a module belongs to (``IN04``, ``M00``, ``OUT11``, ``D07``, ``S12``, ``BASE``).

The rule of docs/architecture.md as a table of ``(pattern, rule)`` rows per denoiser family; the first
row whose pattern matches the module path wins. With L = ``layers_per_block``:

    down_blocks.i.{resnets,attentions}.j -> IN{1+i*(L+1)+j}    down_blocks.i.downsamplers -> IN{(i+1)*(L+1)}
    up_blocks.i.{resnets,attentions}.j   -> OUT{i*(L+1)+j}     up_blocks.i.upsamplers     -> OUT{i*(L+1)+L}
    mid_block -> M00;  conv_in/time_embedding/add_embedding -> IN00;  conv_norm_out/conv_out -> last OUT
    FLUX: transformer_blocks.i -> D{i:02}, single_transformer_blocks.i -> S{i:02}, embedders -> EMBED, out -> FINAL
Text encoders are ``BASE`` for every architecture.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .tree import TEXT_ENCODERS

Rule = Callable[[re.Match, Mapping[str, object]], str]


def _layers(config: Mapping[str, object]) -> int:
    layers = config.get("layers_per_block", 2)
    return int(layers[0] if isinstance(layers, (list, tuple)) else layers)


def _last_out(config: Mapping[str, object]) -> str:
    blocks = len(config.get("up_block_types", ())) or 4
    return f"OUT{blocks * (_layers(config) + 1) - 1:02d}"


def _idx(m: re.Match, name: str) -> int:
    return int(m.group(name))


UNET_RULES: tuple[tuple[str, Rule], ...] = (
    (r"^down_blocks\.(?P<i>\d+)\.(?:resnets|attentions)\.(?P<j>\d+)(\.|$)",
     lambda m, c: f"IN{1 + _idx(m, 'i') * (_layers(c) + 1) + _idx(m, 'j'):02d}"),
    (r"^down_blocks\.(?P<i>\d+)\.downsamplers(\.|$)",
     lambda m, c: f"IN{(_idx(m, 'i') + 1) * (_layers(c) + 1):02d}"),
    (r"^up_blocks\.(?P<i>\d+)\.(?:resnets|attentions)\.(?P<j>\d+)(\.|$)",
     lambda m, c: f"OUT{_idx(m, 'i') * (_layers(c) + 1) + _idx(m, 'j'):02d}"),
    (r"^up_blocks\.(?P<i>\d+)\.upsamplers(\.|$)",
     lambda m, c: f"OUT{_idx(m, 'i') * (_layers(c) + 1) + _layers(c):02d}"),
    (r"^mid_block(\.|$)", lambda m, c: "M00"),
    (r"^(?:conv_in|time_embedding|add_embedding|class_embedding)(\.|$)", lambda m, c: "IN00"),
    (r"^(?:conv_norm_out|conv_out)(\.|$)", lambda m, c: _last_out(c)),
)

FLUX_RULES: tuple[tuple[str, Rule], ...] = (
    (r"^transformer_blocks\.(?P<i>\d+)(\.|$)", lambda m, c: f"D{_idx(m, 'i'):02d}"),
    (r"^single_transformer_blocks\.(?P<i>\d+)(\.|$)", lambda m, c: f"S{_idx(m, 'i'):02d}"),
    (r"^(?:x_embedder|context_embedder|time_text_embed|pos_embed)(\.|$)", lambda m, c: "EMBED"),
    (r"^(?:norm_out|proj_out)(\.|$)", lambda m, c: "FINAL"),
)

# Denoiser rules per architecture: a new architecture is a new row here.
DENOISER_RULES: dict[str, tuple[tuple[str, Rule], ...]] = {
    "sd15": UNET_RULES,
    "sd2": UNET_RULES,
    "sdxl": UNET_RULES,
    "flux": FLUX_RULES,
}

_COMPILED: dict[str, tuple[tuple[re.Pattern, Rule], ...]] = {}


def _rules(architecture: str) -> tuple[tuple[re.Pattern, Rule], ...]:
    if architecture not in _COMPILED:
        _COMPILED[architecture] = tuple((re.compile(p), r) for p, r in DENOISER_RULES.get(architecture, ()))
    return _COMPILED[architecture]


def block_of(architecture: str, component: str, module: str,
             config: Mapping[str, object] | None = None) -> str | None:
    """The block id of ``component``'s ``module`` in an ``architecture`` model, or ``None`` if no rule covers it.

    ``config`` is the component's config (``layers_per_block``, ``up_block_types``); the real models'
    values are assumed when it is missing.
    """
    if component in TEXT_ENCODERS:
        return "BASE"
    for pattern, rule in _rules(architecture):
        match = pattern.match(module)
        if match:
            return rule(match, config or {})
    return None
