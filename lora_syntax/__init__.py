"""lora-syntax: stack LoRAs from prompt tags, with per-step and per-block weights.

The public API is imported lazily so that parsing a prompt never pays for torch start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "LoraError": "lora_syntax.errors",
    "LoraSyntaxError": "lora_syntax.errors",
    "LoraNameError": "lora_syntax.errors",
    "LoraFileError": "lora_syntax.errors",
    "ArchitectureMismatchError": "lora_syntax.errors",
    "LoraApplyError": "lora_syntax.errors",
    "parse": "lora_syntax.syntax",
    "format_tag": "lora_syntax.syntax",
    "build_plan": "lora_syntax.plan",
    "LoraLibrary": "lora_syntax.library",
    "load_lora": "lora_syntax.loader",
    "activate": "lora_syntax.hosts.diffusers",
    "generate": "lora_syntax.hosts.diffusers",
    "restore": "lora_syntax.hosts.diffusers",
    "ActiveRun": "lora_syntax.hosts.diffusers",
}
_SUBMODULES = ("demo", "syntax", "plan", "library", "loader", "hosts", "patcher", "blocks")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lora_syntax.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_syntax' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
