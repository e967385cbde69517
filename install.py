"""Installs what lora-syntax needs into the running Python.

A1111 and SD.Next run an extension's ``install.py`` at start-up; it is also usable standalone
(``python install.py``). It never installs or replaces torch: the host's build (CUDA, ROCm...)
must stay as it is.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def missing_requirements(path: Path = REQUIREMENTS, *, optional: bool = False) -> list[str]:
    """The lines of ``requirements.txt`` whose package is not installed (versions are not forced);
    ``optional=True`` gives the lines marked ``# optional`` instead of the required ones."""
    missing = []
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement, _, comment = (part.strip() for part in line.partition("#"))
        if comment.startswith("optional") != optional:
            continue
        if not requirement:
            continue
        package = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        if package.lower() == "torch":
            continue
        try:
            importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def installed_pins() -> list[str]:
    """``name==version`` of every distribution in this interpreter: the host's pins as they are now."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def install(requirements: list[str]) -> None:
    """pip-install ``requirements`` into this interpreter, never changing an installed package: every one is
    held at its current version by a constraints file (a host's pins, e.g. Forge's lark 1.1.2, stay)."""
    if not requirements:
        return
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(installed_pins()) + "\n")
    try:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-c", handle.name, *requirements])
    finally:
        Path(handle.name).unlink(missing_ok=True)


def main() -> int:
    needed = missing_requirements()
    if needed:
        print(f"lora-syntax: installing {', '.join(needed)}")
        install(needed)
    for extra in missing_requirements(optional=True):
        try:
            install([extra])
        except subprocess.CalledProcessError:
            print(f"lora-syntax: optional {extra} could not be installed; carrying on without it")
    return 0


if __name__ == "__main__":
    # A1111 and SD.Next run an extension's install.py as a script; importing it installs nothing.
    sys.exit(main())
