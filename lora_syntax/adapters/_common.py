"""Helpers shared by the adapter types: fp32 conversion, alpha/rank scale, shape fitting, ``to()``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch

from ..errors import LoraFactorsError, LoraFileError, LoraShapeError


def f32(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as fp32, on ``like``'s device when given (factors follow the weight they patch)."""
    device = like.device if like is not None else t.device
    return t.to(device=device, dtype=torch.float32)


def alpha_scale(alpha: torch.Tensor | float | None, rank: int) -> float:
    """The kohya/LyCORIS scale ``alpha / rank``; a file without ``alpha`` (or alpha 0) means scale 1."""
    if alpha is None:
        return 1.0
    value = float(alpha.item()) if isinstance(alpha, torch.Tensor) else float(alpha)
    return 1.0 if value == 0.0 else value / rank


def scalar(value: torch.Tensor, name: str, kind: str) -> float:
    """A one-number parameter (``alpha``, ``on_input``) as a float; any other shape is a damaged file,
    named, rather than torch's "cannot be converted to Scalar"."""
    if value.numel() != 1:
        raise LoraShapeError(f"{kind} adapter's {name} should be a single number but has shape "
                             f"{tuple(value.shape)}; the file is damaged.")
    return float(value.float().item())


def same_layout(natural: tuple[int, ...] | torch.Size, shape: tuple[int, ...] | torch.Size, *,
                flatten: bool = True) -> bool:
    """Whether a change of shape ``natural`` is a change of a weight of ``shape``: the same shape once trailing
    unit axes are dropped (a conv-1x1 LoRA on a linear weight and back) or, with ``flatten``, the same rows
    when one side is the 2-D ``(out, in·kh·kw)`` form of the other (a conv LoRA on a linear weight of that
    size; LoHa writes conv changes so). The number of values agreeing is not enough: a ``(16, 64)`` change
    is not a ``(32, 32)`` weight's."""
    natural, shape = tuple(natural), tuple(shape)
    if natural == shape or _squeezed(natural) == _squeezed(shape):
        return True
    return (flatten and 2 in (len(natural), len(shape)) and len(natural) >= 2 and len(shape) >= 2
            and natural[0] == shape[0] and math.prod(natural[1:]) == math.prod(shape[1:]))


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its trailing unit axes past the first two (``(out, in, 1, 1)`` -> ``(out, in)``)."""
    end = len(shape)
    while end > 2 and shape[end - 1] == 1:
        end -= 1
    return shape[:end]


def fit(delta: torch.Tensor, shape: torch.Size | tuple[int, ...], kind: str, where: str, *,
        flatten: bool = True) -> torch.Tensor:
    """``delta`` reshaped to the module's weight ``shape`` when :func:`same_layout` says it is one; otherwise
    a :class:`LoraShapeError`."""
    if not same_layout(delta.shape, shape, flatten=flatten):
        at = f" at {where}" if where else ""
        raise LoraShapeError(
            f"{kind} adapter{at} builds a weight change of shape {tuple(delta.shape)}, but the module's "
            f"weight has shape {tuple(shape)}; the LoRA was made for a different model or module.")
    return delta.reshape(shape)


def to_device(adapter, device: torch.device | str):
    """A dataclass copy of ``adapter`` with every tensor field (and nested adapter) on ``device``."""
    changes = {}
    for f in dataclasses.fields(adapter):
        value = getattr(adapter, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = value.to(device)
        elif hasattr(value, "to") and dataclasses.is_dataclass(value):
            changes[f.name] = value.to(device)
    return dataclasses.replace(adapter, **changes)


def require(params: Mapping[str, torch.Tensor], names: tuple[str, ...], kind: str) -> list[torch.Tensor]:
    """The tensors ``names`` of ``params``; a missing one is a :class:`LoraFileError` naming it."""
    missing = [n for n in names if n not in params]
    if missing:
        raise LoraFileError(f"{kind} adapter is missing {', '.join(missing)} (has {', '.join(sorted(params))}); "
                            "the file is incomplete or damaged.")
    return [params[n] for n in names]


class ShapesRepr:
    """A short ``repr`` listing tensor shapes, not values (adapters appear in logs and ``inspect``)."""

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
            elif value is None or f.name == "where" and not value:
                continue
            parts.append(f"{f.name}={value}")
        return f"{type(self).__name__}({', '.join(parts)})"


def check_inner(kind: str, *pairs: tuple[str, torch.Tensor, int, str, torch.Tensor, int]) -> None:
    """Factors that multiply must agree on their shared dimension; a mismatch names both tensors.

    Each pair is ``(name_a, tensor_a, axis_a, name_b, tensor_b, axis_b)``.
    """
    for name_a, a, axis_a, name_b, b, axis_b in pairs:
        if a.dim() <= axis_a or b.dim() <= axis_b or a.shape[axis_a] != b.shape[axis_b]:
            raise LoraFactorsError(f"{kind} factors do not fit each other: {name_a} {tuple(a.shape)} and "
                                 f"{name_b} {tuple(b.shape)} must share a rank dimension; the file is damaged.")


def check_matrix(kind: str, *named: tuple[str, torch.Tensor | None]) -> None:
    """Factors that are matrices (``(rows, cols[, kh, kw])``): a 1-D or 0-D one is a damaged file, named,
    rather than an ``IndexError`` when its second axis is read."""
    for name, tensor in named:
        if tensor is not None and tensor.dim() < 2:
            raise LoraFactorsError(f"{kind} factor {name} has shape {tuple(tensor.shape)}; it should be a matrix "
                                   "with 2 or more axes. The file is damaged.")


def check_unit_kernel(kind: str, name: str, tensor: torch.Tensor, why: str) -> None:
    """A factor whose axes past the first two must be 1 (a LoRA ``up``, a Tucker ``down``): a kernel there
    has no place in the formula, so the file is damaged, not merely made for another model."""
    if any(size != 1 for size in tensor.shape[2:]):
        raise LoraFactorsError(f"{kind} factor {name} has shape {tuple(tensor.shape)}, but {why}; "
                               "the file is damaged.")
