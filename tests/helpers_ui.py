"""Helpers for the UI tests: synthetic kohya-style LoRA folders and a browser launcher."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import torch
from safetensors.torch import save_file

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<img src=x onerror=alert(1)>"


def make_lora(folder: Path, name: str, *, rank: int = 4, width: int = 32, base: str = "sd_v1",
              words: str | None = None,
              tags: dict[str, int] | None = None, preview: tuple[int, int, int] | None = None,
              output_name: str | None = None, user: dict | None = None, trigger: str | None = None) -> Path:
    """Write ``folder/name.safetensors``: a kohya LoRA on one attention projection (``width`` 32 fits the
    tiny SD1.5 pipeline), with kohya metadata, an optional A1111 sidecar ``NAME.json`` and an optional
    solid-colour ``NAME.preview.png``."""
    path = folder / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{key}.lora_down.weight": torch.full((rank, width), 0.01),
               f"{key}.lora_up.weight": torch.full((width, rank), 0.01),
               f"{key}.alpha": torch.tensor(float(rank))}
    frequency = {f"10_{words}" if words else "1_data": tags or {"cat": 5}}
    metadata = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank), "ss_base_model_version": base,
                "ss_sd_model_name": f"{base}-base.safetensors", "ss_network_module": "networks.lora",
                "ss_tag_frequency": json.dumps(frequency)}
    if output_name:
        metadata["ss_output_name"] = output_name
    if trigger is not None:
        metadata["modelspec.trigger_phrase"] = trigger
    save_file(tensors, str(path), metadata=metadata)
    if user is not None:
        path.with_suffix(".json").write_text(json.dumps(user), encoding="utf-8")
    if preview is not None:
        from PIL import Image

        Image.new("RGB", (64, 64), preview).save(folder / f"{Path(name).name}.preview.png")
    return path


def sample_library(folder: Path) -> Path:
    """A folder like a user's: sub-folders, previews, a sidecar, an SDXL LoRA and a hostile file name."""
    # inkwash's dataset folder is its own name (not a trigger word); its trigger phrase says "inkwash"
    make_lora(folder, "inkwash", words="inkwash", tags={"inkwash": 20, "mountain": 7}, preview=(30, 30, 30),
              user={"activation text": "", "preferred weight": 0.8}, trigger="inkwash")
    make_lora(folder / "styles", "watercolor", words="wcstyle", tags={"wcstyle": 12, "flower": 3},
              preview=(70, 130, 200))
    make_lora(folder / "styles", "pixel art", words="pixelart", tags={"pixelart": 9})
    make_lora(folder / "xl", "neon_xl", base="sdxl_base_v1-0", words="neon", tags={"neon": 4})
    make_lora(folder, HOSTILE, words="hostile", tags={"<script>alert(2)</script>": 1})
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_host_modules(lora_dir: Path, architecture_flag: str = "is_sd1") -> dict:
    """Stand-ins for an A1111 host's ``modules`` package: ``script_callbacks`` records ``on_ui_tabs``
    callbacks, ``shared`` names the LoRA folder and the loaded model's family."""
    import types

    callbacks: list = []
    script_callbacks = types.ModuleType("modules.script_callbacks")
    script_callbacks.on_ui_tabs = callbacks.append
    script_callbacks.registered = callbacks
    shared = types.ModuleType("modules.shared")
    shared.cmd_opts = types.SimpleNamespace(lora_dir=str(lora_dir))
    shared.sd_model = types.SimpleNamespace(**{architecture_flag: True})
    package = types.ModuleType("modules")
    package.script_callbacks, package.shared = script_callbacks, shared
    return {"modules": package, "modules.script_callbacks": script_callbacks, "modules.shared": shared}


def load_host_script():
    """Import ``scripts/lora_syntax_script.py`` the way a host does: from its file, by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "lora_syntax_script.py"
    spec = importlib.util.spec_from_file_location("lora_syntax_script_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_fake_host(lora_dir: Path, port: int) -> None:
    """Serve an A1111-like page (txt2img prompt boxes + the tabs extensions add) until killed.

    Run as ``python tests/helpers_ui.py LORA_DIR PORT``, with whichever Gradio that interpreter has.
    """
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.modules.update(fake_host_modules(lora_dir))
    import gradio as gr

    script = load_host_script()
    tabs = [tab for callback in sys.modules["modules.script_callbacks"].registered for tab in callback()]
    with gr.Blocks(analytics_enabled=False) as page:
        with gr.Tabs():
            with gr.Tab("txt2img"):
                gr.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3, interactive=True)
                gr.Textbox(label="Negative prompt", elem_id="txt2img_neg_prompt", lines=2, interactive=True)
            for blocks, title, tab_id in tabs:
                with gr.Tab(title, id=tab_id):
                    blocks.render()
    page.queue()
    from ui import compat

    page.launch(**compat.launch_kwargs("127.0.0.1", port))
    print(f"READY gradio {gr.__version__} {script.TAB_TITLE}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    import sys

    serve_fake_host(Path(sys.argv[1]), int(sys.argv[2]))
