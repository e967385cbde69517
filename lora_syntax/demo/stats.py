"""Image statistics that measure what each demo LoRA does (the tests and docs/demo.md quote them).

warmth = mean(R - B); shape warmth = mean(R - B) inside the shape (sepia raises it: the tiny model's
sepia pulls blue shapes towards olive); brightness = mean of Rec.601 luma (night lowers it);
foreground area = share of pixels that stand out from the background (the zorbstar LoRA's thin-armed
shape covers ~35% less than the base's circle); shape scores = best IoU of the foreground mask with each
shape's template; shape colour = the named colour nearest the foreground's mean.
"""

from __future__ import annotations

import functools

import numpy as np

from .data import BASE_SHAPES, COLOURS, SIZE, STAR_SHAPE, shape_mask

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def warmth(image: np.ndarray) -> float:
    """Mean red minus blue over the image (0 for neutral greys, ~0.2 for sepia)."""
    return float((image[..., 0] - image[..., 2]).mean())


def shape_warmth(image: np.ndarray) -> float:
    """Mean red minus blue inside the shape (0 when nothing stands out from the background)."""
    mask = foreground_mask(image)
    return float((image[..., 0] - image[..., 2])[mask].mean()) if mask.sum() >= 10 else 0.0


def foreground_area(image: np.ndarray) -> float:
    """Share of the image that stands out from the background colour."""
    return float(foreground_mask(image).mean())


def brightness(image: np.ndarray) -> float:
    """Mean luma in [0, 1]."""
    return float((image @ LUMA).mean())


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median colour of the 2-pixel border (the shapes never reach it)."""
    border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                             image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    return np.median(border, axis=0)


def foreground_mask(image: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Pixels whose colour is farther than ``threshold`` (RGB distance) from the background colour."""
    return np.linalg.norm(image - background_colour(image), axis=-1) > threshold


@functools.lru_cache(maxsize=None)
def _templates(shape: str) -> np.ndarray:
    """Masks of ``shape`` at every integer offset in [-4, 4] and radii 7-13 (stacked, float)."""
    masks = [shape_mask(shape, SIZE / 2 + dx, SIZE / 2 + dy, r)
             for dx in range(-4, 5) for dy in range(-4, 5) for r in (7.0, 8.5, 10.0, 11.5, 13.0)]
    return np.stack(masks).astype(np.float32)


def shape_scores(image: np.ndarray) -> dict[str, float]:
    """Best template IoU of the foreground for each shape (circle, square, triangle, star)."""
    mask = foreground_mask(image).astype(np.float32)
    scores = {}
    for shape in (*BASE_SHAPES, STAR_SHAPE):
        t = _templates(shape)
        inter = (t * mask).sum(axis=(1, 2))
        union = t.sum(axis=(1, 2)) + mask.sum() - inter
        scores[shape] = float((inter / np.maximum(union, 1.0)).max())
    return scores


def star_score(image: np.ndarray) -> float:
    """How much better the star template fits than the best base shape (> 0: it looks like a star)."""
    scores = shape_scores(image)
    return scores[STAR_SHAPE] - max(scores[s] for s in BASE_SHAPES)


def detected_shape(image: np.ndarray) -> str:
    """The shape whose template fits best."""
    scores = shape_scores(image)
    return max(scores, key=scores.__getitem__)


def shape_colour(image: np.ndarray) -> str:
    """The named colour closest to the mean colour of the foreground ("none" when nothing stands out)."""
    mask = foreground_mask(image)
    if mask.sum() < 10:
        return "none"
    mean = image[mask].mean(axis=0) * 255.0
    return min(COLOURS, key=lambda name: float(np.linalg.norm(mean - np.array(COLOURS[name]))))
