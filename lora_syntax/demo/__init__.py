"""The built-in demo kit: a tiny trained SD1.5-architecture model and demo LoRAs shipped in the repository.

The kit is produced by ``tools/train_demo.py`` (see ``lora_syntax/demo/train.py``) from a seed, so a fresh
machine with no network can still show what the prompt syntax does.
"""

from __future__ import annotations

from pathlib import Path

KIT_DIR: Path = Path(__file__).resolve().parent / "kit"
MODEL_DIR: Path = KIT_DIR / "model"
LORA_DIR: Path = KIT_DIR / "loras"
DEMO_MODEL_NAME = "lora-syntax-demo-tiny-sd15"  # the demo LoRAs' ss_sd_model_name: inspect maps them onto MODEL_DIR

__all__ = ["DEMO_MODEL_NAME", "KIT_DIR", "LORA_DIR", "MODEL_DIR"]
