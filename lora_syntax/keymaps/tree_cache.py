"""Module trees kept on disk as JSON, so ``inspect`` need not build a full model to learn its shapes.

Building SD1.5's reference tree imports diffusers and transformers and constructs ~1 billion parameters on
the ``meta`` device: seconds of work for a table of ~1,000 ``name -> shape`` rows that never changes for a
given config and library version. The first build writes that table to
``$LORA_SYNTAX_CACHE`` (default ``$XDG_CACHE_HOME/lora-syntax`` or ``~/.cache/lora-syntax``)
``/trees/NAME-KEY.json``; ``KEY`` hashes what the tree depends on (the caller's config text and the
installed diffusers/transformers versions), so a changed config or an upgrade builds a new one. A cache
that cannot be read or written is skipped: the tree is then built as before.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .tree import ModelTree, ModuleInfo

FORMAT = 1  # bump when the JSON layout or what a tree holds changes
LIBRARIES = ("diffusers", "transformers", "torch")


def cache_dir() -> Path:
    """Where cached trees live (see the module docstring)."""
    root = os.environ.get("LORA_SYNTAX_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora-syntax"
    return Path(root) / "trees"


def _versions() -> str:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name}=none")
    return ";".join(found)


def cache_key(depends_on: str) -> str:
    """A short hash of ``depends_on`` (configs, as text), the library versions and :data:`FORMAT`."""
    return hashlib.sha256(f"{FORMAT}\n{_versions()}\n{depends_on}".encode()).hexdigest()[:16]


def to_json(tree: ModelTree) -> dict:
    return {"architecture": tree.architecture, "config": tree.config,
            "modules": {component: {name: [list(info.weight_shape), info.has_bias, info.kind]
                                    for name, info in modules.items()}
                        for component, modules in tree.modules.items()}}


def from_json(data: dict) -> ModelTree:
    modules = {component: {name: ModuleInfo(tuple(shape), bool(bias), kind) for name, (shape, bias, kind)
                           in rows.items()} for component, rows in data["modules"].items()}
    return ModelTree(data["architecture"], modules, data["config"])


def cached_tree(name: str, depends_on: str, build: Callable[[], ModelTree]) -> ModelTree:
    """The tree stored under ``name`` for ``depends_on``, or ``build()`` (then stored for next time)."""
    target = cache_dir() / f"{name}-{cache_key(depends_on)}.json"
    try:
        return from_json(json.loads(target.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    tree = build()
    try:
        text = json.dumps(to_json(tree), default=list)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temp, target)
        finally:
            Path(temp).unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        pass  # a read-only home or a config value JSON cannot hold: no cache, the same tree
    return tree
