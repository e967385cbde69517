"""The core package must never import gradio or a web-UI host: hosts and ui/ are thin layers over it."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "lora_syntax"
FORBIDDEN = {"gradio", "modules", "ui", "scripts", "extension", "ldm", "sgm", "comfy"}
HOST_MODULES = {"hosts"}  # lora_syntax/hosts/ is the one place allowed to import host code


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_no_ui_and_no_host() -> None:
    offenders = {}
    for path in CORE.rglob("*.py"):
        relative = path.relative_to(CORE)
        forbidden = FORBIDDEN if relative.parts[0] not in HOST_MODULES else {"gradio", "ui"}
        bad = imported_roots(path) & forbidden
        if bad:
            offenders[str(relative)] = sorted(bad)
    assert offenders == {}, f"core modules import UI/host code: {offenders}"
