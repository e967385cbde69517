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
