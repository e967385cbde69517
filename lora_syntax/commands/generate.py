"""``generate``: render one image from a prompt with LoRA tags, offline, and say where the time went.

The image is a PNG whose ``parameters`` text chunk follows the web UIs' infotext (prompt, negative
prompt, steps, sampler, CFG, seed, size, model) plus each LoRA's weights over the steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LoraError
from ..hosts.webui import describe, lora_summary  # noqa: F401  (one formula, shared with the web UIs)

HELP = "Generate an image from a prompt with <lora:...> tags (diffusers folder or single-file model, offline)."
DEFAULT_OUT = Path("lora-syntax.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt, with <lora:...> tags")
    parser.add_argument("--model", help="a diffusers folder or a single-file checkpoint (default: the demo model)")
    parser.add_argument("--config", help="for a single-file --model: a local diffusers folder of the same "
                                         "architecture holding its configs (needed offline)")
    parser.add_argument("--lora-dir", action="append", default=None, metavar="DIR",
                        help="a folder of LoRA files (repeatable; default: the demo LoRAs)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output PNG (default {DEFAULT_OUT})")
    parser.add_argument("--negative", default=None, help="negative prompt")
    parser.add_argument("--width", type=int, default=None, help="image width (default: the model's)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: the model's)")
    parser.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    parser.add_argument("--arch", choices=("sd15", "sd2", "sdxl", "flux"), default=None,
                        help="model family, when it cannot be read from the pipeline")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


@dataclass(frozen=True)
class Rendered:
    """One generated image with what produced it."""

    image: Any                 # PIL.Image
    infotext: str
    run: Any                   # hosts.diffusers.ActiveRun
    sample_seconds: float


def _demo_paths() -> tuple[Path, Path]:
    from .. import demo

    return demo.MODEL_DIR, demo.LORA_DIR


def load_pipeline(model: str | Path | None, *, config: str | Path | None = None, device: str | None = None) -> Any:
    """A diffusers pipeline from a folder (``from_pretrained``) or one checkpoint file (``from_single_file``),
    never touching the network."""
    import torch
    from diffusers import DiffusionPipeline

    if model is None:
        model_dir, _ = _demo_paths()
        if not (model_dir / "model_index.json").is_file():
            raise LoraError(f"no --model given and the demo model is missing at {model_dir}; build it with "
                            "`python extension.py demo` or pass --model DIR_OR_FILE.")
        model = model_dir
    path = Path(model).expanduser()
    if path.is_dir():
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    elif path.is_file():
        pipe = _single_file(path, config)
    else:
        raise LoraError(f"--model {model}: no such folder or file; pass a diffusers folder (with "
                        "model_index.json) or a .safetensors checkpoint.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(device)


def _single_file(path: Path, config: str | Path | None) -> Any:
    import diffusers

    class_name = "StableDiffusionPipeline"
    if config is not None:
        index = Path(config) / "model_index.json"
        if not index.is_file():
            raise LoraError(f"--config {config}: no model_index.json there; pass a diffusers folder of the same "
                            "architecture as the checkpoint.")
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", class_name)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise LoraError(f"--config {config}: pipeline class {class_name} cannot load single files.")
    try:
        return cls.from_single_file(str(path), config=None if config is None else str(config),
                                    local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise LoraError(f"--model {path}: loading a single-file checkpoint offline needs the model's configs; "
                        f"pass --config DIR (a local diffusers folder of the same architecture). ({err})") from err


def infotext(args: argparse.Namespace, pipe: Any, run: Any, size: tuple[int, int], model: str) -> str:
    """The A1111-style ``parameters`` text: prompt line, negative line, then ``Key: value`` pairs."""
    fields = {"Steps": args.steps, "Sampler": type(pipe.scheduler).__name__, "CFG scale": f"{args.cfg:g}",
              "Seed": args.seed, "Size": f"{size[0]}x{size[1]}", "Model": model}
    if run.plan.loras:
        fields["LoRA weights"] = json.dumps(lora_summary(run.plan))
    lines = [args.prompt]
    if args.negative:
        lines.append(f"Negative prompt: {args.negative}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def render(pipe: Any, args: argparse.Namespace, lora_dirs: list[Path], model: str = "") -> Rendered:
    """Activate the prompt's stack, sample with the re-weighting callback, restore."""
    import torch

    from ..hosts.diffusers import activate

    with activate(pipe, args.prompt, lora_dirs=lora_dirs, steps=args.steps, negative_prompt=args.negative,
                  architecture=args.arch) as run:
        start = time.perf_counter()
        output = pipe(run.prompt, negative_prompt=args.negative, num_inference_steps=args.steps,
                      guidance_scale=args.cfg, width=args.width, height=args.height,
                      generator=torch.Generator("cpu").manual_seed(args.seed),
                      callback_on_step_end=run.callback, callback_on_step_end_tensor_inputs=run.callback_tensor_inputs)
        seconds = time.perf_counter() - start
    image = output.images[0]
    return Rendered(image, infotext(args, pipe, run, image.size, model), run, seconds)


def save_png(image: Any, path: Path, text: str) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)


def print_timings(load: float, rendered: Rendered, out: Any = None) -> None:
    out = out or sys.stdout
    t = rendered.run.timings
    print(f"load model   {load * 1000:9.1f} ms", file=out)
    print(f"load LoRAs   {t.load * 1000:9.1f} ms", file=out)
    print(f"apply        {t.apply * 1000:9.1f} ms  ({t.applied_modules} modules, "
          f"{t.backup_bytes / 2**20:.1f} MiB held for fused weights)", file=out)
    for r in t.reweights:
        extra = f", re-encode {r.reencode_seconds * 1000:.1f} ms" if r.reencode_seconds else ""
        print(f"re-weight @{r.step:<3} {r.seconds * 1000:7.1f} ms  ({r.modules} modules{extra})", file=out)
    print(f"sampling     {rendered.sample_seconds * 1000:9.1f} ms", file=out)
    print(f"restore      {t.restore * 1000:9.1f} ms", file=out)


def run(args: argparse.Namespace) -> int:
    model_dir, demo_loras = _demo_paths()
    lora_dirs = [Path(d) for d in args.lora_dir] if args.lora_dir else ([demo_loras] if demo_loras.is_dir() else [])
    start = time.perf_counter()
    pipe = load_pipeline(args.model, config=args.config, device=args.device)
    load = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=False, desc="sampling")
    model = Path(args.model).name if args.model else "demo"
    rendered = render(pipe, args, lora_dirs, model)
    save_png(rendered.image, args.out, rendered.infotext)
    for warning in rendered.run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print_timings(load, rendered)
    print(f"wrote {args.out}")
    return 0
