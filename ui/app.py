"""The ``ui`` command: a local Gradio app to write prompts with LoRA tags, see their plan, and generate.

Layout: prompt and negative prompt, steps/seed/size, Generate (with progress), the image; under the
prompts a Plan tab (updated as you type) and the Networks tab. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lora_syntax.errors import LoraError

from . import compat
from .cards import esc
from .networks import NetworksModel, build_networks_tab
from .plan_view import plan_view

# Small demo images are shown scaled up with hard pixels rather than as a blurred thumbnail.
APP_CSS = "#lsx_image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
HELP = "start the web UI (prompt, plan view, Networks tab, generation) on localhost"
DEFAULT_PORT = 7861
DEFAULT_CFG = 7.0  # the guidance scale, as ``generate``'s default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="a diffusers pipeline folder (default: the built-in demo model)")
    parser.add_argument("--lora-dir", type=Path, action="append", default=None, dest="lora_dirs",
                        help="a LoRA folder; repeat for several (default: the demo LoRAs)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")


def architecture_of(class_name: str, text_encoder_width: int | None = None) -> str | None:
    """The model family of a diffusers pipeline class (SD2 differs from SD1.5 by its 1024-wide text encoder)."""
    if "Flux" in class_name:
        return "flux"
    if "XL" in class_name:
        return "sdxl"
    if "StableDiffusion" in class_name:
        return "sd2" if text_encoder_width == 1024 else "sd15"
    return None


def folder_architecture(model_dir: Path) -> str | None:
    """The family of a saved pipeline from its JSON files, so cards are marked before the model loads."""
    try:
        index = json.loads((model_dir / "model_index.json").read_text(encoding="utf-8"))
        encoder = model_dir / "text_encoder" / "config.json"
        width = json.loads(encoder.read_text(encoding="utf-8")).get("hidden_size") if encoder.is_file() else None
    except (OSError, ValueError):
        return None
    return architecture_of(str(index.get("_class_name", "")), width)


def native_size(model_dir: Path, default: int = 512) -> int:
    """The image side a saved SD pipeline was trained at: UNet sample size x the VAE's downscale factor."""
    try:
        unet = json.loads((model_dir / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((model_dir / "vae" / "config.json").read_text(encoding="utf-8"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return default


STEPS_RANGE = (1, 150)  # the Steps box; beyond it the status says so (the box itself does not refuse)


def check_steps(steps: Any) -> int:
    """Steps as typed: a whole number within :data:`STEPS_RANGE`, else a :class:`LoraError` that says so."""
    low, high = STEPS_RANGE
    try:
        value = float(steps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value.is_integer() and low <= value <= high):
        raise LoraError(f"Steps must be a whole number from {low} to {high}, not {steps!r}.")
    return int(value)


def skipped_tags(errors: Sequence[Any]) -> str:
    """Status Markdown for the malformed tags a run skipped: the errors in a code block, so each caret
    line stays under the column it points at."""
    if not errors:
        return ""
    body = "\n\n".join(str(error) for error in errors).replace("```", "` ` `")
    plural = "s" if len(errors) > 1 else ""
    return (f"\n\n**Skipped {len(errors)} malformed tag{plural}** (the other tags were applied):\n"
            f"```text\n{body}\n```")


class Generator:
    """Loads the pipeline on first use (so the UI starts fast) and runs one generation at a time."""

    def __init__(self, model_dir: Path, lora_dirs: Sequence[Path], library: Any = None) -> None:
        self.model_dir = Path(model_dir)
        self.lora_dirs = [Path(d) for d in lora_dirs]
        self.library = library  # shared with the Networks tab, so both see the same scan
        self.pipe: Any = None
        self.lock = threading.Lock()
        self.out_dir: Path | None = None   # a temporary folder for the PNGs served to the page
        self.count = 0

    def load(self) -> Any:
        if self.pipe is None:
            from lora_syntax.commands.generate import quiet_libraries

            if not (self.model_dir / "model_index.json").is_file():
                raise LoraError(f"'{self.model_dir}' is not a diffusers pipeline folder (no model_index.json); "
                                "pass --model with a folder saved by save_pretrained.")
            quiet_libraries()
            from diffusers import DiffusionPipeline

            self.pipe = DiffusionPipeline.from_pretrained(self.model_dir)
            self.pipe.set_progress_bar_config(disable=True)
        return self.pipe

    def architecture(self) -> str | None:
        if self.pipe is None:
            return folder_architecture(self.model_dir)
        width = getattr(getattr(getattr(self.pipe, "text_encoder", None), "config", None), "hidden_size", None)
        return architecture_of(type(self.pipe).__name__, width)

    def _save(self, image: Any, text: str, seed: int) -> Path:
        """The image as a PNG with its infotext, in this app's temporary folder (Gradio serves the file as is)."""
        import tempfile

        from lora_syntax.commands.generate import save_image

        if self.out_dir is None:
            self.out_dir = Path(tempfile.mkdtemp(prefix="lora-syntax-ui-"))
        self.count += 1
        path = self.out_dir / f"{self.count:05d}-{seed}.png"
        save_image(image, path, text)
        return path

    def generate(self, prompt: str, negative: str, steps: Any, seed: int, width: int, height: int,
                 progress: Any = None, cfg: float = DEFAULT_CFG) -> tuple[Path, str, str]:
        """(PNG path, status markdown, infotext) for one run. Malformed tags are skipped and reported, the
        others applied (as the Plan view shows); the PNG carries the infotext ``generate`` writes."""
        import torch

        from lora_syntax.commands.generate import infotext, lora_hashes
        from lora_syntax.hosts.diffusers import activate
        from lora_syntax.library import LoraLibrary
        from lora_syntax.syntax import parse

        steps = check_steps(steps)
        with self.lock:
            started = time.perf_counter()
            first_run = self.pipe is None
            if first_run and progress is not None:
                progress(0, desc="loading model")
            pipe = self.load()
            loaded = time.perf_counter()
            parsed = parse(prompt or "", on_error="skip")
            library = self.library or LoraLibrary(self.lora_dirs)
            with activate(pipe, parsed, lora_dirs=self.lora_dirs, steps=steps, negative_prompt=negative or None,
                          library=library) as run:
                def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
                    tensors = run.callback(pipeline, step, timestep, tensors) if run.callback else tensors
                    if progress is not None:
                        progress((step + 1, steps), desc=f"step {step + 1}/{steps}")
                    return tensors
                sampling = time.perf_counter()
                result = pipe(run.prompt, negative_prompt=run.negative_prompt, num_inference_steps=steps,
                              guidance_scale=cfg, width=int(width), height=int(height),
                              generator=torch.Generator("cpu").manual_seed(int(seed)),
                              callback_on_step_end=on_step,
                              callback_on_step_end_tensor_inputs=list(run.callback_tensor_inputs or ["latents"]))
                sampled = time.perf_counter()
                warnings = list(run.warnings)
            image = result.images[0]
            fields = SimpleNamespace(prompt=prompt or "", negative=negative or "", steps=steps, cfg=cfg,
                                     seed=int(seed))
            text = infotext(fields, pipe, run, image.size, self.model_dir.name, lora_hashes(run.plan, library))
            path = self._save(image, text, int(seed))
            total = time.perf_counter() - started
        names = ", ".join(esc(lora.name) for lora in run.plan.loras) or "none"  # Markdown shows HTML: escape
        notes = "".join(f"\n- {esc(w)}" for w in warnings)
        load_note = f", loading the model {loaded - started:.1f} s" if first_run else ""
        status = (f"Done in {total:.1f} s (sampling {sampled - sampling:.1f} s{load_note}) · LoRAs: {names}"
                  f"{notes}{skipped_tags(parsed.errors)}")
        return path, status, text


def build_app(library: Any, generator: Generator | None, *, title: str = "lora-syntax") -> Any:
    """The Gradio Blocks of the standalone app (not launched)."""
    import gradio as gr

    model_arch = generator.architecture if generator else (lambda: None)
    size = native_size(generator.model_dir) if generator else 512
    networks = NetworksModel(library, model_architecture=model_arch)
    with gr.Blocks(title=title, analytics_enabled=False, **compat.blocks_kwargs(APP_CSS)) as blocks:
        gr.Markdown("## lora-syntax")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="lora_syntax_prompt",
                                    placeholder="a photo of a cat <lora:NAME:0.8>")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="lora_syntax_negative")
                with gr.Row():
                    # a Number, not a Slider: a Slider refuses a typed 500 with a server traceback and no
                    # message; check_steps answers in the status instead
                    steps = gr.Number(value=20, precision=0, label=f"Steps ({STEPS_RANGE[0]}-{STEPS_RANGE[1]})",
                                      elem_id="lsx_steps")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="lsx_seed")
                    width = gr.Slider(32, 1536, value=size, step=8, label="Width", elem_id="lsx_width")
                    height = gr.Slider(32, 1536, value=size, step=8, label="Height", elem_id="lsx_height")
            with gr.Column(scale=2):
                go = gr.Button("Generate", variant="primary", elem_id="lsx_generate")
                image = gr.Image(label="Image", type="filepath", interactive=False, elem_id="lsx_image", height=420)
                status = gr.Markdown("", elem_id="lsx_gen_status")
                parameters = gr.Textbox(label="Parameters (written into the PNG, as `generate` does)", lines=3,
                                        interactive=False, elem_id="lsx_infotext")
        with gr.Tabs():
            with gr.Tab("Plan"):
                with gr.Row():
                    plan_html = gr.HTML(plan_view("", 20)[0], elem_id="lsx_plan")
                    plan_image = gr.Image(label="Schedule", type="pil", interactive=False, elem_id="lsx_plan_plot")
            with gr.Tab("Networks", elem_id="lsx_networks_tab"):
                build_networks_tab(networks, blocks)

        def update_plan(text: str, n: Any) -> tuple[str, Any]:
            try:
                n = check_steps(n)
            except LoraError:
                n = 20  # the Generate button says what is wrong with the steps; the plan keeps showing
            return plan_view(text, n, model_arch(), library)

        for source in (prompt, steps):
            source.change(update_plan, [prompt, steps], [plan_html, plan_image], show_progress="hidden")

        def run_generation(p: str, n: str, s: Any, sd: int, w: int, h: int,
                           progress: Any = gr.Progress()) -> tuple[Any, str, str]:
            if generator is None:
                return None, "**Error:** no model loaded; start the app with `--model DIR`.", ""
            try:
                path, message, text = generator.generate(p, n, s, sd, w, h, progress)
            except LoraError as error:
                return None, f"**Error:** {esc(error)}", ""
            return str(path), message, text

        go.click(run_generation, [prompt, negative, steps, seed, width, height], [image, status, parameters])
    return blocks


def launch(blocks: Any, host: str, port: int) -> None:
    """Serve ``blocks`` in the background (queue on: progress bars need it)."""
    blocks.queue()
    blocks.launch(**compat.launch_kwargs(host, port, css=APP_CSS))


def run(args: argparse.Namespace) -> int:
    """Start the app and serve until interrupted."""
    from lora_syntax.library import LoraLibrary

    if not 0 <= args.port <= 65535:
        raise LoraError(f"--port {args.port}: a port is a number from 0 to 65535 (default {DEFAULT_PORT}).")
    if args.model is not None and not (Path(args.model).is_file() or (Path(args.model) / "model_index.json").is_file()):
        raise LoraError(f"--model {args.model}: no diffusers model folder (with model_index.json) or checkpoint "
                        "file there; pass one, or leave --model out for the demo model.")
    model_dir, lora_dirs = args.model, args.lora_dirs
    if model_dir is None or lora_dirs is None:
        from lora_syntax import demo

        model_dir = model_dir or demo.MODEL_DIR
        lora_dirs = lora_dirs or [demo.LORA_DIR]
    for folder in lora_dirs:
        if not Path(folder).is_dir():
            raise LoraError(f"LoRA folder '{folder}' does not exist; pass --lora-dir with an existing folder "
                            "(without --lora-dir the demo kit's LoRAs are used: build the demo kit first).")
    library = LoraLibrary(lora_dirs)
    blocks = build_app(library, Generator(model_dir, lora_dirs, library))
    launch(blocks, args.host, args.port)
    print(f"lora-syntax UI on http://{args.host}:{args.port}/ (Ctrl+C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        blocks.close()
