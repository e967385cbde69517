"""A1111 / SD.Next hook: adds the lora-syntax Networks tab through the host's ``on_ui_tabs`` callback.

The only file of the project that imports the host's ``modules``. Imported anywhere else (tests, a
plain Python), it finds no host and does nothing. Cards insert into the host's prompt boxes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TAB_TITLE = "LoRA Networks"
TAB_ID = "lora_syntax_networks"
HOST_TARGETS = ("txt2img_prompt", "txt2img_neg_prompt", "img2img_prompt", "img2img_neg_prompt")

try:  # present only inside a web-UI host
    from modules import script_callbacks, shared
except ImportError:
    script_callbacks = shared = None


def lora_folders(host_shared: Any) -> list[Path]:
    """The host's LoRA (and LyCORIS) folders: ``--lora-dir``/``--lyco-dir`` or ``models/Lora``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from lora_syntax.hosts.webui import lora_folders as folders

    models = getattr(host_shared, "models_path", None) or getattr(
        getattr(host_shared, "paths", None), "models_path", None)
    return folders(getattr(host_shared, "cmd_opts", None), models)


def model_architecture(host_shared: Any) -> str | None:
    """The loaded model's family, read without loading one (see ``lora_syntax.hosts.webui``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from lora_syntax.hosts.webui import model_architecture as architecture

    return architecture(host_shared)


def build_tab(host_shared: Any) -> list[tuple[Any, str, str]]:
    """The ``on_ui_tabs`` callback's answer: one Blocks holding the Networks tab."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import gradio as gr

    from lora_syntax.library import LoraLibrary
    from ui.networks import NetworksModel, build_networks_tab

    model = NetworksModel(LoraLibrary(lora_folders(host_shared)), targets=HOST_TARGETS,
                          model_architecture=lambda: model_architecture(host_shared))
    with gr.Blocks(analytics_enabled=False) as blocks:
        build_networks_tab(model, blocks)
    return [(blocks, TAB_TITLE, TAB_ID)]


if script_callbacks is not None:
    script_callbacks.on_ui_tabs(lambda: build_tab(shared))
