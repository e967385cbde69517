"""Typed records for parsed tags: what the user typed, validated, with source positions."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Literal, Union

from ..errors import LoraSyntaxError

Unit = Literal["step", "fraction", "percent"]


def frozen(cls, values: dict):
    """An instance of the frozen dataclass ``cls`` from ``values`` (every field without a default), built
    without the generated ``__init__``, which pays an ``object.__setattr__`` per field: for records the
    parser builds by the dozen per prompt from already-checked values."""
    made = object.__new__(cls)
    made.__dict__.update(_DEFAULTS[cls])
    made.__dict__.update(values)
    return made


def _memo(record: object, slot: str, compute):
    """``compute()`` kept in a frozen record's ``__dict__`` under ``slot``: hashes and derived facts the plan
    asks of the same record many times per prompt."""
    found = record.__dict__.get(slot)
    if found is None:
        found = compute()
        object.__setattr__(record, slot, found)
    return found


@dataclass(frozen=True)
class Keyframe:
    """``value@at``: ``value`` from the step ``at`` designates (``at`` None: from the start)."""

    value: float
    at: float | None = None   # None (plain number), an integer step, a fraction 0..1 or a percent 0..100
    unit: Unit = "step"

    def start_step(self, steps: int) -> int:
        """The 1-based step this keyframe takes effect at.

        A fraction f starts at floor(f x steps) + 1, clamped to ``steps``: f = 1.0 / 100% means the last
        step (so ``lerp(0@0,1@100%)`` reaches 1), not a step after the run. An integer step may exceed
        ``steps`` (it never applies; the plan warns)."""
        if self.at is None:
            return 1
        if self.unit == "step":
            return max(1, int(self.at))
        fraction = self.at / 100.0 if self.unit == "percent" else self.at
        return min(int(fraction * steps + 1e-9) + 1, steps)


@dataclass(frozen=True)
class Schedule:
    """A weight over the steps: one or more keyframes, switched (default) or linearly interpolated."""

    keyframes: tuple[Keyframe, ...]
    interpolation: Literal["switch", "lerp"] = "switch"


    def __hash__(self) -> int:  # memoised: schedules key the plan caches, hashed on every plan
        return _memo(self, "_hash", lambda: hash(("schedule", self.keyframes, self.interpolation)))

    @property
    def is_constant(self) -> bool:
        """One plain number (memoised like the hash: planning asks it of every schedule several times)."""
        return _memo(self, "_constant", lambda: len(self.keyframes) == 1 and self.keyframes[0].at is None
                     and self.interpolation == "switch")

    @classmethod
    def constant(cls, value: float) -> "Schedule":
        return frozen(cls, {"keyframes": (frozen(Keyframe, {"value": float(value)}),)})


@dataclass(frozen=True)
class BlockWeights:
    """``lbw=``: a preset name (upper case) or a positional vector of multipliers."""

    preset: str | None = None
    values: tuple[float, ...] = ()

    def __hash__(self) -> int:  # memoised: block weights key the plan caches too
        return _memo(self, "_hash", lambda: hash(("lbw", self.preset, self.values)))


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:...>``/``<lyco:...>`` tag. Unset fields are None (see docs/syntax.md for defaults)."""

    name: str
    text: str                              # the tag exactly as typed
    span: tuple[int, int]                  # (start, end) offsets in the original prompt
    kind: Literal["lora", "lyco"] = "lora"
    strength: Schedule | None = None       # first positional value
    te: Schedule | None = None
    unet: Schedule | None = None           # ``unet=`` or the second positional value
    in_: Schedule | None = None
    mid: Schedule | None = None
    out: Schedule | None = None
    dyn: int | None = None                 # ``dyn=`` or the third positional value
    modules: tuple[str, ...] | None = None  # ``module=``: the components it applies to
    stage: Literal["high", "low"] | None = None  # positional keyword: transformer / transformer_2 only
    lbw: BlockWeights | None = None
    hr: Schedule | None = None              # loractl hires keys: stored, ignored by the plan
    hrte: Schedule | None = None
    hrunet: Schedule | None = None

    def content_key(self) -> tuple:
        """Every field but ``text`` and ``span``: equal for the same tag typed at another place."""
        return _memo(self, "_content", lambda: tuple(getattr(self, f) for f in _CONTENT_FIELDS))

    @classmethod
    def build(cls, values: dict) -> "LoraTag":
        """A tag from checked field values (``frozen``): the parser's fast path, unknown fields refused."""
        if not values.keys() <= _DEFAULTS[cls].keys() | {"name", "text", "span"}:
            raise TypeError(f"unknown LoraTag fields: {sorted(values.keys() - _DEFAULTS[cls].keys())}")
        return frozen(cls, values)

    def with_position(self, text: str, span: tuple[int, int]) -> "LoraTag":
        """The same tag found at another place of a prompt (parsed tags are cached by text)."""
        self.content_key()  # memoise before copying, so every copy shares it
        moved = object.__new__(LoraTag)  # far cheaper than dataclasses.replace; nothing to re-validate
        moved.__dict__.update(self.__dict__, text=text, span=span)
        return moved


_CONTENT_FIELDS = tuple(f.name for f in fields(LoraTag) if f.name not in ("text", "span"))
_DEFAULTS = {cls: {f.name: f.default for f in fields(cls) if f.default is not MISSING}
             for cls in (Keyframe, Schedule, LoraTag)}
Weight = Union[Schedule, None]


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt with its LoRA tags removed (``prompt``), the tags, and (skip mode) the tags' errors."""

    prompt: str
    tags: tuple[LoraTag, ...]
    errors: tuple[LoraSyntaxError, ...] = ()
    source: str = ""
