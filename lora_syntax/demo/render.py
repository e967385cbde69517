"""Sampling helpers shared by the trainer (previews), the ``demo`` command and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

DEFAULT_STEPS = 12
GUIDANCE = 4.0


def sample_seeds(pipe, prompt: str, seeds: Sequence[int], *, steps: int = DEFAULT_STEPS,
                 guidance: float = GUIDANCE, **call_kwargs: Any) -> list[np.ndarray]:
    """One 32x32 image per seed (float32 HxWx3 in [0, 1]) in one batched pipeline call; image k starts
    from the noise of ``seeds[k]`` alone, so a seed gives the same image in any batch."""
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   num_images_per_prompt=len(gens), output_type="np", **call_kwargs)
    return [np.asarray(image, dtype=np.float32) for image in out.images]


def sample(pipe, prompt: str, *, seed: int, steps: int = DEFAULT_STEPS, guidance: float = GUIDANCE,
           **call_kwargs: Any) -> np.ndarray:
    """One image for one seed (see :func:`sample_seeds`)."""
    return sample_seeds(pipe, prompt, [seed], steps=steps, guidance=guidance, **call_kwargs)[0]


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """A [0, 1] float image as a PIL image, enlarged ``scale`` times with nearest-neighbour pixels."""
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def strip(images: list[np.ndarray], scale: int = 2) -> Image.Image:
    """Images side by side (for previews)."""
    return to_pil(np.concatenate(images, axis=1), scale)
