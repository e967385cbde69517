"""A LoRA file rewritten in place while a run uses it (a trainer saving an epoch over it, a copy over the
old version): the loaded tensors are views of the file's memory map, whose pages vanish when the file
shrinks, and reading one then kills the process with SIGBUS. The engine's writes after the first must
read only memory of its own, so the run finishes with what it loaded. Run in a child process, since a
failure is a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from lora_syntax.hosts.diffusers import activate
    from lora_syntax.testing.tiny import tiny_pipeline
    from helpers_engine import lora_state_dict, write_lora

    folder = Path({folder!r})
    pipe = tiny_pipeline("sd15")
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    g = torch.Generator().manual_seed(3)
    loha = {{f"{{q}}.hada_w1_a": torch.randn(32, 2, generator=g), f"{{q}}.hada_w1_b": torch.randn(2, 32, generator=g),
            f"{{q}}.hada_w2_a": torch.randn(32, 2, generator=g), f"{{q}}.hada_w2_b": torch.randn(2, 32, generator=g),
            f"{{q}}.alpha": torch.tensor(2.0)}}
    prompt = "a cat <lora:plain:0.2@1,1@2> <lora:loha:0.5@1,0.1@2>"

    def run(rewrite):
        files = [write_lora(folder, "plain", lora_state_dict(pipe, rank=8)), write_lora(folder, "loha", loha)]
        with activate(pipe, prompt, lora_dirs=[folder], steps=2, architecture="sd15") as session:
            if rewrite:
                for path in files:
                    with open(path, "r+b") as handle:
                        handle.truncate(100)    # same file, shorter: its map's pages are gone
            session.callback(pipe, 0, None, {{}})   # step 2: every weight changes
            return {{name: p.detach().clone() for name, p in pipe.unet.named_parameters()}}

    kept, rewritten = run(False), run(True)
    assert kept.keys() == rewritten.keys()
    assert all(torch.equal(kept[name], rewritten[name]) for name in kept), "a write read the rewritten file"
    print("finished with what it loaded")
""")


def test_a_file_rewritten_mid_run_neither_crashes_nor_changes_the_run(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    script = SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), folder=str(tmp_path / "loras"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"rc {done.returncode} (-7: SIGBUS)\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "finished with what it loaded" in done.stdout
