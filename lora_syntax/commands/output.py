"""Checks the commands share, made before minutes of loading and sampling: that an output file can be
written, and that numeric options make sense. Each problem is a :class:`LoraError` naming the option."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import LoraError


def check_writable(path: Path, option: str = "--out") -> None:
    """Refuse an output path that cannot be written (a folder, a folder that cannot be made, no permission),
    by opening it for appending now; a file this check created is removed again."""
    if path.is_dir():
        raise LoraError(f"{option} {path}: that is a folder; give a file name (e.g. {path / 'image.png'}).")
    blocking = next((parent for parent in path.parents if parent.is_file()), None)
    if blocking is not None:
        raise LoraError(f"{option} {path}: '{blocking}' is a file, not a folder; choose another place.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "ab"):
            pass
    except OSError as error:
        raise LoraError(f"{option} {path}: cannot write there ({error.strerror or error}); choose a file in a "
                        "folder you can write to.") from error
    if not existed:
        path.unlink(missing_ok=True)


def saved(path: Path, option: str = "--out") -> LoraError:
    """The error for an output that could not be written after all (the disk filled up, the folder went)."""
    return LoraError(f"{option} {path}: the image was rendered but could not be written; choose another file.")


def check_steps(steps: int) -> None:
    if steps < 1:
        raise LoraError(f"--steps {steps}: need at least 1 sampling step.")


def check_finite(value: float, option: str) -> None:
    if not math.isfinite(value):
        raise LoraError(f"{option} {value}: not a finite number; give a number such as 7.")


def check_size(value: int | None, option: str) -> None:
    """Image sides are positive multiples of 8 (the VAE's scale; diffusers refuses others mid-run)."""
    if value is not None and (value < 8 or value % 8):
        raise LoraError(f"{option} {value}: image sides are multiples of 8 from 8 up (e.g. {max(8, value // 8 * 8)}).")
