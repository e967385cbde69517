"""The README's promises stay true: its two opening commands and its Python example."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_demo_and_test_commands_and_ci_runs_the_test_command() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert first_block == ["bash tools/setup.sh && .venv/bin/python extension.py demo",
                           "bash tools/setup.sh --test && .venv/bin/python -m pytest -q"]
    assert first_block[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
def test_readme_python_example_runs_and_restores_the_model(tmp_path: Path) -> None:
    import torch

    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    os.makedirs(ROOT / "out", exist_ok=True)
    namespace: dict = {}
    exec(compile(code.replace("num_inference_steps=20", "num_inference_steps=4").replace("steps=20", "steps=4"),
                 "README.md", "exec"), namespace)
    pipe = namespace["pipe"]
    fresh = type(pipe).from_pretrained(namespace["lora_syntax"].demo.MODEL_DIR, local_files_only=True,
                                       safety_checker=None, requires_safety_checker=False)
    for name in ("unet", "text_encoder"):
        before = dict(getattr(fresh, name).state_dict())
        for key, value in getattr(pipe, name).state_dict().items():
            assert torch.equal(value, before[key]), f"{name}.{key} was not restored"
    assert (ROOT / "out" / "api-example.png").is_file()
