"""Sampling helpers shared by the trainer (previews), the ``demo`` command and the tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

DEFAULT_STEPS = 12
GUIDANCE = 4.0


def sample(pipe, prompt: str, *, seed: int, steps: int = DEFAULT_STEPS, guidance: float = GUIDANCE,
           **call_kwargs: Any) -> np.ndarray:
    """One 32x32 image as float32 HxWx3 in [0, 1]; the same seed gives the same starting noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="np",
                   **call_kwargs)
    return np.asarray(out.images[0], dtype=np.float32)


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """A [0, 1] float image as a PIL image, enlarged ``scale`` times with nearest-neighbour pixels."""
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def strip(images: list[np.ndarray], scale: int = 2) -> Image.Image:
    """Images side by side (for previews)."""
    return to_pil(np.concatenate(images, axis=1), scale)
