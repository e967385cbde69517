"""Choose an adapter type by the parameter names of one module, and slice adapters by output rows.

``ADAPTER_TYPES`` is ordered; each type declares the names it consumes (``param_names``) and
recognises its signature (``claims``). Exactly one base type must claim a module; ``dora_scale``
then wraps it in :class:`DoraAdapter`. Keys no type consumes, or a module two types claim, are a
:class:`LoraFileError` naming the module and the keys — never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import LoraFileError
from .base import Adapter
from .boft import BoftAdapter
from .dora import DoraAdapter
from .full import FullAdapter
from .glora import GloraAdapter
from .ia3 import Ia3Adapter
from .loha import LohaAdapter
from .lokr import LokrAdapter
from .lora import LoraAdapter
from .norm import NormAdapter
from .oft import OftAdapter
from .rowslice import RowSlice

ADAPTER_TYPES: tuple[type[Adapter], ...] = (
    LoraAdapter, LohaAdapter, LokrAdapter, GloraAdapter, FullAdapter, NormAdapter, Ia3Adapter, OftAdapter,
    BoftAdapter,
)


def _names(cls: type[Adapter]) -> frozenset[str]:
    return getattr(cls, "param_names")


#: One-number parameters that may be stored as integers or booleans (``alpha`` 8, ``on_input`` true).
SCALAR_PARAMS = frozenset({"alpha", "on_input"})


def check_values(params: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse what no adapter formula can take: an empty factor (rank 0: ``alpha / rank`` divides by zero,
    and it changes nothing), a factor that is not floating point (bool or int8 tensors are not weights) and
    an alpha that is not a real number (a complex one would lose its imaginary part, a bool means nothing)."""
    for name, tensor in sorted(params.items()):
        if tensor.numel() == 0:
            raise LoraFileError(f"{where}: {name} has shape {tuple(tensor.shape)}, with no values (a rank-0 "
                                "LoRA); it changes nothing and cannot be applied. The file was saved empty for this "
                                "module: re-export it, or remove the LoRA.")
        if name == "alpha" and (tensor.dtype == torch.bool or tensor.is_complex()):
            raise LoraFileError(f"{where}: alpha holds a {str(tensor.dtype).removeprefix('torch.')} value; alpha must "
                                "be a real number (float or integer). The file is damaged.")
        scalar = name in SCALAR_PARAMS and tensor.numel() == 1
        if not (tensor.is_floating_point() or scalar):
            raise LoraFileError(f"{where}: {name} holds {str(tensor.dtype).removeprefix('torch.')} values; LoRA "
                                "factors are floating point (float32, float16, bfloat16). The file is damaged or "
                                "is not a LoRA.")


def build_adapter(params: Mapping[str, torch.Tensor], *, where: str) -> Adapter:
    """The adapter for one module's normalised parameters; ``where`` names the module/file in errors."""
    check_values(params, where)
    claimants = [cls for cls in ADAPTER_TYPES if cls.claims(params)]
    if not claimants:
        raise LoraFileError(
            f"{where}: no adapter type recognises the keys {', '.join(sorted(params))}; expected e.g. "
            "lora_up.weight+lora_down.weight (LoRA), hada_w1_a.. (LoHa), lokr_w1.. (LoKr), diff (full).")
    if len(claimants) > 1:
        parts = "; ".join(f"{cls.kind}: {', '.join(sorted(_names(cls) & params.keys()))}" for cls in claimants)
        raise LoraFileError(f"{where}: keys of several adapter types on one module ({parts}); "
                            "the file mixes formats for this module and cannot be applied.")
    cls = claimants[0]
    used = _names(cls) | ({"dora_scale"} if "dora_scale" in params else set())
    leftover = sorted(set(params) - used)
    if leftover:
        raise LoraFileError(f"{where}: keys not used by its {cls.kind} adapter: {', '.join(leftover)}; "
                            "the file has parameters this version does not understand.")
    try:
        adapter = cls.from_params(params)
        object.__setattr__(adapter, "where", where)   # built just now, so labelled in place (not replaced)
    except LoraFileError as err:  # re-raised with the module named, same class (LoraShapeError stays one)
        raise type(err)(f"{where}: {err}") from err
    if "dora_scale" in params:
        adapter = DoraAdapter(base=adapter, dora_scale=params["dora_scale"], where=where)
    return adapter


def sliced(adapter: Adapter, start: int, stop: int) -> Adapter:
    """``adapter`` limited to output rows ``start:stop`` (a fused qkv/linear1 LoRA split onto q, k, v...).

    Types that can slice their own factors do (LoRA slices ``up`` and keeps its low-rank form);
    the others are wrapped so their delta is computed whole and sliced.
    """
    rows = getattr(adapter, "rows", None)
    if rows is not None:
        return rows(start, stop)
    if not adapter.additive or getattr(adapter, "out_features", None) is None:
        where = getattr(adapter, "where", "") or "this module"
        raise LoraFileError(f"{where}: a {adapter.kind} adapter cannot be split across the output rows of a "
                            "fused module (FLUX qkv/linear1); use a LoRA saved for the separate modules.")
    return RowSlice(inner=adapter, start=start, stop=stop, where=getattr(adapter, "where", ""))
