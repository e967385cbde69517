"""``demo``: render the labelled grid that shows what the syntax does, with the shipped tiny model and LoRAs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import LoraError
from .output import check_steps, check_writable, saved

HELP = "Render a labelled grid of the demo LoRAs (alone, stacked, stepwise, block weights) with the built-in kit."
DEFAULT_OUT = Path("out/demo-grid.png")
SEEDS_PER_CELL = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output PNG (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help=f"first seed; each cell shows {SEEDS_PER_CELL} seeds")
    parser.add_argument("--steps", type=int, default=12, help="sampling steps (default 12)")


def _load_kit():
    import torch

    from ..demo import LORA_DIR, MODEL_DIR
    from ..demo.model import load_pipeline

    if not (MODEL_DIR / "model_index.json").is_file():
        raise LoraError(f"the demo model is missing at {MODEL_DIR}; rebuild it with "
                        "`python tools/train_demo.py` (about 30 minutes on a 2-core CPU).")
    torch.set_num_threads(1)  # tiny tensors: a second thread only thrashes on a busy 2-core CPU
    return load_pipeline(MODEL_DIR), LORA_DIR


def run(args: argparse.Namespace) -> int:
    """Render every cell through the engine and save the grid; prints the file and the tags."""
    from ..demo.grid import CELLS, compose, render_cell

    check_steps(args.steps)
    if args.out.suffix.lower() != ".png":
        raise LoraError(f"--out {args.out}: the grid is a PNG image; give a file name ending in .png "
                        f"(e.g. {args.out.with_suffix('.png').name}).")
    check_writable(args.out)
    start = time.time()
    pipe, lora_dir = _load_kit()
    seeds = [args.seed + k for k in range(SEEDS_PER_CELL)]
    images = [render_cell(pipe, cell, lora_dir, seeds, args.steps) for cell in CELLS]
    title = f"lora-syntax demo: tiny SD1.5-architecture model, seeds {seeds[0]}-{seeds[-1]}, {args.steps} steps"
    sheet = compose(CELLS, images, title=title)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.out, format="PNG")
    except OSError as error:
        raise saved(args.out) from error
    for index, cell in enumerate(CELLS, 1):
        print(f"{index:2d}. {cell.tags:<60} {cell.shows}")
    for warning in schedule_warnings(CELLS, args.steps):
        print(f"warning: {warning}")
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {len(CELLS)} cells) in {time.time() - start:.1f}s")
    return 0


def schedule_warnings(cells, steps: int) -> list[str]:
    """The plan's notes on each cell's schedules over ``steps`` (a keyframe past the last step: with few steps
    a stepwise cell's caption describes a change that was not rendered)."""
    from ..plan import build_plan

    found = []
    for index, cell in enumerate(cells, 1):
        plan = build_plan(cell.prompt, steps)
        found += [f"cell {index}: {w}" for w in plan.warnings if w not in plan.stack_warnings]
    return found
