"""``python extension.py explain``: table, exact JSON shape, positioned errors, a real PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a cat, <lora:styles/ink wash v1.2:te=0.1@1,0.6@6>, <lyco:detail:0.8:lbw=OUTD:out=0.5@50%> night"


def explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "extension.py"), "explain", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_json_has_the_exact_documented_shape() -> None:
    result = explain(PROMPT, "--steps", "10", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"prompt", "steps", "loras"} <= set(data)
    assert data["prompt"] == "a cat, night" and data["steps"] == 10
    first, second = data["loras"]
    assert (first["name"], first["tag"]) == ("styles/ink wash v1.2", "<lora:styles/ink wash v1.2:te=0.1@1,0.6@6>")
    assert set(first["weights"]) == {"te", "unet.in", "unet.mid", "unet.out"}
    assert first["weights"]["te"] == [0.1] * 5 + [0.6] * 5
    assert first["weights"]["unet.mid"] == [0.1] * 5 + [0.6] * 5
    assert all(len(v) == 10 and all(isinstance(x, float) for x in v) for v in second["weights"].values())
    assert second["weights"]["te"] == [0.8] * 10
    assert second["weights"]["unet.in"] == [0.0] * 10          # OUTD: every IN block x0
    assert second["weights"]["unet.out"] == [0.0] * 5 + [0.5] * 5
    assert data["change_points"] == [6]


def test_table_compresses_runs() -> None:
    result = explain(PROMPT, "--steps", "20", "--arch", "sd15")
    assert result.returncode == 0, result.stderr
    assert "te        1-5: 0.1, 6-20: 0.6" in result.stdout
    assert "unet.out  1-10: 0, 11-20: 0.5" in result.stdout
    assert "change points: 6, 11" in result.stdout
    lerp = explain("<lora:x:lerp(0@0,1@10)>", "--steps", "12")
    assert "1-10: 0 -> 1, 11-12: 1" in lerp.stdout


def test_bad_prompt_exits_non_zero_with_a_caret_message() -> None:
    result = explain("a <lora:ink:tee=1>", "--steps", "5")
    assert result.returncode == 2
    assert "unknown key 'tee'" in result.stderr and "did you mean 'te'" in result.stderr
    assert "column 13" in result.stderr
    assert result.stderr.splitlines()[-1] == "  " + " " * 12 + "^"
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "plan.png"
    result = explain(PROMPT + " <lora:ramp:unet=lerp(0@0,1@8):in=-0.3>", "--steps", "16", "--plot", str(target))
    assert result.returncode == 0, result.stderr
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    from PIL import Image
    with Image.open(target) as image:
        assert image.size == (900, 520)
        colours = {c for _, c in image.getcolors(1 << 20)}
        assert len(colours) > 10  # axes, text and several coloured lines, not a blank canvas


def test_plot_to_a_missing_folder_is_one_error_line() -> None:
    """Regression: --plot /nonexistent/dir/p.png crashed with a FileNotFoundError traceback."""
    result = explain("<lora:x:1>", "--steps", "4", "--plot", "/nonexistent/dir/p.png")
    assert result.returncode == 2
    assert result.stderr == "error: cannot write plot '/nonexistent/dir/p.png': No such file or directory\n"
    assert result.stdout == ""  # no table or JSON that a script could take for success


def test_plot_refuses_a_name_not_ending_in_png(tmp_path: Path) -> None:
    """Regression: --plot f.txt wrote a PNG into a .txt file."""
    target = tmp_path / "f.txt"
    result = explain("<lora:x:1>", "--steps", "4", "--plot", str(target))
    assert result.returncode == 2
    assert result.stderr == (f"error: cannot write plot '{target}': the plot is a PNG image; give a file name "
                             f"ending in .png (e.g. f.png)\n")
    assert not target.exists() and result.stdout == ""
    upper = explain("<lora:x:1>", "--steps", "4", "--plot", str(tmp_path / "p.PNG"))
    assert upper.returncode == 0 and (tmp_path / "p.PNG").read_bytes()[:4] == b"\x89PNG"


# -- issue 13 item 5: the strength warning counts only what each file has keys for ---------------------------------
STACKED = ("total LoRA strength above 1.5: {}denoiser in blocks 2.00 at step 1; denoiser mid blocks 2.00 at step 1; "
           "denoiser out blocks 2.00 at step 1. Stacked LoRAs compound each other's artefacts: lower some weights")


def test_demo_loras_without_text_encoder_keys_give_no_text_encoder_strength_warning() -> None:
    result = explain("a <lora:sepia:1> <lora:night:1>", "--steps", "8", "--json")   # the demo LoRAs, by default
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["warnings"] == [STACKED.format("")]
    elsewhere = explain("a <lora:sepia:1> <lora:night:1>", "--steps", "8", "--json", "--lora-dir", str(ROOT / "docs"))
    assert json.loads(elsewhere.stdout)["warnings"] == [STACKED.format("text encoders 2.00 at step 1; ")]  # unknown


def test_the_strength_warning_still_counts_a_file_that_has_text_encoder_keys() -> None:
    zorbstar = explain("a <lora:zorbstar:2:0.5>", "--steps", "8")   # zorbstar has 36 text-encoder keys
    assert zorbstar.stdout.splitlines()[-1] == (
        "warning: <lora:zorbstar:2:0.5>: LoRA strength above 1.5: text encoders 2.00 at step 1. One LoRA this strong "
        "tends to overcook the image (burnt colours, artefacts): lower its weight")
    sepia = explain("a <lora:sepia:2:0.5>", "--steps", "8")
    assert sepia.returncode == 0 and "warning:" not in sepia.stdout
    both = explain("a <lora:zorbstar:1> <lora:night:1>", "--steps", "8", "--json")
    assert json.loads(both.stdout)["warnings"] == [STACKED.format("")]          # text encoders: zorbstar's 1 only
    twice = explain("a <lora:zorbstar:1> <lora:zorbstar:0.8>", "--steps", "8", "--json")
    assert STACKED.format("text encoders 1.80 at step 1; ").replace("2.00", "1.80") in json.loads(twice.stdout)["warnings"]
