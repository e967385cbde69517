"""The diffusers host: apply a prompt's LoRA stack to a pipeline for one generation, re-weight it per step.

    with activate(pipe, "a cat <lora:ink:0.8>", lora_dirs=["loras"], steps=20) as run:
        image = pipe(run.prompt, num_inference_steps=20, callback_on_step_end=run.callback,
                     callback_on_step_end_tensor_inputs=run.callback_tensor_inputs).images[0]

Step numbering: diffusers calls ``callback_on_step_end`` after step index i (0-based), so that callback
writes the weights of plan step i + 2 (1-based), the next step to run. When a text-encoder weight
changes there, the prompt is re-encoded with the new weights and the new embeddings are returned
through ``callback_kwargs`` (SD: ``prompt_embeds`` with CFG halves; SDXL: also ``add_text_embeds``;
FLUX: only the T5 ``prompt_embeds`` — the pooled CLIP vector cannot be replaced mid-run).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import LoraApplyError
from ..keymaps.build import tree_from_pipeline
from ..keymaps.tree import pipeline_components
from ..plan import Plan
from ..session import EngineRun, EngineSession, Reweight, RunTimings
from ..syntax import strip_negative

__all__ = ["ActiveRun", "LoraSession", "Reweight", "RunTimings", "activate", "generate", "restore", "session_for"]

SESSION_ATTRIBUTE = "_lora_syntax_session"


@dataclass
class ActiveRun:
    """What a pipeline call needs while a stack is active: pass ``prompt``, ``callback`` and
    ``callback_tensor_inputs`` to the pipeline."""

    prompt: str
    plan: Plan
    callback: Callable[..., dict]
    callback_tensor_inputs: list[str]
    warnings: tuple[str, ...]
    timings: RunTimings
    negative_prompt: str | None = None   # the negative prompt to pass, without LoRA tags (never applied)


def _flavour(pipe: object) -> str:
    name = type(pipe).__name__
    if "Flux" in name:
        return "flux"
    if "XL" in name:
        return "sdxl"
    return "sd"


def reencode(pipe: Any, prompt: str, negative_prompt: str | None, kwargs: dict) -> dict[str, torch.Tensor]:
    """Embeddings of ``prompt`` with the text encoders' current weights, shaped like the pipeline's own."""
    flavour = _flavour(pipe)
    device = pipe._execution_device
    current = kwargs["prompt_embeds"]
    if flavour == "flux":
        embeds, _, _ = pipe.encode_prompt(prompt, None, device=device, num_images_per_prompt=current.shape[0],
                                          max_sequence_length=current.shape[1])
        return {"prompt_embeds": embeds.to(current.dtype)}
    cfg = bool(pipe.do_classifier_free_guidance)
    per_prompt = current.shape[0] // (2 if cfg else 1)
    clip_skip = getattr(pipe, "_clip_skip", None)
    if flavour == "sdxl":
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=per_prompt, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt, clip_skip=clip_skip)
        if cfg:
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        return {"prompt_embeds": embeds.to(current.dtype), "add_text_embeds": pooled.to(current.dtype)}
    embeds, negative = pipe.encode_prompt(prompt, device, per_prompt, cfg, negative_prompt, clip_skip=clip_skip)
    if cfg:
        embeds = torch.cat([negative, embeds])
    return {"prompt_embeds": embeds.to(current.dtype)}


def tensor_inputs(pipe: object) -> list[str]:
    """The callback tensor inputs a te re-encode needs on this pipeline."""
    return {"flux": ["prompt_embeds"], "sdxl": ["prompt_embeds", "add_text_embeds"]}.get(_flavour(pipe),
                                                                                        ["prompt_embeds"])


class LoraSession(EngineSession):
    """A pipeline's :class:`~lora_syntax.session.EngineSession`: its text encoders and denoiser, a library, a tree.

    Runs entered with ``keep=True`` leave their weights in place, so the next run with the same stack
    and step-1 weights writes nothing; :meth:`restore` puts the original weights back.
    """

    def __init__(self, pipe: Any, lora_dirs: Sequence[str | Path] = (), *, library: Any = None,
                 architecture: str | None = None) -> None:
        if library is None:
            from ..library import LoraLibrary
            library = LoraLibrary(list(lora_dirs))
        super().__init__(pipeline_components(pipe), tree_from_pipeline(pipe, architecture), library)
        self.pipe = pipe

    @contextlib.contextmanager
    def activate(self, prompt: str, steps: int, *, negative_prompt: str | None = None,
                 keep: bool = False) -> Iterator[ActiveRun]:
        """Apply step-1 weights, yield the run; restore on leaving (unless ``keep``) and always on error."""
        run = self.start(prompt, steps)
        try:
            yield self._active_run(run, *strip_negative(negative_prompt))
        except BaseException:
            run.end()
            raise
        run.end(keep=keep)

    def _active_run(self, run: EngineRun, negative_prompt: str | None, negative_note: str | None) -> ActiveRun:
        warnings = run.warnings + ((negative_note,) if negative_note else ())
        te_changes = run.te_change_points
        if te_changes and _flavour(self.pipe) == "flux" and any(
                st.target.component == "text_encoder" and st.change_points() for st in self.patcher.stacks):
            warnings += ("FLUX: a CLIP (text_encoder) weight schedule changes nothing after step 1: FLUX reads only "
                         "CLIP's pooled vector, which the pipeline takes once (its per-token embeddings come from T5, "
                         "text_encoder_2). Schedule text_encoder_2 instead, or keep the CLIP weight constant.",)
        inputs = tensor_inputs(self.pipe) if te_changes else []
        return ActiveRun(run.prompt, run.plan, _make_callback(run, negative_prompt), inputs, warnings, run.timings,
                         negative_prompt)


def _make_callback(run: EngineRun, negative_prompt: str | None) -> Callable[..., dict]:
    """The ``callback_on_step_end`` of a run: step index i prepares plan step i + 2."""

    def callback(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        step = step_index + 2
        change = run.step(step)
        if not change.reencode or "prompt_embeds" not in callback_kwargs:
            return {}
        start = time.perf_counter()
        with torch.no_grad():
            outputs = reencode(pipe, run.prompt, negative_prompt, callback_kwargs)
        run.encoded(step, time.perf_counter() - start)
        return outputs

    return callback


def session_for(pipe: Any, lora_dirs: Sequence[str | Path] = (), *, library: Any = None,
                architecture: str | None = None) -> LoraSession:
    """The pipeline's session, created on first use and re-used while the folders stay the same."""
    session = getattr(pipe, SESSION_ATTRIBUTE, None)
    wanted = tuple(Path(d).expanduser().absolute() for d in lora_dirs)
    if (session is None or (library is not None and session.library is not library)
            or (library is None and getattr(session.library, "folders", None) != wanted)
            or (architecture is not None and session.architecture != architecture)):
        if session is not None:
            session.check_idle()
            session.restore()
        session = LoraSession(pipe, lora_dirs, library=library, architecture=architecture)
        object.__setattr__(pipe, SESSION_ATTRIBUTE, session)
    return session


@contextlib.contextmanager
def activate(pipe: Any, prompt: str, *, lora_dirs: Sequence[str | Path] = (), steps: int,
             negative_prompt: str | None = None, library: Any = None, architecture: str | None = None,
             keep: bool = False, in_place: bool | None = None) -> Iterator[ActiveRun]:
    """Apply the LoRA tags of ``prompt`` to ``pipe`` for a ``steps``-step run (see the module docstring).

    ``keep=True`` leaves the weights patched after the block so that the next run with the same stack
    costs nothing; call :func:`restore` to undo. ``in_place=True`` writes fused weights into the model's
    own tensors instead of engine buffers (for CUDA graphs; see :class:`~lora_syntax.patcher.Patcher`);
    ``None`` keeps the session's choice (default: buffers). Errors are
    :class:`~lora_syntax.errors.LoraError`s and always leave the model restored.
    """
    session = session_for(pipe, lora_dirs, library=library, architecture=architecture)
    session.check_idle()
    if in_place is not None and session.patcher.in_place != in_place:
        session.restore()   # every module is owned anew in the chosen way
        session.patcher.in_place = in_place
    with session.activate(prompt, steps, negative_prompt=negative_prompt, keep=keep) as run:
        yield run


def restore(pipe: Any) -> None:
    """Put back the original weights of a pipeline patched by a ``keep=True`` run."""
    session = getattr(pipe, SESSION_ATTRIBUTE, None)
    if session is not None:
        session.restore()


def generate(pipe: Any, prompt: str, *, lora_dirs: Sequence[str | Path] = (), steps: int = 30,
             library: Any = None, architecture: str | None = None, **pipe_kwargs: Any) -> Any:
    """One call: activate the prompt's stack, run the pipeline with its callback, restore; returns the
    pipeline's output. ``pipe_kwargs`` go to the pipeline (``negative_prompt``, ``generator``...)."""
    if "num_inference_steps" in pipe_kwargs:   # the pipeline's own name: the plan and callback need the steps
        raise LoraApplyError("generate() takes steps=N, not num_inference_steps=N: the LoRA schedule is planned "
                             "over those steps, and the pipeline is run with them.")
    if "callback_on_step_end" in pipe_kwargs:
        raise LoraApplyError("generate() installs its own callback_on_step_end; use activate() and call your "
                             "callback from run.callback to combine them.")
    with activate(pipe, prompt, lora_dirs=lora_dirs, steps=steps, library=library, architecture=architecture,
                  negative_prompt=pipe_kwargs.get("negative_prompt")) as run:
        extra = list(pipe_kwargs.pop("callback_on_step_end_tensor_inputs", []) or [])
        if "negative_prompt" in pipe_kwargs:
            pipe_kwargs["negative_prompt"] = run.negative_prompt
        inputs = list(dict.fromkeys([*run.callback_tensor_inputs, *extra]))
        return pipe(run.prompt, num_inference_steps=steps, callback_on_step_end=run.callback,
                    callback_on_step_end_tensor_inputs=inputs, **pipe_kwargs)
