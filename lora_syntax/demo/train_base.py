"""Training of the demo base model from scratch: first the VAE, then the text encoder and UNet together.

Denoiser objective (SD1.5's): for latents z0 = vae.encode(x) * scaling_factor, noise e and timestep t,
minimise || unet(sqrt(abar_t) z0 + sqrt(1 - abar_t) e, t, te(caption)) - e ||^2. Captions are dropped to
"" 10% of the time so classifier-free guidance works at sampling time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import model as parts

Log = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    """How much to train; ``quick`` shrinks everything for a smoke run."""

    images: int
    vae_steps: int
    unet_steps: int
    lora_steps: int
    batch: int
    lora_batch: int

    @classmethod
    def for_mode(cls, quick: bool) -> "Budget":
        if quick:
            return cls(images=64, vae_steps=8, unet_steps=8, lora_steps=4, batch=8, lora_batch=8)
        return cls(images=3000, vae_steps=500, unet_steps=2000, lora_steps=800, batch=32, lora_batch=16)


def _cosine_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int = 50) -> None:
    """Linear warm-up then cosine decay to 5% (short runs need the early large steps)."""
    if step < warmup:
        lr = base_lr * (step + 1) / warmup
    else:
        frac = (step - warmup) / max(1, total - warmup)
        lr = base_lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
    for group in opt.param_groups:
        group["lr"] = lr


def train_vae(images: torch.Tensor, budget: Budget, gen: torch.Generator, log: Log):
    """Fit the tiny AutoencoderKL (L1 + MSE reconstruction, tiny KL) and set its scaling factor."""
    vae = parts.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    start = time.time()
    for step in range(budget.vae_steps):
        _cosine_lr(opt, 2e-3, step, budget.vae_steps)
        batch = images[torch.randint(0, len(images), (budget.batch,), generator=gen)]
        dist = vae.encode(batch).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        loss = (recon - batch).abs().mean() + (recon - batch).pow(2).mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == budget.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def encode_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each image's latent distribution (sampled afresh at every training step)."""
    with torch.no_grad():
        dists = [vae.encode(chunk).latent_dist for chunk in images.split(256)]
    return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, exactly as StableDiffusionPipeline does it."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def noisy_batch(latents: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor, scale: float, scheduler,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, noise) for the images at ``index``."""
    mean, std = latents
    z0 = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=gen)) * scale
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=gen)
    return scheduler.add_noise(z0, noise, t), t, noise


def train_denoiser(vae, tokenizer, images: torch.Tensor, captions: list[str], budget: Budget,
                   gen: torch.Generator, log: Log):
    """Train a fresh text encoder and UNet together on the captioned images; returns both."""
    from diffusers import DDPMScheduler

    text_encoder, unet = parts.build_text_encoder(tokenizer), parts.build_unet()
    scheduler = DDPMScheduler(**parts.SCHEDULE)
    latents = encode_latents(vae, images)
    ids, empty = tokenize(tokenizer, captions), tokenize(tokenizer, [""])
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    start = time.time()
    for step in range(budget.unet_steps):
        _cosine_lr(opt, 1e-3, step, budget.unet_steps)
        index = torch.randint(0, len(images), (budget.batch,), generator=gen)
        batch_ids = ids[index].clone()
        batch_ids[torch.rand(len(index), generator=gen) < 0.1] = empty[0]
        noisy, t, noise = noisy_batch(latents, index, vae.config.scaling_factor, scheduler, gen)
        pred = unet(noisy, t, text_encoder(batch_ids)[0]).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == budget.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return text_encoder.eval(), unet.eval()
