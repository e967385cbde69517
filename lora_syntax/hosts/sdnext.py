"""SD.Next's side of a run, without importing SD.Next: steps, passes and conditioning from its diffusers callback.

SD.Next samples with diffusers pipelines and calls ``callback_on_step_end(pipe, i, t, kwargs)`` after step
index ``i`` (0-based) of the pass being sampled. So that callback writes the weights of plan step ``i + 2``
(1-based), the next step to run; the plan's steps are the steps that pass really samples
(``pipe.num_timesteps``: ``int(steps * strength)`` for img2img and a hires pass).

Passes: after the last step of a pass that another pass follows (hires, refiner), the step-1 weights go back,
so that pass encodes its prompt and starts with them; its first callback starts a new pass of the plan with
its own step count (:meth:`~lora_syntax.session.EngineRun.begin_pass`).

Conditioning: under CFG SD.Next hands the pipeline ``prompt_embeds`` = [negative; positive]. When a
text-encoder weight changes, the host glue re-encodes (with SD.Next's own prompt encoder) and this module
returns the new embeddings in the callback's answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..session import EngineRun

# (pipe, plan step, callback kwargs) -> (prompt_embeds or None, keep): ``keep`` when SD.Next's own callback would put its old
# embeddings back at every later step (no prompt embedder to replace), so ours are handed back each step.
Encoder = Callable[[Any, int, dict], "tuple[torch.Tensor | None, bool]"]


def plan_step(step_index: int) -> int:
    """The 1-based plan step a callback after 0-based step ``step_index`` prepares."""
    return step_index + 2


def guidance_embeds(negative: torch.Tensor | None, positive: torch.Tensor, cfg: bool) -> torch.Tensor:
    """``prompt_embeds`` as an SD pipeline holds them: [negative; positive] under CFG, else positive."""
    if cfg and negative is not None:
        return torch.cat([negative, positive], dim=0)
    return positive


def pass_steps(pipe: Any, fallback: int) -> int:
    """The number of steps the pipeline is sampling in this pass (img2img strength already applied)."""
    total = getattr(pipe, "num_timesteps", None) or getattr(pipe, "_num_timesteps", None)
    return int(total) if total else int(fallback)


@dataclass
class PassState:
    """Where a generation is: which pass, whether its last step has run, the embeddings we hand back."""

    passes: int = 1
    finished: bool = False
    override: torch.Tensor | None = None   # re-encoded prompt_embeds SD.Next's own callback would overwrite


class SdnextRun:
    """Drives an :class:`EngineRun` from SD.Next's step callback (one per generation)."""

    def __init__(self, run: EngineRun, encode: Encoder, *, expected_passes: int = 1) -> None:
        self.run = run
        self.encode = encode
        self.expected_passes = expected_passes
        self.state = PassState()

    def on_step_end(self, pipe: Any, step_index: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        """After SD.Next's callback: re-weight for the next step, hand back new embeddings when stale."""
        if not self.run.active:
            return kwargs
        total = pass_steps(pipe, self.run.plan.steps)
        if self.state.finished or (step_index == 0 and total != self.run.plan.steps):
            self._new_pass(total)
        if step_index + 1 >= total:
            self.state.finished = True
            self.state.override = None
            if self.state.passes < self.expected_passes:
                self.run.step(1)
                self.run.encoded(1)     # the next pass encodes its prompt itself, with the step-1 weights
            return kwargs
        step = plan_step(step_index)
        change = self.run.step(step)
        if change.reencode and "prompt_embeds" in kwargs:
            start = time.perf_counter()
            with torch.no_grad():
                embeds, keep = self.encode(pipe, step, kwargs)
            if embeds is not None:
                kwargs["prompt_embeds"] = embeds.to(kwargs["prompt_embeds"].dtype)
                self.state.override = kwargs["prompt_embeds"] if keep else None
            self.run.encoded(step, time.perf_counter() - start)
        elif self.state.override is not None and "prompt_embeds" in kwargs \
                and self.state.override.shape == kwargs["prompt_embeds"].shape:
            kwargs["prompt_embeds"] = self.state.override
        return kwargs

    def _new_pass(self, total: int) -> None:
        if self.state.finished:
            self.state.passes += 1
            self.run.begin_pass(total)
        else:   # the first pass samples fewer steps than requested (img2img strength): re-plan it
            self.run.begin_pass(total)
            self.run.passes.pop(0)
        self.state.finished = False
        self.state.override = None
