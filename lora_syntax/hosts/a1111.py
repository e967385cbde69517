"""The A1111 family (AUTOMATIC1111 1.9/1.10, Forge): step mapping, conditioning swap, host checks — no host code.

``scripts/lora_syntax_webui.py`` translates the host's events into these calls; everything that can be
decided without the host's ``modules`` lives here, so the SD.Next host and the tests share it.

Steps. The host's ``CFGDenoiser`` counts its own calls (``denoiser.step``, 0-based) and knows the pass's
step count (``denoiser.steps``) and call count (``denoiser.total_steps``: twice the steps for second-order
samplers, which call the denoiser twice per step). The host schedules prompt editing by that call count,
so we do too: call ``i`` runs plan step ``i // (total_steps // steps) + 1``, and the weights of that step
are written before the call (``on_cfg_denoiser`` fires before the model runs). ``shared.state.sampling_step``
is not used: it is set after a step, so steps 0 and 1 both read 0.

Passes. txt2img runs ``steps`` steps; img2img ``int(min(denoising, 0.999) * steps) + 1``
(:func:`pass_steps`); the hires pass is a second pass with its own count (``hr_second_pass_steps`` or
``steps``) and its own schedule: a pass's first denoiser call with another denoiser than the last one
starts a new pass of the plan (:meth:`EngineRun.begin_pass`).

Conditioning. When the text-encoder weights change, the host's prompt is re-encoded by the host's own
machinery (the glue's ``encode``: prompt editing ``[a:b:when]`` and ``AND`` keep working), and from that
step on every denoiser call gets the conds of its call index from that encoding (``select``). The
host's cond cache is never written: the next generation still starts from the step-1 conds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..session import EngineRun

# Weight storage the engine fuses exactly (fp32 sum, one rounding); anything else is refused.
EXACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Attributes quantizing hosts set on their parameters (Forge: bitsandbytes, GGUF).
QUANTIZED_MARKS = ("bnb_quantized", "gguf_cls", "quant_state")

REFUSAL = ("lora-syntax cannot patch this model exactly: its {what} weights are stored as {how}. "
           "The built-in LoRA handler applies the tags instead (per-step weights and block weights are ignored). "
           "Load the model in fp16/bf16/fp32 storage to use lora-syntax.")


def pass_steps(steps: int, *, denoising: float | None = None, fix_steps: bool = False) -> int:
    """Denoiser steps a first pass runs: ``steps`` for txt2img (``denoising`` None) or with the host's
    "img2img: do exactly the amount of steps" option, else ``int(min(denoising, 0.999) * steps) + 1``."""
    if denoising is None or fix_steps:
        return int(steps)
    return int(min(float(denoising), 0.999) * int(steps)) + 1


def plan_step(call: int, steps: int, total_steps: int | None = None) -> int:
    """The 1-based plan step of the denoiser's ``call``-th call (0-based) in a pass of ``steps`` steps."""
    per_step = max(1, int(total_steps or steps) // max(1, int(steps)))
    return int(call) // per_step + 1


def storage_refusal(components: Mapping[str, Any], modules: Iterable[tuple[str, str]] = ()) -> str | None:
    """Why the engine must not patch these components (quantized or fp8 storage), or ``None``.

    ``components`` are the host components (``get_submodule``); ``modules`` the (component, module)
    pairs a stack would touch, or every parameter of each component when empty.
    """
    def reason(param: Any) -> str | None:
        if any(getattr(param, mark, None) is not None for mark in QUANTIZED_MARKS):
            return "quantized tensors (bitsandbytes/GGUF)"
        dtype = getattr(param, "dtype", None)
        if isinstance(dtype, torch.dtype) and dtype not in EXACT_DTYPES:
            return f"{str(dtype).removeprefix('torch.')}"
        return None

    pairs = list(modules)
    if pairs:
        params = ((c, components[c].get_submodule(m).weight) for c, m in pairs)
    else:
        params = ((c, p) for c, comp in components.items() for p in comp.parameters())
    for component, param in params:
        how = reason(param)
        if how:
            return REFUSAL.format(what=component, how=how)
    return None


@dataclass
class CondSwap:
    """What :meth:`StepHook.before_call` decided: the conds to use (``None`` = keep the host's)."""

    step: int
    cond: Any = None
    uncond: Any = None
    replaced: bool = False


class StepHook:
    """Drives an :class:`EngineRun` from the host's denoiser calls.

    ``encode()`` re-encodes the current pass's prompts with the host's machinery (returns an opaque
    "learned conditioning" pair); ``select(encoded, call)`` picks the conds of denoiser call ``call``
    from it (the host's ``reconstruct_multicond_batch`` / ``reconstruct_cond_batch``).
    """

    def __init__(self, run: EngineRun, encode: Callable[[], Any], select: Callable[[Any, int], tuple[Any, Any]]) -> None:
        self.run = run
        self.encode = encode
        self.select = select
        self.passes = 0
        self._denoiser: int | None = None
        self._fresh = True                    # the run's weights are at step 1 of a pass not sampled yet
        self._encoded: dict[int, Any] = {}    # te segment -> the host's conds encoded with its weights
        self.calls: list[int] = []            # plan step of each denoiser call (the last-run report)

    def new_pass(self, steps: int) -> None:
        """A pass announced by the host before its conds are computed (A1111's hires ``activate``)."""
        if self.passes:
            self.run.begin_pass(steps)
        self._fresh = True
        self._encoded.clear()

    def before_call(self, denoiser: object, call: int, steps: int, total_steps: int | None) -> CondSwap:
        """Weights of the step denoiser call ``call`` belongs to; the conds to use if ours differ."""
        if id(denoiser) != self._denoiser:          # first call of a sampling pass
            self._denoiser = id(denoiser)
            if not self._fresh or steps != self.run.plan.steps:
                self.run.begin_pass(steps)
                self._encoded.clear()
            self._fresh = False
            self.passes += 1
        step = plan_step(call, steps, total_steps)
        change = self.run.step(step)
        self.calls.append(step)
        segment = self.run.te_segment(step)
        if segment == 0:
            if change.reencode:
                self.run.encoded(step)
            return CondSwap(step)
        if segment not in self._encoded:
            start = time.perf_counter()
            with torch.no_grad():
                self._encoded[segment] = self.encode()
            self.run.encoded(step, time.perf_counter() - start)
        cond, uncond = self.select(self._encoded[segment], call)
        return CondSwap(step, cond, uncond, True)

