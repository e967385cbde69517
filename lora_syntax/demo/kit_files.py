"""Writing a demo LoRA as a real kohya file: safetensors with ss_* and modelspec.* metadata, an A1111
sidecar (``NAME.json``) and a preview (``NAME.preview.png``)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from . import DEMO_MODEL_NAME

STOP_WORDS = {"a", "on", "background"}


@dataclass(frozen=True)
class LoraCard:
    """What a demo LoRA is, for its metadata and sidecar."""

    name: str
    title: str
    description: str
    trigger: str
    preferred_weight: float
    rank: int
    alpha: float
    repeats: int
    notes: str


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """Word counts of the captions, the way kohya counts caption tags (stop words left out)."""
    return dict(Counter(w for c in captions for w in c.split() if w not in STOP_WORDS).most_common())


def kohya_metadata(card: LoraCard, captions: list[str], steps: int, seed: int) -> dict[str, str]:
    """The string->string header kohya's sd-scripts writes (the subset readers use) plus SAI modelspec."""
    folder = f"{card.repeats}_{card.trigger or card.name}"
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(card.rank),
        "ss_network_alpha": str(card.alpha), "ss_base_model_version": "sd_v1", "ss_v2": "False",
        "ss_output_name": card.name, "ss_training_comment": card.description,
        "ss_tag_frequency": json.dumps({folder: tag_frequency(captions)}),
        "ss_num_train_images": str(len(captions)), "ss_max_train_steps": str(steps), "ss_seed": str(seed),
        "ss_resolution": "(32, 32)", "ss_sd_model_name": DEMO_MODEL_NAME,
        "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": card.title, "modelspec.description": card.description,
        "modelspec.trigger_phrase": card.trigger, "modelspec.resolution": "32x32",
        "modelspec.date": "2026-11-23",
    }


def sidecar(card: LoraCard) -> dict[str, object]:
    """The A1111 ``NAME.json`` user metadata (what the Lora tab's edit dialog saves)."""
    return {"description": card.description, "sd version": "SD1", "activation text": card.trigger,
            "preferred weight": card.preferred_weight, "negative text": "", "notes": card.notes}


def write_lora(folder: Path, card: LoraCard, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
               preview: Image.Image) -> Path:
    """Save ``NAME.safetensors`` (fp32, as trained; a few hundred KB), ``NAME.json`` and ``NAME.preview.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{card.name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    (folder / f"{card.name}.json").write_text(json.dumps(sidecar(card), indent=2) + "\n", encoding="utf-8")
    preview.save(folder / f"{card.name}.preview.png")
    return path
