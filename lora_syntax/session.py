"""One model's LoRA state across generations, driven by any host through three calls: start, step, end.

A host (diffusers, SD.Next, A1111/Forge) owns the sampling loop; the session owns everything else:

    run = session.start(prompt, steps)      # plan, resolve, load, write the step-1 weights
    for step in 1..steps:                   # plan steps are 1-based, counted in the pass being sampled
        change = run.step(step)             # weights of that step (writes only at change points)
        if change.reencode: ...             # a text-encoder weight changed: the host re-encodes its prompt
    run.end()                               # originals back, bit for bit (also on error or interrupt)

A second pass of the same generation (a hires fix, a refiner) calls :meth:`EngineRun.begin_pass` with its own
step count: the same tags, the plan re-computed for that many steps.

Only one run is active on a session at a time: starting another while one is active raises
:class:`LoraSessionBusyError` instead of silently dropping the first run's stack. While any module is
patched, a ``load_state_dict`` into it (a checkpoint reload, a refiner swap) first gives every original
tensor back, so the host's new weights land in the model's own tensors and never in our buffers.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import LoraApplyError, LoraError
from .keymaps.tree import TEXT_ENCODERS, ModelTree
from .patcher import ApplyReport, Patcher
from .plan import Plan, build_plan
from .stack import StackEntry, module_stacks, resolve_stack


class LoraSessionBusyError(LoraError):
    """A run is already active on this model (a nested ``activate``, a second generation at once)."""


@dataclass(frozen=True)
class Reweight:
    """One change point during sampling: the step it prepared and what it cost."""

    step: int
    modules: int
    seconds: float
    reencode_seconds: float = 0.0


@dataclass
class RunTimings:
    """Seconds spent by the engine in one generation (filled in as the run goes)."""

    load: float = 0.0          # resolving names, loading LoRA files (cached across runs), the per-module
                               # stacks and their checks, and the restore guard: the host work around a write
    apply: float = 0.0         # writing the step-1 weights
    applied_modules: int = 0   # modules written for step 1 (0 when a kept run already holds them)
    reweights: list[Reweight] = field(default_factory=list)
    restore: float = 0.0
    backup_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the hosts' "last run" report)."""
        return {"load_ms": round(self.load * 1e3, 2), "apply_ms": round(self.apply * 1e3, 2),
                "applied_modules": self.applied_modules, "restore_ms": round(self.restore * 1e3, 2),
                "extra_bytes": self.backup_bytes,
                "change_points": [{"step": r.step, "modules": r.modules, "ms": round(r.seconds * 1e3, 2),
                                   "reencode_ms": round(r.reencode_seconds * 1e3, 2)} for r in self.reweights]}


@dataclass(frozen=True)
class StepChange:
    """What :meth:`EngineRun.step` did: the modules it wrote, and whether the prompt must be re-encoded."""

    step: int
    modules: int
    reencode: bool


class EngineRun:
    """An active generation on a session: its plan, change points and timings."""

    def __init__(self, session: EngineSession, source: Any, plan: Plan, warnings: tuple[str, ...],
                 timings: RunTimings) -> None:
        self.session = session
        self.source = source          # the prompt the plan came from (text or parsed): a later pass re-plans it
        self.plan = plan
        self.warnings = warnings
        self.timings = timings
        self.passes: list[int] = [plan.steps]
        self._set_points()

    def _set_points(self) -> None:
        stacks = self.session.patcher.stacks
        self.change_points: tuple[int, ...] = self.session.patcher.change_points()
        self.te_change_points: tuple[int, ...] = tuple(sorted(
            {s for st in stacks if st.target.component in TEXT_ENCODERS for s in st.change_points()}))
        self._encoded_segment = 0    # conditioning the host holds: encoded with step-1 text-encoder weights
        self._current: int = 1

    @property
    def active(self) -> bool:
        return self.session.active is self

    @property
    def prompt(self) -> str:
        """The prompt without its LoRA tags (what the host encodes)."""
        return self.plan.prompt

    def te_segment(self, step: int) -> int:
        """Which constant stretch of text-encoder weights ``step`` is in (0 = the step-1 weights)."""
        return bisect.bisect_right(self.te_change_points, step)

    def step(self, step: int) -> StepChange:
        """Make the model hold the weights of 1-based ``step``; tell whether the conditioning is stale.

        Idempotent and order-free (a second-order sampler's second call, a jump back): only modules whose
        weights differ from what they hold are written.
        """
        self._check_active()
        step = max(1, int(step))
        written = 0
        if step != self._current:
            start = time.perf_counter()
            report: ApplyReport = self.session.patcher.apply(step)
            written = report.modules
            self._current = step
            if written:
                self.timings.reweights.append(Reweight(step, written, time.perf_counter() - start))
        return StepChange(step, written, self.te_segment(step) != self._encoded_segment)

    def encoded(self, step: int, seconds: float = 0.0) -> None:
        """The host re-encoded its prompt with the text-encoder weights of ``step``."""
        self._encoded_segment = self.te_segment(step)
        if seconds and self.timings.reweights and self.timings.reweights[-1].step == step:
            last = self.timings.reweights[-1]
            self.timings.reweights[-1] = Reweight(last.step, last.modules, last.seconds, seconds)

    def begin_pass(self, steps: int) -> None:
        """Start another sampling pass of this generation (hires, refiner) with its own step count."""
        self._check_active()
        if steps != self.plan.steps:
            plan = self.session.plan(self.source, steps)
            entries, _ = resolve_stack(plan, self.session.library, self.session.tree)
            self.plan = plan.touching(touched_components(entries), self.session.components)  # as start() does
            self.session.patcher.load(module_stacks(entries))
        self.session.patcher.apply(1)
        self.passes.append(steps)
        self._set_points()

    def end(self, *, keep: bool = False) -> RunTimings:
        """Finish the run: every original tensor back unless ``keep`` (the next run may re-use the weights)."""
        if self.session.active is self:
            self.session.active = None
            if not keep:
                self.session.restore(self.timings)
        return self.timings

    def _check_active(self) -> None:
        if self.session.active is not self:
            raise LoraError("this LoRA run has ended; start a new one for the next generation")


class EngineSession:
    """A model's patch state: the patcher owning the original weights, the LoRA library, the module tree."""

    def __init__(self, components: Mapping[str, torch.nn.Module], tree: ModelTree, library: Any) -> None:
        self.components = dict(components)
        self.tree = tree
        self.library = library
        self.patcher = Patcher(self.components)
        self.active: EngineRun | None = None
        self._lock = threading.Lock()
        self._guards: list[Any] = []

    @property
    def architecture(self) -> str:
        return self.tree.architecture

    def plan(self, prompt: Any, steps: int) -> Plan:
        """The plan of ``prompt`` (text or a parsed prompt) for a ``steps``-step pass on this model."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:   # a LoraError, as the docs promise
            raise LoraApplyError(f"steps must be a whole number of sampling steps, 1 or more, not {steps!r}.")
        return build_plan(prompt, steps, architecture=self.architecture)

    def start(self, prompt: Any, steps: int) -> EngineRun:
        """Plan, resolve and load the stack of ``prompt`` and write its step-1 weights.

        ``prompt`` is text or a :class:`~lora_syntax.syntax.ParsedPrompt` (hosts that skip bad tags parse
        with ``on_error="skip"`` first). Errors are :class:`LoraError`s and leave the model restored.
        """
        with self._lock:
            self.check_idle()
            timings = RunTimings()
            try:
                plan = self.plan(prompt, steps)
                start = time.perf_counter()
                entries, merge_warnings = resolve_stack(plan, self.library, self.tree)
                plan = plan.touching(touched_components(entries), self.components)
                self.patcher.load(module_stacks(entries))
                timings.load = time.perf_counter() - start
                report = self.patcher.apply(1)
            except BaseException:
                self.restore(timings)
                raise
            timings.apply, timings.applied_modules = report.seconds, report.modules
            timings.backup_bytes = self.patcher.backup_bytes
            start = time.perf_counter()
            self._guard()
            timings.load += time.perf_counter() - start
            run = EngineRun(self, prompt, plan, tuple(dict.fromkeys((*plan.warnings, *merge_warnings))), timings)
            self.active = run
            return run

    def check_idle(self) -> None:
        """Raise :class:`LoraSessionBusyError` while a run is active (nothing may change the weights under it)."""
        active = self.active
        if active is not None:
            raise LoraSessionBusyError(
                f"a generation with the LoRA stack {_tags(active)} is still running on this model; LoRA runs do "
                "not nest. Finish it (leave its `activate` block, or let the host's generation end) first.")

    def restore(self, timings: RunTimings | None = None) -> None:
        """Give every original weight back (bit-exact) and drop the engine's buffers."""
        start = time.perf_counter()
        self._unguard()
        self.patcher.restore()
        if timings is not None:
            timings.restore = time.perf_counter() - start

    # -- restore guard ---------------------------------------------------------------------------
    def _guard(self) -> None:
        """Restore before any state-dict load reaches a patched module (checkpoint reloads, refiner swaps)."""
        self._unguard()
        hook = self._before_load
        self._guards = [module.register_load_state_dict_pre_hook(hook) for module in self.patcher.modules]

    def _unguard(self) -> None:
        for handle in self._guards:
            handle.remove()
        self._guards.clear()

    def _before_load(self, *_: Any, **__: Any) -> None:
        self.active = None
        self.restore()


def touched_components(entries: Sequence[StackEntry]) -> Callable[[Any], frozenset[str]]:
    """Plan entry -> the components its file has keys for (a LoRA at weight 0 is not loaded: it touches none)."""
    by_plan = {id(plan): frozenset(p.target.component for p in entry.loaded.patches)
               for entry in entries for plan in entry.plans}
    return lambda lora: by_plan.get(id(lora), frozenset())


def _tags(run: EngineRun) -> str:
    names = ", ".join(f"<lora:{lora.name}>" for lora in run.plan.loras) or "(no LoRA)"
    return names if len(names) < 200 else names[:197] + "..."
