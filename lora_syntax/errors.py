"""Every error lora-syntax raises on purpose derives from :class:`LoraError`.

Hosts catch ``LoraError`` to report a problem to the user and carry on; anything else
escaping the package is a bug. Messages name the input (tag, file), what was expected
and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class LoraError(Exception):
    """Base of every user-facing lora-syntax error."""


class LoraSyntaxError(LoraError, ValueError):
    """A malformed ``<lora:...>`` tag; ``str()`` shows the tag, the column and a caret line."""

    def __init__(self, message: str, *, text: str = "", column: int = 0, tag: str = "") -> None:
        super().__init__(message)
        self.text = text      # the whole prompt (or tag) the error was found in
        self.column = column  # 1-based column in ``text``
        self.tag = tag        # the offending tag's text, when known


class LoraNameError(LoraError, LookupError):
    """A tag names no LoRA, several LoRAs, or a path outside the LoRA folders."""

    def __init__(self, message: str, *, name: str = "", candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.candidates = candidates


class LoraFileError(LoraError):
    """A LoRA file cannot be used: not safetensors, truncated, NaN weights, unknown keys..."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class ArchitectureMismatchError(LoraFileError):
    """The LoRA was made for another model family ("SDXL LoRA, SD1.5 model")."""

    def __init__(self, message: str, *, path: str | Path | None = None,
                 lora_architecture: str = "", model_architecture: str = "") -> None:
        super().__init__(message, path=path)
        self.lora_architecture = lora_architecture
        self.model_architecture = model_architecture


class LoraShapeError(LoraFileError):
    """A LoRA tensor does not fit the module it targets."""


class LoraFactorsError(LoraShapeError):
    """A LoRA's own tensors do not fit each other (factors disagreeing on their rank): the file is damaged,
    whatever model it is used with."""


class LoraApplyError(LoraError):
    """Patching the model failed; the model has been restored to its original weights."""
