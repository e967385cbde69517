"""``python extension.py demo``: renders the labelled grid with the shipped kit through the engine."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

import extension
from lora_syntax.demo.grid import CELLS, Cell, compose


def test_demo_command_writes_the_grid_and_lists_the_tags(tmp_path, capsys):
    out = tmp_path / "grid.png"
    start = time.time()
    assert extension.main(["demo", "--out", str(out), "--steps", "4", "--seed", "7"]) == 0
    assert time.time() - start < 60
    printed = capsys.readouterr().out
    for cell in CELLS:
        assert cell.tags in printed
    assert str(out) in printed
    with Image.open(out) as image:
        assert image.width >= 800 and image.height >= 500
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 20                              # images and labels, not a blank sheet


def test_demo_rejects_zero_steps(tmp_path, capsys):
    assert extension.main(["demo", "--out", str(tmp_path / "g.png"), "--steps", "0"]) == 2
    assert "--steps 0" in capsys.readouterr().err


def test_compose_enlarges_tiles_with_nearest_neighbour():
    tile = np.zeros((32, 32, 3), dtype=np.float32)
    tile[:16] = 1.0
    sheet = np.asarray(compose([Cell("p <lora:a:1>", "shows")], [[tile, tile]], columns=1, scale=3))
    values = np.unique(sheet[60:, 10:100].reshape(-1, 3), axis=0)   # inside the first tile: only 0 and 255
    assert {tuple(v) for v in values} <= {(0, 0, 0), (255, 255, 255)}


def test_cell_tags_are_the_prompt_tags():
    assert Cell("a red circle <lora:sepia:1>", "x").tags == "<lora:sepia:1>"
    assert Cell("a red circle", "x").tags == "(no LoRA)"


def test_demo_refuses_an_output_it_cannot_write_before_rendering(tmp_path, capsys):
    """Regression: a name without .png rendered the grid, then failed in Pillow with a traceback."""
    (tmp_path / "folder.png").mkdir()
    for out, message in ((tmp_path / "grid", "the grid is a PNG image"), (tmp_path / "grid.jpg", "ending in .png"),
                         (tmp_path / "folder.png", "that is a folder")):
        start = time.perf_counter()
        assert extension.main(["demo", "--out", str(out), "--steps", "1"]) == 2
        assert message in capsys.readouterr().err
        assert time.perf_counter() - start < 5   # refused before the kit is loaded


def test_demo_warns_when_its_stepwise_cells_change_after_the_last_step():
    from lora_syntax.commands.demo import schedule_warnings

    assert schedule_warnings(CELLS, 12) == []
    found = schedule_warnings(CELLS, 2)
    assert found and all("after the last step (2)" in w for w in found)
    assert any("@7" in w for w in found)
