"""The demo grid: one cell per prompt (its LoRA tags applied by the real engine), each cell a row of seeds,
labelled with its tags and what it shows."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .render import GUIDANCE, sample_seeds, to_pil

BLUE = "a blue circle on a white background"
STAR = "a blue zorbstar on a white background"


@dataclass(frozen=True)
class Cell:
    """One grid cell: the full prompt (tags included) and a short caption of what it shows."""

    prompt: str
    shows: str

    @property
    def tags(self) -> str:
        """The prompt's tags, or "(no LoRA)"."""
        start = self.prompt.find("<")
        return self.prompt[start:] if start >= 0 else "(no LoRA)"


CELLS: tuple[Cell, ...] = (
    Cell(BLUE, "base model"),
    Cell(f"{BLUE} <lora:sepia:1>", "style LoRA: sepia palette"),
    Cell(f"{BLUE} <lora:night:1>", "mood LoRA: dark, vignetted"),
    Cell(STAR, "base: does not know 'zorbstar'"),
    Cell(f"{STAR} <lora:zorbstar:1>", "subject LoRA + trigger word"),
    Cell(f"{BLUE} <lora:zorbstar:1>", "subject LoRA, no trigger: circle"),
    Cell(f"{STAR} <lora:zorbstar:1> <lora:sepia:0.8>", "two stacked"),
    Cell(f"{STAR} <lora:zorbstar:1> <lora:sepia:0.6> <lora:night:0.7>", "three stacked"),
    Cell(f"{STAR} <lora:zorbstar:1> <lora:sepia:0.5@1,1@7>", "stepwise: style half, full from step 7"),
    Cell(f"{STAR} <lora:zorbstar:1@1,0@5> <lora:night:0@1,1@5>", "subject steps 1-4, mood from step 5"),
    Cell(f"{BLUE} <lora:sepia:1:in=0>", "block weights: sepia without in blocks"),
    Cell(f"{BLUE} <lora:sepia:1:out=0>", "block weights: sepia without out blocks"),
)


def render_cell(pipe, cell: Cell, lora_dir: Path, seeds: Sequence[int], steps: int) -> list[np.ndarray]:
    """The cell's images, one per seed, through ``hosts.diffusers.activate`` (weights restored after)."""
    from ..hosts.diffusers import activate

    with activate(pipe, cell.prompt, lora_dirs=[lora_dir], steps=steps) as run:
        return sample_seeds(pipe, run.prompt, seeds, steps=steps, guidance=GUIDANCE,
                            callback_on_step_end=run.callback,
                            callback_on_step_end_tensor_inputs=run.callback_tensor_inputs)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def compose(cells: Sequence[Cell], images: Sequence[Sequence[np.ndarray]], *, columns: int = 3, scale: int = 3,
            title: str = "") -> Image.Image:
    """Lay the cells out ``columns`` wide: label lines (tags, then what it shows) above each row of seeds."""
    tile = images[0][0].shape[0] * scale
    per_cell = len(images[0])
    cell_w, label_h, pad = per_cell * tile + (per_cell - 1) * 2, 46, 10
    rows = -(-len(cells) // columns)
    top = 30 if title else 0
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, top + rows * (label_h + tile + pad) + pad), "white")
    draw, font, small = ImageDraw.Draw(sheet), _font(12), _font(11)
    if title:
        draw.text((pad, 8), title, fill="black", font=_font(15))
    for index, (cell, row) in enumerate(zip(cells, images)):
        x = pad + (index % columns) * (cell_w + pad)
        y = top + pad + (index // columns) * (label_h + tile + pad)
        lines = textwrap.wrap(cell.tags, width=cell_w // 7)[:2]
        for n, line in enumerate(lines):
            draw.text((x, y + n * 14), line, fill=(20, 20, 120), font=font)
        draw.text((x, y + 31), f"{index + 1}. {cell.shows}", fill=(90, 90, 90), font=small)
        for k, image in enumerate(row):
            sheet.paste(to_pil(image, scale), (x + k * (tile + 2), y + label_h))
    return sheet
