"""The application plan: each LoRA's weight per component, block and step of a run.

Weight of a LoRA on component c, block b, step s (docs/syntax.md):
    text encoders:  te(s) x lbw[BASE]
    denoisers:      group(b)(s) x lbw[b]    group = in/mid/out of block b (unet(s) when b is None)
    te = te= or the strength or 1; unet = unet= or the positional strength or te; in/mid/out = their key or unet;
    components outside ``module=`` (or the other stage of ``high``/``low``) get 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from operator import add
from typing import NamedTuple, Union

from . import blocks
from .errors import LoraSyntaxError
from .schedule import change_steps, peak, resolve
from .syntax.format import format_keyframe
from .syntax.model import BlockWeights, Keyframe, LoraTag, ParsedPrompt, Schedule
from .syntax.parser import parse

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer", "transformer_2")
COMPONENTS = (*TEXT_ENCODERS, *DENOISERS)
GROUPS = ("te", "in", "mid", "out")
#: Total |weight| of all LoRAs on one block group above which the plan warns (artefacts compound).
STACK_WARN_LEVEL = 1.5
_EXPAND = {"te": TEXT_ENCODERS, "unet": DENOISERS, "high": ("transformer",), "low": ("transformer_2",)}
_ONE = Schedule.constant(1.0)
_NO_SCALE = {group: 1.0 for group in GROUPS}


@dataclass(frozen=True)
class _Lbw:
    multipliers: dict[str, float]      # block id -> multiplier (blocks not listed: 1)
    covered: tuple[str, ...]           # the blocks of the architecture the value speaks about
    group_scale: dict[str, float]      # largest |multiplier| per block group, for the stack warning
    fits: bool                         # False: a vector of the wrong length for the architecture
    denoiser_zero: bool = False        # every denoiser block the value covers is 0 (preset NONE...)


def _allowed(tag: LoraTag) -> frozenset[str] | None:
    """Components the tag may touch (None: all)."""
    if tag.modules is None and tag.stage is None:
        return None
    names = set(COMPONENTS)
    if tag.modules is not None:
        names = {c for m in tag.modules for c in _EXPAND.get(m, (m,))}
    if tag.stage is not None:
        keep = "transformer" if tag.stage == "high" else "transformer_2"
        names -= {d for d in DENOISERS if d != keep}
    return frozenset(names)


@lru_cache(maxsize=1024)
def _lbw(lbw: BlockWeights | None, architecture: str | None) -> _Lbw:
    """Block multipliers of an ``lbw=`` value on ``architecture`` (None: guessed, see blocks.py)."""
    if lbw is None:
        return _Lbw({}, (), _NO_SCALE, True)
    if lbw.preset is not None:
        archs = (architecture,) if architecture else ("sd15", "flux")
        mults = {k: v for arch in archs for k, v in blocks.preset_multipliers(lbw.preset, arch).items()}
        covered: tuple[str, ...] = tuple(mults)
    else:
        form = blocks.forms_for(len(lbw.values), architecture)
        if form is None:
            return _Lbw({}, (), _NO_SCALE, False)
        arch = blocks.FORM_BY_LENGTH[len(lbw.values)][0] if architecture is None else architecture
        mults, covered = blocks.vector_multipliers(lbw.values, form), blocks.ARCH_BLOCKS[arch]
    scale = _group_scale(mults, covered)
    zero = bool(covered) and all(mults.get(b, 1.0) == 0 for b in covered if b != "BASE")
    return _Lbw(mults, covered, scale, True, zero)


def _group_scale(mults: dict[str, float], covered: tuple[str, ...]) -> dict[str, float]:
    """Largest |multiplier| per block group (1 for a group lbw does not cover), in one pass over the blocks."""
    peaks: dict[str, float] = {}
    for block in covered:
        group, value = blocks.block_group(block), abs(mults.get(block, 1.0))
        if value > peaks.get(group, -1.0):
            peaks[group] = value
    return {group: peaks.get(group, 1.0) for group in GROUPS}


def _lbw_warning(tag: LoraTag, architecture: str | None) -> str:
    count = len(tag.lbw.values) if tag.lbw else 0
    valid = ", ".join(str(len(blocks.LBW_FORMS[f])) for f in blocks.ARCH_FORMS.get(architecture or "", ()))
    return (f"{short_tag(tag.text)}: lbw has {count} values, which fits no {architecture} form ({valid} values); "
            f"block weights ignored")


@dataclass(frozen=True, eq=False)
class LoraPlan:
    """One tag's weights over a run. ``weight()`` is a cached look-up: the patch engine calls it per module."""

    name: str
    tag: LoraTag = field(compare=False)
    steps: int
    dyn: int | None
    modules: frozenset[str] | None
    group_weights: Mapping[str, tuple[float, ...]] = field(compare=False)  # "te","unet","in","mid","out"
    block_multipliers: dict[str, float] = field(compare=False)
    group_scale: dict[str, float] = field(compare=False)
    lbw_blocks: tuple[str, ...] = field(default=(), compare=False)  # blocks of the architecture lbw spoke of
    change_points: tuple[int, ...] = ()
    is_zero: bool = False
    _cache: dict = field(default_factory=dict, compare=False, repr=False)
    _stack: dict = field(default_factory=dict, compare=False, repr=False)

    def _key(self) -> tuple:  # what equality means: same weights everywhere
        return (tuple(sorted(self.group_weights.items())), tuple(sorted(self.block_multipliers.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoraPlan):
            return NotImplemented
        return (self.name, self.steps, self.dyn, self.modules, self._key()) == (
            other.name, other.steps, other.dyn, other.modules, other._key())

    def __hash__(self) -> int:
        return hash((self.name, self.steps, self.dyn))

    def weights(self, component: str, block: str | None = None) -> tuple[float, ...]:
        """Weights at steps 1..steps for ``component`` (a pipeline attribute) and ``block`` (id or None)."""
        key = (component, block)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._compute(component, block)
        return found

    def weight(self, component: str, block: str | None, step: int) -> float:
        """Weight at 1-based ``step``."""
        if not 1 <= step <= self.steps:
            raise ValueError(f"step {step} is outside 1..{self.steps}")
        return self.weights(component, block)[step - 1]

    def group_multiplier(self, group: str) -> float | None:
        """The lbw multiplier shared by every block of ``group`` (1 without lbw), None if they differ."""
        found = {self.block_multipliers.get(b, 1.0) for b in self.lbw_blocks if blocks.block_group(b) == group}
        return 1.0 if not found else (found.pop() if len(found) == 1 else None)

    def _compute(self, component: str, block: str | None) -> tuple[float, ...]:
        if self.modules is not None and _canonical(component) not in self.modules:
            return (0.0,) * self.steps
        if _is_text_encoder(component):
            return _scaled(self.group_weights["te"], self.block_multipliers.get("BASE", 1.0))
        group = _group_of(block)
        if group is None:   # a module without a block id: the whole-denoiser weight, or 0 where lbw zeroes every block
            if all(self.group_scale.get(g) == 0 for g in ("in", "mid", "out")):
                return (0.0,) * self.steps
            return self.group_weights["unet"]
        vector = self.group_weights[group]
        return _scaled(vector, self.block_multipliers.get(block, 1.0))


_PLAN_FIELDS = tuple(f.name for f in fields(LoraPlan))


@lru_cache(maxsize=512)
def _group_of(block: str | None) -> str | None:
    """in/mid/out of a denoiser block; None (the whole-``unet`` weight) for None, BASE or an unknown id."""
    if block is None:
        return None
    try:
        group = blocks.block_group(block)
    except ValueError:  # a key map with ids this version does not know: use the unet weight, never crash
        return None
    return None if group == "te" else group


def _canonical(component: str) -> str:
    return {"te": "text_encoder", "high": "transformer", "low": "transformer_2"}.get(component, component)


def _is_text_encoder(component: str) -> bool:
    return component == "te" or component.startswith("text_encoder")


def _scaled(vector: tuple[float, ...], factor: float) -> tuple[float, ...]:
    return vector if factor == 1.0 else tuple(v * factor for v in vector)


class _Vectors(Mapping):
    """Group -> weight per step, each expanded on first look-up (``resolve`` caches it per schedule):
    planning a prompt must not pay for 5 x steps floats that the engine may never ask for."""

    __slots__ = ("_schedules", "_steps")

    def __init__(self, schedules: dict[str, Schedule], steps: int) -> None:
        self._schedules, self._steps = schedules, steps

    def __getitem__(self, group: str) -> tuple[float, ...]:
        return resolve(self._schedules[group], self._steps)

    def __iter__(self) -> Iterator[str]:
        return iter(self._schedules)

    def __len__(self) -> int:
        return len(self._schedules)

    def __repr__(self) -> str:
        return repr(dict(self))


class _Core(NamedTuple):
    """What a tag's content gives over a run; shared by every plan of an equal tag (and its weight cache).
    A NamedTuple: immutable like the frozen dataclass it was, and built 3x faster (one per tag, cold)."""

    vectors: Mapping[str, tuple[float, ...]]
    lbw: _Lbw
    allowed: frozenset[str] | None
    points: tuple[int, ...]
    is_zero: bool
    cache: dict
    stack: dict[str, "_StackEntry"]   # group -> its peak and per-step |w| for the stack warning
    notes: tuple[str, ...]            # keyframes that misbehave over this run (the tag's text not included)
    quiet: bool                       # no warning at all (lbw fits, no notes): one test per tag on a warm plan


_CORES: dict[tuple, _Core] = {}
_CORES_MAX = 2048


def _core(tag: LoraTag, steps: int, architecture: str | None) -> _Core:
    key = (tag.content_key(), steps, architecture)
    found = _CORES.get(key)
    if found is not None:
        return found
    te = tag.te or tag.strength or _ONE
    unet = tag.unet or tag.strength or te
    schedules = {"te": te, "unet": unet, "in": tag.in_ or unet, "mid": tag.mid or unet, "out": tag.out or unet}
    lbw = _lbw(tag.lbw, architecture)
    allowed = _allowed(tag)
    te_live = (allowed is None or not allowed.isdisjoint(TEXT_ENCODERS)) and lbw.group_scale["te"] != 0
    unet_live = (allowed is None or not allowed.isdisjoint(DENOISERS)) and not lbw.denoiser_zero
    # a block group lbw multiplies by 0 everywhere weighs nothing, whatever its schedule (is_zero, change points)
    groups = (["te"] if te_live else []) + (["unet"] + [g for g in ("in", "mid", "out") if lbw.group_scale[g] != 0]
                                            if unet_live else [])
    peaks, points, is_zero, in_order = _schedule_facts(schedules, groups, steps)
    if len(_CORES) >= _CORES_MAX:
        _CORES.clear()
    shared: dict[tuple, _StackEntry] = {}
    stack = {group: _stack_entry(group, schedules[group], peaks[id(schedules[group])], steps, lbw, allowed,
                                 is_zero, shared) for group in GROUPS}
    notes = (() if in_order else _keyframe_notes(tag, steps)) + _unused_weight_notes(tag, allowed, steps)
    found = _CORES[key] = _Core(_Vectors(schedules, steps), lbw, allowed, points, is_zero, {}, stack, notes,
                                lbw.fits and not notes)
    return found


_DENOISER_KEYS = (("unet", "unet="), ("in_", "in="), ("mid", "mid="), ("out", "out="))


def _unused_weight_notes(tag: LoraTag, allowed: frozenset[str] | None, steps: int) -> tuple[str, ...]:
    """A non-zero ``te=`` on a tag whose ``module=`` leaves out every text encoder (or a denoiser weight on one
    that leaves out the denoiser) changes nothing: say so rather than ignore it silently."""
    if allowed is None:
        return ()
    chosen = f"module={','.join(tag.modules)}" if tag.modules is not None else str(tag.stage)
    notes = []
    if tag.te is not None and allowed.isdisjoint(TEXT_ENCODERS) and peak(tag.te, steps):
        notes.append(f"te= has no effect: {chosen} leaves out every text encoder; remove te= or add te to "
                     f"module=")
    fields_of = tag.__dict__
    unused = [label for name, label in _DENOISER_KEYS
              if fields_of[name] is not None and peak(fields_of[name], steps)]
    if unused and allowed.isdisjoint(DENOISERS):
        keys = ", ".join(unused)
        notes.append(f"{keys} {'has' if len(unused) == 1 else 'have'} no effect: {chosen} leaves out the denoiser; "
                     f"remove {'it' if len(unused) == 1 else 'them'} or add unet to module=")
    return tuple(notes)


_SCHEDULE_FIELDS = (("strength", "strength"), ("te", "te="), ("unet", "unet="), ("in_", "in="), ("mid", "mid="),
                    ("out", "out="))


def _keyframe_notes(tag: LoraTag, steps: int) -> tuple[str, ...]:
    """Keyframes that do nothing over ``steps`` steps. Units resolve only with the step count, so this is the
    plan's to say (the syntax refuses a backward keyframe only within one unit, where the text shows it).
    ``_core`` calls it only when a schedule the plan uses fails ``_in_order`` (checked in ``_schedule_facts``,
    in its one pass over the distinct schedules, so a cold plan stays cheap); a
    strength that te= and unet= both override is not used, and not reported."""
    notes: list[str] = []
    fields_of = tag.__dict__  # the fields of a built tag (``frozen``): no getattr per field on a cold plan
    for field_name, label in _SCHEDULE_FIELDS:
        schedule = fields_of[field_name]
        if schedule is not None and not schedule.is_constant and not _in_order(schedule, steps):
            notes += _schedule_notes(schedule, label, steps)
    return tuple(notes)


def _in_order(schedule: Schedule, steps: int) -> bool:
    """Every keyframe starts inside the run, after the one before: the usual case, checked without a generator."""
    previous = 0
    for frame in schedule.keyframes:
        start = frame.start_step(steps)
        if start <= previous or start > steps:
            return False
        previous = start
    return True


def _schedule_notes(schedule: Schedule, label: str, steps: int) -> Iterator[str]:
    """Step keyframes past the end (they never apply), and keyframes that resolve to a step not after the
    previous one (keyframes apply in step order, the one written last winning a shared step): one note per
    kind, naming the first few and counting the rest, so the text stays short whatever the tag holds."""
    previous, before = 0, None  # the previous keyframe's step, and the keyframe (None: none yet)
    late: list[str] = []
    unordered: list[tuple[Keyframe, int, Keyframe, int]] = []
    for frame in schedule.keyframes:
        start = frame.start_step(steps)
        if frame.unit == "step" and start > steps:
            late.append(f"@{int(frame.at)}")
        elif before is not None and start <= previous:
            unordered.append((frame, start, before, previous))
        previous, before = start, frame
    if late and schedule.interpolation == "lerp":   # the first late keyframe still sets the last ramp's slope
        cut, late = late[0], late[1:]
        yield (f"{label} keyframe {cut} is after the last step ({steps}): the ramp towards it is cut there and "
               f"reaches {resolve(schedule, steps)[-1]:.3g} at step {steps}; to end the ramp on the last step, "
               f"write its keyframe @{steps} or @100%")
    if late:
        what = (f"keyframe {late[0]} is" if len(late) == 1 else f"keyframes {_some(late)} are")
        yield (f"{label} {what} after the last step ({steps}): {'it never applies' if len(late) == 1 else 'they never apply'}; "
               f"use a step from 1 to {steps} or a fraction (1.0 = the last step)")
    if unordered:
        frame, start, before, previous = unordered[0]
        effect = ("both start there and the one written last wins" if start == previous else
                  "keyframes apply in step order, so it comes before that one")
        more = f" ({len(unordered) - 1} more keyframes like it)" if len(unordered) > 1 else ""
        yield (f"{label} keyframe {format_keyframe(frame)} resolves to step {start} with {steps} steps, not "
               f"after the previous keyframe {format_keyframe(before)} (step {previous}): {effect}{more}; write "
               f"keyframes in step order")


#: Items a warning lists before it counts the rest, and characters of a tag quoted in a warning.
LISTED = 5
QUOTED_TAG = 80


def _some(items: list[str]) -> str:
    """``@21, @22, @23, @24, @25 and 2,975 more`` (every item when there are few)."""
    if len(items) <= LISTED:
        return ", ".join(items)
    return f"{', '.join(items[:LISTED])} and {len(items) - LISTED:,} more"


def short_tag(text: str) -> str:
    """A tag as quoted in a warning: whole when short, else its start and its end around an ellipsis."""
    if len(text) <= QUOTED_TAG:
        return text
    return f"{text[:QUOTED_TAG - 20]}…{text[-15:]} ({len(text):,} characters)"


def collapse(warnings: list[str]) -> tuple[str, ...]:
    """Each distinct warning once, in first-seen order, with a count when it was repeated."""
    counts = Counter(warnings)
    return tuple(text if counts[text] == 1 else f"{text} ({counts[text]} times)" for text in counts)


def _schedule_facts(schedules: dict[str, Schedule], live: list[str],
                    steps: int) -> tuple[dict[int, float], tuple[int, ...], bool, bool]:
    """(largest |weight| by schedule id, change points of the ``live`` groups, whether they are all 0,
    whether every schedule's keyframes are in step order inside the run: see ``_keyframe_notes``).

    Groups mostly share one schedule object, so each distinct one is looked at once; none is expanded
    step by step unless it is a lerp (see schedule.peak / change_steps)."""
    peaks, in_order = {}, True
    for schedule in schedules.values():
        ident = id(schedule)
        if ident not in peaks:
            peaks[ident] = peak(schedule, steps)
            if in_order and not schedule.is_constant:
                in_order = _in_order(schedule, steps)
    used = {id(schedules[group]): schedules[group] for group in live}.values()
    points = tuple(sorted(set().union(*(change_steps(s, steps) for s in used if not s.is_constant))))
    return peaks, points, not any(peaks[id(s)] for s in used), in_order


class _StackEntry:
    """One group of one tag for the stack warning: its largest |weight| x lbw scale (``peak``), and the
    per-step values, expanded on first need only (when the warning's cheap bound is passed) and then kept."""

    __slots__ = ("peak", "_schedule", "_scale", "_steps", "_per_step")

    def __init__(self, peak: float, schedule: Schedule | None, scale: float, steps: int) -> None:
        self.peak, self._schedule, self._scale, self._steps = peak, schedule, scale, steps
        self._per_step: tuple[float, ...] | None | bool = True if schedule is not None else None  # True: to expand

    def per_step(self) -> tuple[float, ...] | None:
        """|weight| x scale at each step, None when it is the same at every step."""
        if self._per_step is True:
            self._per_step = self._expand()
        return self._per_step  # type: ignore[return-value]

    def _expand(self) -> tuple[float, ...] | None:
        """``map`` keeps the loop in C (scale x |v| is the same float as |v| x scale)."""
        scaled = tuple(map(abs, resolve(self._schedule, self._steps)))  # type: ignore[arg-type]
        if self._scale != 1.0:
            scaled = tuple(map(self._scale.__mul__, scaled))
        return None if scaled.count(scaled[0]) == self._steps else scaled


_NO_STACK = _StackEntry(0.0, None, 0.0, 0)


def _stack_entry(group: str, schedule: Schedule, top: float, steps: int, lbw: _Lbw,
                 allowed: frozenset[str] | None, is_zero: bool, shared: dict[tuple, _StackEntry]) -> _StackEntry:
    """The stack-warning entry of one group whose largest |weight| is ``top`` (``_NO_STACK`` where the tag
    cannot weigh on it). Groups of one tag with the same schedule and scale share an entry (``shared``),
    so its per-step values are expanded once, not once per group."""
    touches = TEXT_ENCODERS if group == "te" else DENOISERS
    scale = lbw.group_scale[group]
    if is_zero or scale == 0 or (allowed is not None and not allowed.intersection(touches)):
        return _NO_STACK
    key = (id(schedule), scale)
    if key not in shared:
        shared[key] = _StackEntry(top * scale, None if schedule.is_constant else schedule, scale, steps)
    return shared[key]


def plan_tag(tag: LoraTag, steps: int, architecture: str | None = None) -> tuple[LoraPlan, str | None]:
    """The plan of one tag, and a warning about its lbw (or None)."""
    plan, warnings = _plan_tag(tag, steps, architecture)
    return plan, next((w for w in warnings if w.startswith(f"{short_tag(tag.text)}: lbw")), None)


def _plan_tag(tag: LoraTag, steps: int, architecture: str | None) -> tuple[LoraPlan, tuple[str, ...]]:
    """The plan of one tag and every warning about it (lbw, keyframes), each naming the tag."""
    core = _core(tag, steps, architecture)
    warnings = () if core.quiet else _tag_warnings(tag, core, architecture)
    plan = _new_plan(tag.name, tag, steps, tag.dyn, core.allowed, core.vectors, core.lbw.multipliers,
                     core.lbw.group_scale, core.lbw.covered, core.points, core.is_zero, core.cache, core.stack)
    return plan, warnings


def _tag_warnings(tag: LoraTag, core: _Core, architecture: str | None) -> tuple[str, ...]:
    """The lbw warning and the keyframe notes of one tag, each naming it (its text: equal cores may differ)."""
    warnings = () if core.lbw.fits else (_lbw_warning(tag, architecture),)
    return warnings + tuple(f"{short_tag(tag.text)}: {note}" for note in core.notes)


def _new_plan(*values) -> LoraPlan:
    """``LoraPlan(*values)`` (every field, in order) without the frozen ``__init__``'s ``object.__setattr__``
    per field: a plan is built per tag of every prompt, and its values come from a checked core."""
    if len(values) != len(_PLAN_FIELDS):
        raise TypeError(f"LoraPlan has {len(_PLAN_FIELDS)} fields, {len(values)} given")
    plan = object.__new__(LoraPlan)
    plan.__dict__.update(zip(_PLAN_FIELDS, values))
    return plan


@dataclass(frozen=True)
class Plan:
    """The prompt without tags, and every LoRA's weights over ``steps``."""

    prompt: str
    steps: int
    loras: tuple[LoraPlan, ...]
    change_points: tuple[int, ...]
    warnings: tuple[str, ...] = ()
    architecture: str | None = None
    errors: tuple[LoraSyntaxError, ...] = ()  # bad tags skipped by parse(..., on_error="skip")
    stack_warnings: tuple[str, ...] = ()       # the part of ``warnings`` about the total strength

    def touching(self, touched: Callable[[LoraPlan], Collection[str]], components: Collection[str] = ()) -> "Plan":
        """This plan once the files are known: the strength warning counts, for each LoRA, only the
        components its file has keys for (``touched``: LoRA plan -> component names), and a tag limited to
        components the model lacks (``components``: the model's) is named (``low`` on a one-transformer model)."""
        stack = _stack_warnings(self.loras, self.steps, touched)
        kept = [w for w in self.warnings if w not in self.stack_warnings]
        missing = absent_component_warnings(self.loras, components) if components else []
        return replace(self, warnings=collapse(kept + missing + stack), stack_warnings=tuple(stack))


def absent_component_warnings(loras: tuple[LoraPlan, ...], components: Collection[str]) -> list[str]:
    """A tag whose ``module=``/``high``/``low`` names only text encoders or only denoisers the model does not
    have applies nothing there, silently: say so."""
    found = []
    for lora in loras:
        if lora.modules is None:
            continue
        for kind, names in (("text encoder", TEXT_ENCODERS), ("denoiser", DENOISERS)):
            asked = lora.modules.intersection(names)
            if asked and asked.isdisjoint(components):
                has = ", ".join(c for c in names if c in components) or "none"
                found.append(f"{short_tag(lora.tag.text)}: this model has no {', '.join(sorted(asked))} (its "
                             f"{kind}: {has}), so nothing of this LoRA is applied to its {kind}; `low` and "
                             f"module=transformer_2 are for two-stage models (Wan 2.2)")
    return found


Touched = Callable[[LoraPlan], Collection[str]] | None


def _entry(lora: LoraPlan, group: str, touched: Touched) -> _StackEntry:
    """The lora's stack entry on ``group``; none where its file has no key for that kind of component."""
    if touched is not None and set(touched(lora)).isdisjoint(TEXT_ENCODERS if group == "te" else DENOISERS):
        return _NO_STACK
    return lora._stack[group]


def _group_peak(loras: tuple[LoraPlan, ...], group: str, steps: int, touched: Touched = None) -> tuple[float, int]:
    """(largest total |weight| over the steps, the step it happens at) on one block group of one component:
    tags limited to different components (``high`` and ``low``, ``module=text_encoder`` and
    ``module=text_encoder_2``) do not add up."""
    entries = [(lora.modules, _entry(lora, group, touched)) for lora in loras]
    kind = TEXT_ENCODERS if group == "te" else DENOISERS
    named = {c for modules, entry in entries if modules is not None and entry.peak for c in modules if c in kind}
    if not named:   # every tag weighs on every component of the kind
        return _summed_peak([entry for _, entry in entries], steps)
    # the tags weighing on each named component; a set inside another cannot sum higher (|weights| add), so
    # only the largest sets are summed: usually one, as when the unlimited tags plus one stage tag cover all
    sets = {frozenset(i for i, (modules, entry) in enumerate(entries)
                      if entry.peak and (modules is None or component in modules)) for component in named}
    return max((_summed_peak([entries[i][1] for i in sorted(chosen)], steps)
                for chosen in sets if not any(chosen < other for other in sets)), key=lambda found: found[0])


def _summed_peak(entries: list[_StackEntry], steps: int) -> tuple[float, int]:
    """(largest sum of the entries' |weight| over the steps, the step it happens at)."""
    bound = sum(entry.peak for entry in entries)
    if bound <= STACK_WARN_LEVEL:  # cannot exceed the level at any step: skip the per-step sums
        return bound, 1
    base, totals = 0.0, [0.0] * steps
    for entry in entries:
        per_step = entry.per_step()
        if per_step is None:
            base += entry.peak
        else:
            totals = list(map(add, totals, per_step))
    top = max(totals)
    return base + top, totals.index(top) + 1


def _alone(loras: tuple[LoraPlan, ...], groups: list[str], touched: Touched = None) -> LoraPlan | None:
    """The only LoRA weighing on ``groups``, or None when there are several (stops at the second)."""
    found = None
    for lora in loras:
        for group in groups:  # plain loops: this runs on every plan of a strong stack
            if _entry(lora, group, touched).peak > 0:
                if found is not None:
                    return None
                found = lora
                break
    return found


def _stack_warnings(loras: tuple[LoraPlan, ...], steps: int, touched: Touched = None) -> list[str]:
    """One warning naming every block group whose summed |weight| passes :data:`STACK_WARN_LEVEL`
    (``touched``: what each LoRA's file has keys for, once known; see :meth:`Plan.touching`)."""
    over, groups = [], []
    for group in GROUPS:
        peak, step = _group_peak(loras, group, steps, touched)
        if peak > STACK_WARN_LEVEL:
            where = "text encoders" if group == "te" else f"denoiser {group} blocks"
            over.append(f"{where} {peak:.2f} at step {step}")
            groups.append(group)
    if not over:
        return []
    alone = _alone(loras, groups, touched)
    if alone is not None:  # one LoRA alone: nothing is stacked, it is simply too strong
        tag = short_tag(alone.tag.text)
        return [f"{tag}: LoRA strength above {STACK_WARN_LEVEL}: {'; '.join(over)}. One LoRA this strong "
                f"tends to overcook the image (burnt colours, artefacts): lower its weight"]
    return [f"total LoRA strength above {STACK_WARN_LEVEL}: {'; '.join(over)}. Stacked LoRAs compound "
            f"each other's artefacts: lower some weights"]


def _duplicate_warnings(loras: tuple[LoraPlan, ...]) -> list[str]:
    """A file named by several tags whose weights add up on some component (tags on separate components,
    ``<lora:x:1:high> <lora:x:0.5:low:te=0>``, are how a two-stage model takes one LoRA, and do not add)."""
    counts = Counter(lora.name.casefold() for lora in loras)
    warnings = []
    for name, count in counts.items():
        if count > 1 and not _separate([_weighed(lora) for lora in loras if lora.name.casefold() == name]):
            texts = _some([short_tag(l.tag.text) for l in loras if l.name.casefold() == name])
            warnings.append(f"LoRA '{name}' is used by {count} tags ({texts}); the engine applies the file "
                            f"once with their weights added")
    return warnings


def _weighed(lora: LoraPlan) -> frozenset[str]:
    """The components ``lora`` gives a non-zero weight at some step: where a second tag of its file would add to
    it (``te=0`` takes the text encoders out, as docs/syntax.md recommends for one tag of a high/low pair)."""
    if lora.is_zero:
        return frozenset()
    kinds: list[str] = []
    if lora._stack["te"].peak:
        kinds += TEXT_ENCODERS
    blocks_weigh = any(lora._stack[group].peak for group in ("in", "mid", "out"))
    blockless_weigh = (not all(lora.group_scale.get(g) == 0 for g in ("in", "mid", "out"))
                       and any(lora.group_weights["unet"]))   # modules without a block id take the unet weight
    if blocks_weigh or blockless_weigh:
        kinds += DENOISERS
    return frozenset(kinds) if lora.modules is None else lora.modules.intersection(kinds)


def _separate(selections: list[frozenset[str]]) -> bool:
    """Whether no two of these component sets share a component."""
    seen: set[str] = set()
    for components in selections:
        if not seen.isdisjoint(components):
            return False
        seen.update(components)
    return True


ParsedOrPrompt = Union[ParsedPrompt, str]


def build_plan(parsed_or_prompt: ParsedOrPrompt, steps: int, *, architecture: str | None = None) -> Plan:
    """Resolve every tag of a prompt (text or :class:`ParsedPrompt`) over ``steps`` sampling steps."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, not {steps!r}")
    if architecture is not None and architecture not in blocks.ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {blocks.ARCHITECTURES}")
    parsed = parse(parsed_or_prompt) if isinstance(parsed_or_prompt, str) else parsed_or_prompt
    loras, warnings = [], []
    for tag in parsed.tags:
        plan, tag_warnings = _plan_tag(tag, steps, architecture)
        loras.append(plan)
        if tag_warnings:
            warnings += tag_warnings
    result = tuple(loras)
    stack = _stack_warnings(result, steps)
    warnings += _duplicate_warnings(result) + stack
    points = sorted(set().union(*(lora.change_points for lora in result)))
    return Plan(parsed.prompt, steps, result, tuple(points), collapse(warnings), architecture, parsed.errors,
                tuple(stack))
