"""install.py: what a web-UI host runs at start-up. It must never install or replace torch."""

from __future__ import annotations

from pathlib import Path

import install


def test_torch_is_never_requested_and_optional_lines_are_separate(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\ntorch>=2.0\nsurely-not-installed-pkg>=1\n"
                            "lark>=1.1\nanother-missing-pkg  # optional: speed-up\n", encoding="utf-8")
    assert install.missing_requirements(requirements) == ["surely-not-installed-pkg>=1"]
    assert install.missing_requirements(requirements, optional=True) == ["another-missing-pkg"]


def test_shipped_requirements_do_not_name_torch() -> None:
    lines = [line.split("#")[0].strip() for line in install.REQUIREMENTS.read_text().splitlines()]
    assert not any(line.lower().startswith("torch") for line in lines)


def test_install_holds_every_installed_package_at_its_version(monkeypatch) -> None:
    """Run by a host (Forge pins lark 1.1.2), pip may add packages but never up- or downgrade one."""
    import importlib.metadata

    seen = {}

    def fake_call(args):
        seen["args"] = args
        seen["constraints"] = Path(args[args.index("-c") + 1]).read_text().splitlines()
        return 0

    monkeypatch.setattr(install.subprocess, "check_call", fake_call)
    install.install(["lark-cython>=0.0.15"])
    assert seen["args"][-1] == "lark-cython>=0.0.15"
    assert f"lark=={importlib.metadata.version('lark')}" in seen["constraints"]
    assert f"torch=={importlib.metadata.version('torch')}" in seen["constraints"]
