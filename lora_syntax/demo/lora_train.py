"""Training of the demo LoRAs on the frozen base: low-rank pairs on Linear layers, exported as kohya keys.

Each wrapped layer computes ``W x + (alpha / rank) * up(down(x))``, which is exactly what a kohya
``lora_down``/``lora_up``/``alpha`` triple means, so the saved file is what was trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .train_base import Budget, _cosine_lr, encode_latents, noisy_batch, tokenize

# Layers the LoRAs train, by the end of their module path (kohya's default attention/feed-forward set).
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


class LoraLinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update (``up`` starts at zero, so training starts at the base)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, gen: torch.Generator):
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, alpha
        self.down = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / base.in_features ** 0.5)
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.T @ self.up.T) * (self.alpha / self.rank)


def kohya_key(prefix: str, model: nn.Module, module_path: str) -> str:
    """kohya's name for a module: ``prefix`` + the path with dots as underscores. transformers 5 names CLIP
    modules ``encoder.layers...``; kohya files spell them as transformers 4 did (``text_model.encoder...``)."""
    if type(model).__name__ == "CLIPTextModel" and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return prefix + module_path.replace(".", "_")


def _targets(model: nn.Module, suffixes: Sequence[str]) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and name.endswith(suffixes)]


@contextmanager
def wrapped(model: nn.Module, prefix: str, suffixes: Sequence[str], rank: int, alpha: float,
            gen: torch.Generator) -> Iterator[dict[str, LoraLinear]]:
    """Swap the target Linears for LoraLinears (keyed by kohya name) and always put the originals back."""
    swapped: dict[str, tuple[nn.Module, str, nn.Linear, LoraLinear]] = {}
    for name in _targets(model, suffixes):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        original = getattr(parent, child)
        lora = LoraLinear(original, rank, alpha, gen)
        setattr(parent, child, lora)
        swapped[kohya_key(prefix, model, name)] = (parent, child, original, lora)
    try:
        yield {key: item[3] for key, item in swapped.items()}
    finally:
        for parent, child, original, _ in swapped.values():
            setattr(parent, child, original)


def kohya_state_dict(loras: dict[str, LoraLinear]) -> dict[str, torch.Tensor]:
    """The trained pairs under kohya names: ``KEY.lora_down.weight``, ``KEY.lora_up.weight``, ``KEY.alpha``."""
    out: dict[str, torch.Tensor] = {}
    for key, lora in sorted(loras.items()):
        out[f"{key}.lora_down.weight"] = lora.down.detach().clone().contiguous()
        out[f"{key}.lora_up.weight"] = lora.up.detach().clone().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(lora.alpha))
    return out


def fit_lora(pipe, images: torch.Tensor, captions: list[str], loras: dict[str, LoraLinear], budget: Budget,
             gen: torch.Generator, log: Callable[[str], None], lr: float = 4e-3) -> None:
    """Train only the LoRA pairs with the base denoising objective on (images, captions)."""
    from diffusers import DDPMScheduler

    from . import model as parts

    scheduler = DDPMScheduler(**parts.SCHEDULE)
    latents = encode_latents(pipe.vae, images)
    ids = tokenize(pipe.tokenizer, captions)
    params = [p for lora in loras.values() for p in (lora.down, lora.up)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = time.time()
    for step in range(budget.lora_steps):
        _cosine_lr(opt, lr, step, budget.lora_steps, warmup=20)
        index = torch.randint(0, len(images), (budget.lora_batch,), generator=gen)
        noisy, t, noise = noisy_batch(latents, index, pipe.vae.config.scaling_factor, scheduler, gen)
        pred = pipe.unet(noisy, t, pipe.text_encoder(ids[index])[0]).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == budget.lora_steps - 1:
            log(f"  lora step {step}: loss {loss.item():.4f} ({time.time() - start:.0f}s)")
