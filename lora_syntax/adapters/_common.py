"""Helpers shared by the adapter types: fp32 conversion, alpha/rank scale, shape fitting, ``to()``."""

from __future__ import annotations

import dataclasses
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


def fit(delta: torch.Tensor, shape: torch.Size | tuple[int, ...], kind: str, where: str) -> torch.Tensor:
    """``delta`` reshaped to the module's weight ``shape``; a size mismatch is a :class:`LoraShapeError`.

    Reshaping (not only equality) lets a conv-1x1 LoRA patch a linear weight and vice versa.
    """
    if delta.numel() != torch.Size(shape).numel():
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
