"""``explain``: show how a prompt's LoRA tags apply over the steps, as a table, JSON or a PNG plot."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..blocks import ARCHITECTURES
from ..errors import LoraSyntaxError
from ..plan import DENOISERS, TEXT_ENCODERS, LoraPlan, Plan, build_plan
from ..syntax import format_schedule, parse

if TYPE_CHECKING:
    from ..library import LoraLibrary

HELP = "Show each LoRA's weight per component and block group over the sampling steps."
SERIES = ("te", "unet.in", "unet.mid", "unet.out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt, with <lora:...> tags")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=None,
                        help="model architecture, for lbw= block vectors and presets")
    parser.add_argument("--lora-dir", action="append", default=None, metavar="DIR", type=Path,
                        help="a folder of LoRA files (repeatable; default: the demo LoRAs): the strength "
                             "warning counts only the components each file has keys for")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--plot", metavar="FILE.png", type=Path, help="also draw the schedule into a PNG")


def series(lora: LoraPlan) -> dict[str, tuple[float, ...]]:
    """The four reported curves: text encoders, and the denoiser's in/mid/out groups.

    A group's lbw multiplier is applied when all its blocks share one; otherwise the curve is the
    group weight before lbw and the block multipliers say the rest.
    """
    encoder = next((c for c in TEXT_ENCODERS if lora.modules is None or c in lora.modules), TEXT_ENCODERS[0])
    out: dict[str, tuple[float, ...]] = {"te": lora.weights(encoder, None)}
    denoiser_on = lora.modules is None or bool(lora.modules & set(DENOISERS))
    for group in ("in", "mid", "out"):
        factor = lora.group_multiplier(group)
        factor = 1.0 if factor is None else factor
        vector = tuple(v * factor for v in lora.group_weights[group])
        out[f"unet.{group}"] = vector if denoiser_on else (0.0,) * lora.steps
    return out


def block_runs(lora: LoraPlan) -> str:
    """``BASE 1, IN00-IN04 1, IN05-IN11 0...``: the lbw multipliers, consecutive equal ones merged."""
    runs: list[list] = []
    for block in lora.lbw_blocks:
        value = lora.block_multipliers.get(block, 1.0)
        same_kind = runs and runs[-1][1][:1] == block[:1] and runs[-1][2] == value
        if same_kind:
            runs[-1][1] = block
        else:
            runs.append([block, block, value])
    return ", ".join((a if a == b else f"{a}-{b}") + f" x{_num(v)}" for a, b, v in runs)


def _num(value: float) -> str:
    text = f"{value:.4g}"
    return "0" if text == "-0" else text


def compress(values: tuple[float, ...]) -> str:
    """``1-5: 0.1, 6-20: 0.6``; linear ramps read ``1-10: 0 -> 1``."""
    parts, i, n = [], 0, len(values)
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        if j == i and i + 2 < n:  # try a linear ramp of 3+ steps
            step = values[i + 1] - values[i]
            while j + 1 < n and abs((values[j + 1] - values[j]) - step) < 1e-9:
                j += 1
            if j - i >= 2:
                parts.append(f"{i + 1}-{j + 1}: {_num(values[i])} -> {_num(values[j])}")
                i = j + 1
                continue
            j = i
        span = f"{i + 1}" if i == j else f"{i + 1}-{j + 1}"
        parts.append(f"{span}: {_num(values[i])}")
        i = j + 1
    return ", ".join(parts)


def _details(lora: LoraPlan) -> list[str]:
    tag, bits = lora.tag, []
    if lora.dyn is not None:
        bits.append(f"dyn={lora.dyn}")
    if lora.modules is not None:
        bits.append("components=" + ",".join(sorted(lora.modules)))
    if tag.lbw is not None:
        bits.append("lbw=" + (tag.lbw.preset or ",".join(_num(v) for v in tag.lbw.values)))
        if lora.lbw_blocks:
            bits.append("blocks: " + block_runs(lora))
            varied = [g for g in ("in", "mid", "out") if lora.group_multiplier(g) is None]
            if varied:
                bits.append(f"(unet.{'/'.join(varied)} below: before the block multipliers, which vary)")
    for key in ("hr", "hrte", "hrunet"):
        if getattr(tag, key) is not None:
            bits.append(f"{key}={format_schedule(getattr(tag, key))} (hires: not planned)")
    if lora.is_zero:
        bits.append("weight 0 everywhere: skipped")
    return bits


def table(plan: Plan) -> str:
    """The human-readable plan."""
    lines = [f"prompt: {plan.prompt!r}", f"steps: {plan.steps}"
             + (f"  architecture: {plan.architecture}" if plan.architecture else "")]
    if not plan.loras:
        lines.append("no LoRA tags")
    for lora in plan.loras:
        lines.append("")
        lines.append(f"{lora.name}   {lora.tag.text}")
        for bit in _details(lora):
            lines.append(f"  {bit}")
        for key, values in series(lora).items():
            lines.append(f"  {key:<9} {compress(values)}")
        if lora.change_points:
            lines.append(f"  changes at steps {', '.join(map(str, lora.change_points))}")
    lines.append("")
    points = ", ".join(map(str, plan.change_points)) or "none"
    lines.append(f"change points: {points}")
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def to_json(plan: Plan) -> dict:
    """``{"prompt", "steps", "loras": [{"name", "tag", "weights": {...}}...]}`` plus extra keys."""
    loras = []
    for lora in plan.loras:
        entry = {"name": lora.name, "tag": lora.tag.text,
                 "weights": {key: list(values) for key, values in series(lora).items()},
                 "dyn": lora.dyn, "change_points": list(lora.change_points), "is_zero": lora.is_zero,
                 "modules": sorted(lora.modules) if lora.modules is not None else None}
        if lora.block_multipliers:
            entry["block_multipliers"] = dict(lora.block_multipliers)
        loras.append(entry)
    return {"prompt": plan.prompt, "steps": plan.steps, "loras": loras,
            "change_points": list(plan.change_points), "warnings": list(plan.warnings),
            "architecture": plan.architecture}


# ---- the plot (Pillow only; imported when --plot is given) ------------------------------------------

_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
            (23, 190, 207), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34)]
_SIZE, _MARGIN = (900, 520), (70, 30, 250, 60)  # width, height; left, top, right, bottom


def _curves(plan: Plan) -> list[tuple[str, tuple[float, ...], tuple[int, int, int], bool, str | None]]:
    """(label, values, colour, dashed, marker): te dashed; in/mid/out merged into one 'unet' line when
    equal, and te folded into it when equal too. Separate in/mid/out lines of one LoRA share its colour
    and differ by their marker (circle, square, diamond).
    """
    curves = []
    names = [lora.name for lora in plan.loras]
    for index, lora in enumerate(plan.loras):
        colour = _PALETTE[index % len(_PALETTE)]
        label = lora.name if names.count(lora.name) == 1 else f"{lora.name} #{names[:index + 1].count(lora.name)}"
        lines = series(lora)
        groups = [lines[f"unet.{g}"] for g in ("in", "mid", "out")]
        if groups[0] == groups[1] == groups[2] == lines["te"]:
            curves.append((f"{label} te+unet", groups[0], colour, False, None))
            continue
        curves.append((f"{label} te", lines["te"], colour, True, None))
        if groups[0] == groups[1] == groups[2]:
            curves.append((f"{label} unet", groups[0], colour, False, None))
        else:
            curves += [(f"{label} unet.{g}", v, colour, False, _MARKERS[g])
                       for g, v in zip(("in", "mid", "out"), groups)]
    return curves


def _dashed(draw, points: list[tuple[float, float]], colour, width: int = 2, dash: float = 8.0) -> None:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
        pieces = max(1, int(length // dash))
        for k in range(0, pieces, 2):
            a, b = k / pieces, min(1.0, (k + 1) / pieces)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                      fill=colour, width=width)


_MARKERS = {"in": "circle", "mid": "square", "out": "diamond"}


def _marker(draw, point: tuple[float, float], shape: str, colour, r: float = 3.5) -> None:
    x, y = point
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, fill="white", width=2)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], outline=colour, fill="white", width=2)
    else:
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], outline=colour,
                     fill="white")


def _ticks(low: float, high: float) -> list[float]:
    """Round tick values (multiples of 1, 2, 2.5 or 5 x 10^k) inside [low, high], about five of them."""
    raw = (high - low) / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step)
    return [round(k * step, 10) for k in range(first, math.floor(high / step) + 1)]


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_plot(plan: Plan, path: "Path | BinaryIO") -> None:
    """One line per LoRA and component over the steps, with axes, tick labels and a legend."""
    from PIL import Image, ImageDraw
    width, height = _SIZE
    left, top, right, bottom = _MARGIN
    image = Image.new("RGB", _SIZE, "white")
    draw, font = ImageDraw.Draw(image), _font(13)
    curves = _curves(plan)
    values = [v for curve in curves for v in curve[1]] + [0.0, 1.0]
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or 0.1
    low, high = low - pad, high + pad
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    span = plan.steps  # the x axis runs from step 1 to the end of step N: each step is one unit wide

    def xy(step: float, value: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * (step - 1) / span, y0 + (y1 - y0) * (value - low) / (high - low)

    for value in _ticks(low, high):  # horizontal grid and weight ticks
        _, y = xy(1, value)
        draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
        draw.text((x0 - 8, y), _num(round(value, 3)), fill="black", font=font, anchor="rm")
    every = max(1, round(plan.steps / 10))
    for step in sorted({1, plan.steps, *range(every, plan.steps + 1, every)}):
        x, _ = xy(step + 0.5, low)  # the label sits in the middle of its step
        draw.line([(x, y0), (x, y0 + 5)], fill="black")
        draw.text((x, y0 + 8), str(step), fill="black", font=font, anchor="mt")
    draw.line([(x0, y0), (x1, y0)], fill="black", width=1)
    draw.line([(x0, y0), (x0, y1)], fill="black", width=1)
    draw.text(((x0 + x1) / 2, height - 18), "sampling step", fill="black", font=font, anchor="mm")
    draw.text((12, top - 12), "weight", fill="black", font=font, anchor="lm")
    zero = xy(1, 0.0)[1]
    draw.line([(x0, zero), (x1, zero)], fill=(160, 160, 160))
    for index, (label, vector, colour, dashed, shape) in enumerate(curves):
        # a weight holds for a whole step: draw a staircase, markers at the middle of each step
        points = [xy(step + edge, value) for step, value in enumerate(vector, start=1) for edge in (0, 1)]
        if dashed:
            _dashed(draw, points, colour)
        else:
            draw.line(points, fill=colour, width=2)
        if shape:
            middles = [xy(step + 0.5, value) for step, value in enumerate(vector, start=1)]
            for point in middles if len(middles) <= 60 else middles[::len(middles) // 30]:
                _marker(draw, point, shape, colour)
        ly = top + 10 + index * 18  # legend entry
        if ly < height - 10:
            sample = [(x1 + 15, ly), (x1 + 45, ly)]
            _dashed(draw, sample, colour) if dashed else draw.line(sample, fill=colour, width=2)
            if shape:
                _marker(draw, (x1 + 30, ly), shape, colour)
            draw.text((x1 + 52, ly), label[:28], fill="black", font=font, anchor="lm")
    if not curves:
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no LoRA tags", fill="black", font=font, anchor="mm")
    image.save(path, format="PNG")


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        print(f"error: --steps must be 1 or more, not {args.steps}", file=sys.stderr)
        return 2
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        print(f"error: cannot write plot '{args.plot}': the plot is a PNG image; give a file name ending in "
              f".png (e.g. {args.plot.with_suffix('.png').name})", file=sys.stderr)
        return 2
    try:
        plan = build_plan(parse(args.prompt), args.steps, architecture=args.arch)
    except LoraSyntaxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if plan.stack_warnings:  # only that warning depends on the files; reading them costs the torch import
        plan = _library(args.lora_dir).touching(plan)
    if args.plot is not None and not _plot(plan, args.plot):
        return 2
    if args.json:
        print(json.dumps(to_json(plan), ensure_ascii=False))
    else:
        print(table(plan))
        if args.plot is not None:
            print(f"plot written to {args.plot}")
    return 0


def _library(folders: list[Path] | None) -> "LoraLibrary":
    """The LoRA folders given, else the demo's (as ``generate``): their headers say what each file touches."""
    from ..demo import LORA_DIR
    from ..library import LoraLibrary

    return LoraLibrary(folders or ([LORA_DIR] if LORA_DIR.is_dir() else []))


def _plot(plan: Plan, path: Path) -> bool:
    """Draw the plot before printing anything, so that a bad path fails the command with one message
    (a missing folder, no permission...) and no table or JSON a script could take for success."""
    try:
        draw_plot(plan, path)
    except OSError as error:
        print(f"error: cannot write plot '{path}': {error.strerror or error}", file=sys.stderr)
        return False
    return True
