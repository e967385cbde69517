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
