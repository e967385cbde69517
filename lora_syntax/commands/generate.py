"""``generate``: render one image from a prompt with LoRA tags, offline, and say where the time went.

The image carries the web UIs' infotext (prompt, negative prompt, steps, sampler by its A1111 name, CFG,
seed, size, model, A1111's ``Lora hashes``) plus each LoRA's weights over the steps: in a PNG's
``parameters`` text chunk, or a JPEG's/WEBP's EXIF UserComment, where A1111 puts it.
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
from ..infotext import lora_summary  # one formula, shared with the web UIs
from .output import check_finite, check_size, check_steps, check_writable, saved

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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output image, .png or .jpg/.jpeg/.webp, with the parameters in it (default {DEFAULT_OUT})")
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
    from diffusers import DiffusionPipeline

    if model is None:
        model_dir, _ = _demo_paths()
        if not (model_dir / "model_index.json").is_file():
            raise LoraError(f"no --model given and the demo model is missing at {model_dir}; build it with "
                            "`python extension.py demo` or pass --model DIR_OR_FILE.")
        model = model_dir
    path = Path(model).expanduser()
    target = _device(device)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise LoraError(f"--model {model}: not a diffusers model folder (it has no model_index.json); pass a "
                            "diffusers folder or a .safetensors checkpoint.")
        try:
            pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise LoraError(f"--model {model}: the model folder cannot be loaded ({err}); it is incomplete or "
                            "damaged.") from err
    elif path.is_file():
        pipe = _single_file(path, config)
    else:
        raise LoraError(f"--model {model}: no such folder or file; pass a diffusers folder (with "
                        "model_index.json) or a .safetensors checkpoint.")
    return pipe.to(target)


def _device(device: str | None) -> Any:
    """The torch device ``--device`` names (default: CUDA when available), checked before a model is loaded."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise LoraError(f"--device {device}: not a torch device; use cpu, cuda or cuda:N.") from err
    if found.type == "cuda" and not torch.cuda.is_available():
        raise LoraError(f"--device {device}: this torch has no CUDA device (torch {torch.__version__}); use cpu.")
    if found.type == "cuda" and (found.index or 0) >= torch.cuda.device_count():
        raise LoraError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices.")
    return found


def _single_file(path: Path, config: str | Path | None) -> Any:
    import diffusers

    class_name = "StableDiffusionPipeline"
    if config is not None:
        index = Path(config) / "model_index.json"
        if not index.is_file():
            raise LoraError(f"--config {config}: no model_index.json there; pass a diffusers folder of the same "
                            "architecture as the checkpoint.")
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", class_name)
    if path.suffix.lower() == ".safetensors":   # a damaged or wrong file is said so, not "needs --config"
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:   # safetensors raises its own error types for a bad header
            raise LoraError(f"--model {path}: not a readable safetensors checkpoint ({err}); the file is damaged "
                            "or is not a model.") from err
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise LoraError(f"--config {config}: pipeline class {class_name} cannot load single files.")
    try:
        return cls.from_single_file(str(path), config=None if config is None else str(config),
                                    local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise LoraError(f"--model {path}: loading a single-file checkpoint offline needs the model's configs; "
                        f"pass --config DIR (a local diffusers folder of the same architecture). ({err})") from err


def describe(vector: tuple[float, ...]) -> str:
    """``0.8`` for a constant weight, ``1@1,0.25@3`` for a schedule (value@first step)."""
    parts = [f"{v:g}@{i}" for i, v in enumerate(vector, start=1) if i == 1 or v != vector[i - 2]]
    return f"{vector[0]:g}" if len(parts) == 1 else ",".join(parts)



# diffusers scheduler class -> the sampler name A1111/Forge write in infotext (and read back).
SAMPLER_NAMES = {
    "DDIMScheduler": "DDIM", "PNDMScheduler": "PLMS", "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler", "EulerAncestralDiscreteScheduler": "Euler a", "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2", "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverMultistepScheduler": "DPM++ 2M", "DPMSolverSDEScheduler": "DPM++ SDE", "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM", "DDPMScheduler": "DDPM", "FlowMatchEulerDiscreteScheduler": "Euler",
}
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def sampler_name(scheduler: Any) -> str:
    """``DDIMScheduler`` -> ``DDIM``; ``DPMSolverMultistepScheduler`` with Karras sigmas -> ``DPM++ 2M Karras``;
    an unknown class -> its name without ``Scheduler``."""
    class_name = type(scheduler).__name__
    config = getattr(scheduler, "config", {}) or {}
    name = SAMPLER_NAMES.get(class_name, class_name.removesuffix("Scheduler"))
    if class_name == "DPMSolverMultistepScheduler" and "sde" in str(config.get("algorithm_type", "")):
        name = "DPM++ 2M SDE"
    return f"{name} Karras" if config.get("use_karras_sigmas") else name


def quote(value: str) -> str:
    """An infotext value: as it is, or JSON-quoted when it holds ``,``, ``:`` or a line break (as A1111 reads)."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def lora_hashes(plan: Any, library: Any) -> str:
    """A1111's ``Lora hashes`` value, ``name: hash12, ...``: each LoRA as written in its tag (``:`` and ``,``
    removed) with the short hash A1111 shows for its file (see :func:`lora_syntax.metadata.short_hash`)."""
    from ..metadata import short_hash

    items = []
    for lora in plan.loras:
        try:
            entry = library.resolve(lora.name)
        except LoraError:
            continue
        items.append(f"{lora.name.replace(':', '').replace(',', '')}: {short_hash(entry.path)}")
    return ", ".join(items)


def infotext(args: argparse.Namespace, pipe: Any, run: Any, size: tuple[int, int], model: str,
             hashes: str = "") -> str:
    """The A1111-style ``parameters`` text: prompt line, negative line, then ``Key: value`` pairs.
    ``args`` needs ``prompt``, ``negative``, ``steps``, ``cfg`` and ``seed`` (the UI passes its own)."""
    fields = {"Steps": args.steps, "Sampler": sampler_name(pipe.scheduler), "CFG scale": f"{args.cfg:g}",
              "Seed": args.seed, "Size": f"{size[0]}x{size[1]}", "Model": model}
    if hashes:
        fields["Lora hashes"] = quote(hashes)
    if run.plan.loras:
        fields["LoRA weights"] = json.dumps(lora_summary(run.plan))
    lines = [args.prompt]
    if run.negative_prompt:
        lines.append(f"Negative prompt: {run.negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def render(pipe: Any, args: argparse.Namespace, lora_dirs: list[Path], model: str = "") -> Rendered:
    """Activate the prompt's stack, sample with the re-weighting callback, restore."""
    import torch

    from ..hosts.diffusers import activate
    from ..library import LoraLibrary

    library = LoraLibrary(lora_dirs)  # shared with the engine, so the hashes are of the files it applied
    with activate(pipe, args.prompt, lora_dirs=lora_dirs, steps=args.steps, negative_prompt=args.negative,
                  architecture=args.arch, library=library) as run:
        start = time.perf_counter()
        width, height = args.width, args.height
        if (width is None) != (height is None):   # diffusers drops both when one is missing: fill in the other
            default_width, default_height = default_size(pipe)
            width, height = width or default_width, height or default_height
        output = pipe(run.prompt, negative_prompt=run.negative_prompt, num_inference_steps=args.steps,
                      guidance_scale=args.cfg, width=width, height=height,
                      generator=torch.Generator("cpu").manual_seed(args.seed),
                      callback_on_step_end=run.callback, callback_on_step_end_tensor_inputs=run.callback_tensor_inputs)
        seconds = time.perf_counter() - start
    image = output.images[0]
    return Rendered(image, infotext(args, pipe, run, image.size, model, lora_hashes(run.plan, library)), run, seconds)


def check_out(path: Path) -> str:
    """The image format for ``--out`` from its suffix; other suffixes are refused (their infotext would be lost)."""
    found = IMAGE_FORMATS.get(path.suffix.lower())
    if found is None:
        raise LoraError(f"--out {path}: cannot write the generation parameters into a '{path.suffix or 'no suffix'}' "
                        "file; use .png (a 'parameters' text chunk) or .jpg/.jpeg/.webp (EXIF UserComment).")
    return found


def save_image(image: Any, path: Path, text: str) -> None:
    """Write ``image`` with its infotext where A1111 reads it: PNG text chunk, JPEG/WEBP EXIF UserComment."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    kind = check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "PNG":
        info = PngInfo()
        info.add_text("parameters", text)
        image.save(path, format=kind, pnginfo=info)
        return
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")  # EXIF's "Unicode" comment
    image.convert("RGB").save(path, format=kind, exif=exif.tobytes(), quality=95)


def default_size(pipe: Any) -> tuple[int, int]:
    """(width, height) the pipeline renders when given neither: its denoiser's sample size in pixels."""
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    unet = getattr(pipe, "unet", None)
    sample = getattr(getattr(unet, "config", None), "sample_size", None) if unet is not None else None
    sample = sample or getattr(pipe, "default_sample_size", None) or 64
    if isinstance(sample, (tuple, list)):
        return int(sample[1]) * scale, int(sample[0]) * scale
    return int(sample) * scale, int(sample) * scale




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


def quiet_libraries() -> None:
    """Keep the console to our own progress and messages: diffusers' and transformers' notices (e.g. "requires
    torchvision") and their loading bars are off; their errors still show. Set before they are imported, so
    notices given at import time are covered too."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def run(args: argparse.Namespace) -> int:
    check_out(args.out)  # before minutes of loading and sampling
    check_writable(args.out)
    check_steps(args.steps)
    check_finite(args.cfg, "--cfg")
    check_size(args.width, "--width")
    check_size(args.height, "--height")
    quiet_libraries()
    model_dir, demo_loras = _demo_paths()
    lora_dirs = [Path(d) for d in args.lora_dir] if args.lora_dir else ([demo_loras] if demo_loras.is_dir() else [])
    start = time.perf_counter()
    pipe = load_pipeline(args.model, config=args.config, device=args.device)
    load = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=False, desc="sampling")
    model = Path(args.model).name if args.model else "demo"
    rendered = render(pipe, args, lora_dirs, model)
    try:
        save_image(rendered.image, args.out, rendered.infotext)
    except OSError as error:
        raise saved(args.out) from error
    for warning in rendered.run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print_timings(load, rendered)
    print(f"wrote {args.out}")
    return 0
