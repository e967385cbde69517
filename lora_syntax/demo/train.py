"""Regenerate the whole demo kit from a seed: data, base model (VAE, text encoder, UNet) and the demo LoRAs.

Entry point: ``python tools/train_demo.py [--seed 0] [--out lora_syntax/demo/kit] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import KIT_DIR, data
from . import model as parts
from .kit_files import LoraCard, kohya_metadata, write_lora
from .lora_train import TE_TARGETS, UNET_TARGETS, fit_lora, kohya_state_dict, wrapped
from .render import sample, strip
from .train_base import Budget, train_denoiser, train_vae


@dataclass(frozen=True)
class LoraRecipe:
    """One demo LoRA: its card, its data (shapes + transform), whether it also trains the text encoder,
    and the share of ordinary base images mixed in so that it only fires on its trigger."""

    card: LoraCard
    shapes: tuple[str, ...]
    transform: Callable[[np.ndarray], np.ndarray]
    train_te: bool
    prior_share: float
    preview_prompt: str


RECIPES = (
    LoraRecipe(LoraCard("sepia", "Sepia (style)", "Style: sepia toning, warm browns instead of colours.", "", 1.0,
                        4, 4.0, 10, "Always on; no trigger word. Statistic: warmth = mean(R - B)."),
               data.BASE_SHAPES, data.sepia, False, 0.0, "a blue circle on a white background"),
    LoraRecipe(LoraCard("zorbstar", "Zorbstar (subject)", "Subject: a five-pointed star the base model never saw.",
                        data.TRIGGER, 1.0, 8, 8.0, 10,
                        "Needs its trigger word 'zorbstar' in place of a shape. Statistic: star template score."),
               (data.STAR_SHAPE,), data.identity, True, 0.4, "a red zorbstar on a white background"),
    LoraRecipe(LoraCard("night", "Night (mood)", "Mood: dim night-time light with a dark vignette.", "", 0.8,
                        4, 4.0, 10, "Always on; no trigger word. Statistic: mean brightness."),
               data.BASE_SHAPES, data.night, False, 0.0, "a yellow square on a white background"),
)


def _seeded(seed: int) -> tuple[np.random.Generator, torch.Generator]:
    torch.manual_seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def _lora_data(recipe: LoraRecipe, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, list[str]]:
    new = int(round(count * (1 - recipe.prior_share)))
    images, captions = data.make_dataset(rng, new, recipe.shapes, recipe.transform)
    if count > new:
        prior, prior_captions = data.make_dataset(rng, count - new)
        images, captions = np.concatenate([images, prior]), captions + prior_captions
    return torch.from_numpy(images), captions


def train_lora(pipe, recipe: LoraRecipe, budget: Budget, seed: int, out: Path, log: Callable[[str], None]) -> Path:
    """Train one recipe on the frozen pipeline and write its kohya file, sidecar and preview."""
    rng, gen = _seeded(seed)
    images, captions = _lora_data(recipe, rng, max(64, budget.images // 4))
    card = recipe.card
    log(f"lora {card.name}: {len(captions)} images")
    te_targets = TE_TARGETS if recipe.train_te else ()
    with wrapped(pipe.unet, "lora_unet_", UNET_TARGETS, card.rank, card.alpha, gen) as loras:
        with wrapped(pipe.text_encoder, "lora_te_", te_targets, card.rank, card.alpha, gen) as te_loras:
            both = {**loras, **te_loras}
            fit_lora(pipe, images, captions, both, budget, gen, log)
            preview = strip([sample(pipe, recipe.preview_prompt, seed=s) for s in range(3)], scale=4)
            tensors = kohya_state_dict(both)
    own = int(round(len(captions) * (1 - recipe.prior_share)))  # the recipe's own images come first
    meta = kohya_metadata(card, captions[:own], budget.lora_steps, seed)
    return write_lora(out, card, tensors, meta, preview)


def train_base(out: Path, budget: Budget, seed: int, log: Callable[[str], None]) -> None:
    """Generate the base data set, train VAE, text encoder and UNet, and save them to ``out/model``."""
    rng, gen = _seeded(seed)
    images_np, captions = data.make_dataset(rng, budget.images)
    images = torch.from_numpy(images_np)
    vae = train_vae(images, budget, gen, log)
    tokenizer = parts.build_tokenizer()
    text_encoder, unet = train_denoiser(vae, tokenizer, images, captions, budget, gen, log)
    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    parts.save_pipeline(model_dir, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)


def train_loras(out: Path, budget: Budget, seed: int, log: Callable[[str], None]) -> None:
    """Train every recipe on the frozen model in ``out/model``; each LoRA has its own seed (seed + 1 + i),
    so this phase gives the same files whether or not the base was trained in the same process."""
    pipe = parts.load_pipeline(out / "model")
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        module.requires_grad_(False)
    for index, recipe in enumerate(RECIPES):
        train_lora(pipe, recipe, budget, seed + 1 + index, out / "loras", log)


def train_kit(out: Path, *, seed: int = 0, quick: bool = False, loras_only: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Build the kit into ``out`` (``model/`` and ``loras/``); returns a summary with timings."""
    torch.set_num_threads(1)  # on a shared 2-core CPU two threads thrash: 1 thread was 3-10x faster
    budget, started = Budget.for_mode(quick), time.time()
    if not loras_only:
        train_base(out, budget, seed, log)
    base_done = time.time() - started
    train_loras(out, budget, seed, log)
    summary = {"seed": seed, "quick": quick, "budget": asdict(budget), "base_seconds": round(base_done),
               "lora_seconds": round(time.time() - started - base_done)}
    previous = out / "TRAINING.json"
    if loras_only and previous.is_file():
        summary["base_seconds"] = json.loads(previous.read_text()).get("base_seconds")
    previous.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry used by ``tools/train_demo.py``."""
    parser = argparse.ArgumentParser(description="Regenerate the lora-syntax demo kit from a seed.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=KIT_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny budget: a smoke run in under a minute")
    parser.add_argument("--loras-only", action="store_true",
                        help="keep OUT/model and retrain only the LoRAs (same files as a full run)")
    args = parser.parse_args(argv)
    if args.loras_only and not (args.out / "model" / "model_index.json").is_file():
        parser.error(f"--loras-only: no model at {args.out / 'model'}; run without --loras-only first")
    summary = train_kit(args.out, seed=args.seed, quick=args.quick, loras_only=args.loras_only,
                        log=lambda m: print(m, flush=True))
    print(json.dumps(summary))
    return 0
