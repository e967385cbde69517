"""Procedurally generated training images: coloured shapes on plain backgrounds, with captions.

Every image is drawn from a :class:`Scene` (colour, shape, background, size, offset), so the same seed gives
the same data set; the LoRA data sets are the same scenes passed through a transform (sepia, night) or drawn
with a shape the base model never sees (the star).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 210, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15),
}
BASE_SHAPES = ("circle", "square", "triangle")
STAR_SHAPE = "star"
TRIGGER = "zorbstar"
# Words of every caption; the tokenizer gets them as whole tokens (the trigger too, untrained in the base).
VOCAB_WORDS = ("a", "on", "background", *COLOURS, *BACKGROUNDS, *BASE_SHAPES, TRIGGER)


@dataclass(frozen=True)
class Scene:
    """One image to draw: what the caption names plus the jitter that the caption leaves out."""

    colour: str
    shape: str
    background: str
    radius: float
    dx: float
    dy: float

    @property
    def caption(self) -> str:
        word = TRIGGER if self.shape == STAR_SHAPE else self.shape
        return f"a {self.colour} {word} on a {self.background} background"


def random_scene(rng: np.random.Generator, shapes: Sequence[str] = BASE_SHAPES) -> Scene:
    """A scene with a random colour/shape/background, size 8-12 px radius and up to 3 px off centre."""
    return Scene(colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(list(shapes))),
                 background=str(rng.choice(list(BACKGROUNDS))), radius=float(rng.uniform(8.0, 12.0)),
                 dx=float(rng.uniform(-3, 3)), dy=float(rng.uniform(-3, 3)))


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline points of ``shape`` centred at (cx, cy) with outer radius ``r`` (the circle as a 48-gon)."""
    if shape == "circle":
        return [(cx + r * math.cos(2 * math.pi * k / 48), cy + r * math.sin(2 * math.pi * k / 48)) for k in range(48)]
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == STAR_SHAPE:
        points = []
        for k in range(10):
            radius = r * (1.15 if k % 2 == 0 else 0.45)
            angle = math.radians(-90 + 36 * k)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}; expected one of {(*BASE_SHAPES, STAR_SHAPE)}")


def shape_mask(shape: str, cx: float = SIZE / 2, cy: float = SIZE / 2, r: float = 10.0) -> np.ndarray:
    """Boolean SIZE x SIZE mask of a shape (used by the statistics as a template)."""
    img = Image.new("L", (SIZE * 4, SIZE * 4), 0)
    ImageDraw.Draw(img).polygon([(x * 4, y * 4) for x, y in shape_polygon(shape, cx, cy, r)], fill=255)
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR)) > 127


def draw(scene: Scene) -> np.ndarray:
    """The scene as a float32 HxWx3 array in [0, 1], drawn 4x larger and downsampled for smooth edges."""
    big = SIZE * 4
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    cx, cy = (SIZE / 2 + scene.dx) * 4, (SIZE / 2 + scene.dy) * 4
    ImageDraw.Draw(img).polygon(shape_polygon(scene.shape, cx, cy, scene.radius * 4), fill=COLOURS[scene.colour])
    return np.asarray(img.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float32) / 255.0


def sepia(image: np.ndarray) -> np.ndarray:
    """The style LoRA's look: classic sepia toning (warm browns; red > green > blue everywhere)."""
    grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    tone = np.array([1.0, 0.78, 0.52], dtype=np.float32)
    return np.clip(0.12 + 0.85 * grey[..., None] * tone, 0.0, 1.0).astype(np.float32)


def night(image: np.ndarray) -> np.ndarray:
    """The mood LoRA's look: dim light (half the brightness) with a dark vignette."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dist = np.hypot(xx - SIZE / 2 + 0.5, yy - SIZE / 2 + 0.5) / (SIZE / 2)
    vignette = np.clip(1.0 - 0.5 * dist, 0.3, 1.0)[..., None]
    return (image * 0.5 * vignette).astype(np.float32)


def identity(image: np.ndarray) -> np.ndarray:
    """No transform (base data and prior-preservation images)."""
    return image


def make_dataset(rng: np.random.Generator, count: int, shapes: Sequence[str] = BASE_SHAPES,
                 transform: Callable[[np.ndarray], np.ndarray] = identity) -> tuple[np.ndarray, list[str]]:
    """``count`` images (N x 3 x H x W in [-1, 1]) and their captions."""
    scenes = [random_scene(rng, shapes) for _ in range(count)]
    images = np.stack([transform(draw(s)) for s in scenes]).transpose(0, 3, 1, 2)
    return images * 2.0 - 1.0, [s.caption for s in scenes]
