"""Checks a :class:`RawTag` and builds the typed :class:`LoraTag` (keys, numbers, schedules, presets).

Every problem is a :class:`TagProblem` carrying the offset inside the tag it is about; the parser
turns it into a positioned :class:`~lora_syntax.errors.LoraSyntaxError`.
"""

from __future__ import annotations

import difflib
import math
import re

from .. import blocks
from .grammar import RawArg, RawItem, RawTag
from .model import BlockWeights, Keyframe, LoraTag, Schedule, frozen
from .report import clip

WEIGHT_KEYS = ("te", "unet", "in", "mid", "out", "hr", "hrte", "hrunet")
KEYS = (*WEIGHT_KEYS, "dyn", "module", "lbw")
STAGES = ("high", "low")
#: ``module=`` names: the tag keys ``te``/``unet`` and the diffusers component names.
COMPONENT_NAMES = ("te", "unet", "text_encoder", "text_encoder_2", "text_encoder_3",
                   "transformer", "transformer_2", "high", "low")
_FIELD = {"in": "in_"}
#: Keyframes one weight may hold (docs/syntax.md, "Limits"): a schedule longer than this is an error.
MAX_KEYFRAMES = 1024
#: Largest |number| a weight or lbw multiplier may be: beyond it a fused weight overflows half precision
#: (65,504) for any usual LoRA, and 1e308 overflows even the fp32 sum.
MAX_WEIGHT = 10_000.0
_STEP = re.compile(r"\d+")
#: A keyframe position in positional notation: digits with at most one '.', no sign, no exponent (a step,
#: a fraction or a percentage: '@-0', '@1e1' and '@1e1%' are all refused alike).
_POSITION = re.compile(r"\d+\.?\d*|\.\d+")
_NON_FINITE = re.compile(r"[+-]?(?i:nan|inf(inity)?)")


class TagProblem(Exception):
    """A problem in one tag, at ``pos`` (offset inside the tag text)."""

    def __init__(self, message: str, pos: int, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.kind = kind  # "unknown key", "duplicate key", "empty name", "bad number", "bad schedule"...


SUGGEST_CUTOFF = 0.6  # difflib ratio: 'tee'->'te' 0.8, 'info'->'in' 0.67; 'bogus'->'out' (0.5) is no suggestion


def _did_you_mean(word: str, options: tuple[str, ...]) -> str:
    lowered = {option.lower(): option for option in options}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=SUGGEST_CUTOFF)
    listed = ", ".join(options)
    return f" (did you mean '{lowered[close[0]]}'?)" if close else f"; expected one of: {listed}"


def _number(item: RawItem, what: str) -> float:
    shown = clip(item.text)
    if item.kind != "number" and item.kind != "keyframe":
        raise TagProblem(f"bad number {shown!r} for {what}: expected a number such as 0.8 or -1",
                         item.pos, "bad number")
    value = float(item.text)   # float() reads any number of digits (int() stops at 4,300)
    if not math.isfinite(value):
        # nan/inf/infinity lex as numbers (tags.lark) so that they get this message, like 1e999 does
        raise TagProblem(f"bad number {shown!r} for {what}: {shown!r} is not a finite number; use a "
                         f"number such as 0.8", item.pos, "bad number")
    if abs(value) > MAX_WEIGHT:
        raise TagProblem(f"bad number {shown!r} for {what}: weights and multipliers are limited to "
                         f"±{MAX_WEIGHT:,.0f} (larger ones overflow the model's numbers); use a number such as "
                         f"0.8", item.pos, "bad number")
    return value


#: Largest step a keyframe may name (past it, no sampling run reaches it; it also bounds int() of the text).
MAX_STEP = 100_000
#: Largest ``dyn`` rank: far above any LoRA's rank (a larger one keeps the full rank anyway); it also bounds
#: int() of the text, which Python refuses past 4,300 digits.
MAX_DYN = 100_000


def _whole(digits: str, limit: int) -> int | None:
    """``int(digits)`` for a run of decimal digits, or None above ``limit``: int() is never handed more
    digits than the limit has (it raises ValueError past 4,300 of them)."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(limit)):
        return None
    value = int(significant or "0")
    return value if value <= limit else None


def _frame(value: float, at: float, unit: str) -> Keyframe:
    """A checked keyframe, built without the dataclass ``__init__`` (see ``model.frozen``)."""
    return frozen(Keyframe, {"value": value, "at": at, "unit": unit})


def _keyframe(item: RawItem, what: str) -> Keyframe:
    value = _number(item, what)
    at = item.at or ""
    written = f"@{at}%" if item.percent else f"@{at}"
    if _NON_FINITE.fullmatch(at):   # nan/inf lex as numbers: the message every number position gives them
        raise TagProblem(f"bad schedule for {what}: {clip(at)!r} is not a finite number; use a step (1, 2...), "
                         f"a fraction of the run (0.5) or a percentage (50%)", item.at_pos, "bad schedule")
    if not _POSITION.fullmatch(at):   # a sign or an exponent: '@-1', '@1e1', '@1e1%'
        raise TagProblem(f"bad schedule for {what}: {clip(written)!r} is not a step (1, 2...), a fraction of the "
                         f"run (0.0-1.0) or a percentage (50%)", item.at_pos, "bad schedule")
    if item.percent:
        percent = float(at)
        if percent > 100.0:
            raise TagProblem(f"bad schedule for {what}: {clip(at)}% is not between 0% and 100%", item.at_pos,
                             "bad schedule")
        return _frame(value, percent, "percent")
    if _STEP.fullmatch(at):
        step = _whole(at, MAX_STEP)
        if step is None:
            raise TagProblem(f"bad schedule for {what}: step '@{clip(at, 20)}' is past any sampling run (at most "
                             f"{MAX_STEP:,}); use a step of the run, or a fraction (0.5) or percentage (50%)",
                             item.at_pos, "bad schedule")
        return _frame(value, float(step), "step")
    fraction = float(at)
    if fraction <= 1.0:
        return _frame(value, fraction, "fraction")
    raise TagProblem(f"bad schedule for {what}: {clip(written)!r} is not a step (1, 2...), a fraction of the run "
                     f"(0.0-1.0) or a percentage (50%)", item.at_pos, "bad schedule")


def _check_order(frames: list[Keyframe], items: tuple[RawItem, ...], what: str) -> None:
    """Keyframes of one unit (steps, fractions, percentages) must go forward."""
    last: dict[str, float] = {}
    for frame, item in zip(frames, items):
        if frame.at is None:
            continue
        if frame.unit in last and frame.at <= last[frame.unit]:
            written = clip(f"@{item.at}{'%' if item.percent else ''}")
            raise TagProblem(f"bad schedule for {what}: keyframes must go forward, '{written}' does not "
                             f"come after the previous one", item.at_pos, "bad schedule")
        last[frame.unit] = frame.at


def _schedule(items: tuple[RawItem, ...], what: str) -> Schedule:
    if len(items) == 1 and items[0].kind == "call":
        call = items[0]
        if call.text.lower() != "lerp":
            raise TagProblem(f"bad schedule for {what}: unknown function {clip(call.text)!r}; use lerp(w@K,w@K...)",
                             call.pos, "bad schedule")
        inner = _schedule(call.items, what)
        if len(call.items) < 2 or any(i.kind != "keyframe" for i in call.items):
            raise TagProblem(f"bad schedule for {what}: lerp() needs two or more keyframes like "
                             f"lerp(0@0,1@10)", call.pos, "bad schedule")
        return frozen(Schedule, {"keyframes": inner.keyframes, "interpolation": "lerp"})
    if len(items) == 1 and items[0].kind == "number":
        return Schedule.constant(_number(items[0], what))
    if len(items) > MAX_KEYFRAMES:
        raise TagProblem(f"bad schedule for {what}: {len(items):,} keyframes; at most {MAX_KEYFRAMES:,} are "
                         f"allowed per weight (use lerp() for a ramp)", items[MAX_KEYFRAMES].pos, "bad schedule")
    if (len(items) == 2 and all(i.kind == "number" and i.text.isdigit() for i in items)
            and items[1].pos == items[0].pos + len(items[0].text) + 1):   # "0,8": a decimal comma
        whole, decimals = items[0].text, items[1].text
        raise TagProblem(f"bad number for {what}: {clip(whole + ',' + decimals)!r} has a decimal comma; write "
                         f"{clip(whole + '.' + decimals)} (a ',' separates weight@step keyframes)", items[0].pos,
                         "bad number")
    frames = []
    for item in items:
        if item.kind == "number":
            raise TagProblem(f"bad schedule for {what}: {clip(item.text)!r} has no '@STEP'; write weight@step "
                             f"pairs like 0.1@1,0.6@6", item.pos, "bad schedule")
        if item.kind != "keyframe":
            raise TagProblem(f"bad number {clip(item.text)!r} for {what}: expected a number or weight@step pairs",
                             item.pos, "bad number")
        frames.append(_keyframe(item, what))
    _check_order(frames, items, what)
    return frozen(Schedule, {"keyframes": tuple(frames)})


def _dyn(items: tuple[RawItem, ...]) -> int | None:
    """The rank to keep; 0 means no truncation (None), as the LyCORIS extension documents it: A1111 passes
    int(0) on and slices the rank to nothing, a zero update no one means to ask for."""
    item = items[0]
    if len(items) != 1 or item.kind != "number" or not _STEP.fullmatch(item.text):
        raise TagProblem(f"bad number {clip(item.text)!r} for dyn: expected a whole number of dimensions "
                         f"(0 = the full rank), e.g. dyn=16", item.pos, "bad number")
    rank = _whole(item.text, MAX_DYN)
    if rank is None:
        raise TagProblem(f"bad number {clip(item.text)!r} for dyn: a rank is at most {MAX_DYN:,}; use the rank "
                         f"to keep, e.g. dyn=16 (0 = the full rank)", item.pos, "bad number")
    return rank or None


def _modules(items: tuple[RawItem, ...]) -> tuple[str, ...]:
    names = []
    for item in items:
        if item.kind != "word" or item.text.lower() not in COMPONENT_NAMES:
            raise TagProblem(f"unknown module {clip(item.text)!r}" + _did_you_mean(item.text, COMPONENT_NAMES),
                             item.pos, "unknown module")
        names.append(item.text.lower())
    return tuple(dict.fromkeys(names))


def _lbw(items: tuple[RawItem, ...]) -> BlockWeights:
    first = items[0]
    if len(items) == 1 and first.kind == "word":
        if first.text.upper() not in blocks.PRESETS:
            raise TagProblem(f"unknown lbw preset {clip(first.text)!r}" + _did_you_mean(first.text.upper(),
                             blocks.PRESETS), first.pos, "unknown preset")
        return BlockWeights(preset=first.text.upper())
    values = tuple(_number(item, "lbw") if item.kind == "number" else _bad_lbw(item) for item in items)
    if len(values) not in blocks.FORM_BY_LENGTH:
        lengths = ", ".join(f"{n} ({arch})" for n, (arch, _) in sorted(blocks.FORM_BY_LENGTH.items()))
        raise TagProblem(f"bad lbw vector: {len(values)} values; expected {lengths} or a preset "
                         f"({', '.join(blocks.PRESETS)})", first.pos, "bad lbw")
    return BlockWeights(values=values)


def _bad_lbw(item: RawItem) -> float:
    raise TagProblem(f"bad lbw value {clip(item.text)!r}: expected comma-separated numbers or one preset name",
                     item.pos, "bad lbw")


def _named(arg: RawArg, fields: dict[str, object], seen: dict[str, int]) -> None:
    key = (arg.key or "").lower()
    if key in STAGES:
        raise TagProblem(f"{arg.key!r} is not a key: high/low are bare words that pick the Wan 2.2 stage, "
                         f"e.g. <lora:x:1:{key}>; for a weight per stage write one tag per stage "
                         f"(<lora:x:1:high> <lora:x:0.5:low>)", arg.key_pos, "unknown key")
    if key not in KEYS:
        raise TagProblem(f"unknown key {clip(arg.key or '')!r}" + _did_you_mean(key, KEYS), arg.key_pos,
                         "unknown key")
    if key in seen:
        raise TagProblem(f"duplicate key {key!r}: it is already set earlier in this tag", arg.key_pos,
                         "duplicate key")
    seen[key] = arg.key_pos
    if key == "dyn":
        fields["dyn"] = _dyn(arg.items)
    elif key == "module":
        fields["modules"] = _modules(arg.items)
    elif key == "lbw":
        fields["lbw"] = _lbw(arg.items)
    else:
        fields[_FIELD.get(key, key)] = _schedule(arg.items, key)


#: A value to show in "write key=value" advice (a weight for the weight keys).
_EXAMPLE_VALUE = {"dyn": "8", "module": "unet", "lbw": "INS"}


def _word_problem(word: str) -> str:
    """A bare word that is neither high nor low: a key without '=' most of the time."""
    if word.lower() in KEYS:   # the key itself, its value in the next ':' field: <lora:x:te:0.5>
        key = word.lower()
        return (f"{word!r} needs its value after '=': write {key}={_EXAMPLE_VALUE.get(key, '0.5')} "
                f"(<lora:NAME:{key}={_EXAMPLE_VALUE.get(key, '0.5')}>), not {word}:value")
    close = _did_you_mean(word, (*KEYS, *STAGES))
    if close.startswith(" (did you mean"):
        return f"unexpected word {clip(word)!r}{close} — keys need '=' (te=0.5)"
    return (f"unexpected word {clip(word)!r}: expected a weight (0.8), key=value with a key of {', '.join(KEYS)}, "
            f"or the bare word high or low")


def _positional(arg: RawArg, index: int, fields: dict[str, object], seen: dict[str, int]) -> int:
    """Handles one positional value; returns the next positional index."""
    first = arg.items[0]
    if len(arg.items) == 1 and first.kind == "word" and first.text.lower() in STAGES:
        if "stage" in seen:
            raise TagProblem(f"duplicate key {first.text!r}: high/low is already set in this tag", first.pos,
                             "duplicate key")
        seen["stage"] = first.pos
        fields["stage"] = first.text.lower()
        return index
    if len(arg.items) == 1 and first.kind == "word":
        raise TagProblem(_word_problem(first.text), first.pos, "unknown key")
    slots = ("strength", "unet", "dyn")
    if index >= len(slots):
        raise TagProblem("too many positional values: the form is <lora:NAME:TE:UNET:DYN>; name the others "
                         "(te=, unet=, dyn=)", arg.pos, "too many values")
    slot = slots[index]
    if slot in seen:
        raise TagProblem(f"duplicate key {slot!r}: it is already set earlier in this tag", arg.pos,
                         "duplicate key")
    seen[slot] = arg.pos
    fields[slot] = _dyn(arg.items) if slot == "dyn" else _schedule(arg.items, "strength" if index == 0
                                                                      else "unet")
    return index + 1


def _largest(schedule: object) -> float:
    """The largest |weight| of a schedule (a ramp never passes its keyframes); 1 for a weight not given."""
    if not isinstance(schedule, Schedule):
        return 1.0
    return max(abs(frame.value) for frame in schedule.keyframes)


def _check_lbw_products(fields: dict[str, object], raw: RawTag) -> None:
    """A weight times its lbw multiplier is what the model gets (docs/syntax.md, "The weight formula"): it is
    bounded by :data:`MAX_WEIGHT` like each factor, or ``lbw=9999,...`` with 9999 would fuse ~1e8."""
    lbw = fields.get("lbw")
    if not isinstance(lbw, BlockWeights) or not lbw.values:   # presets multiply by 1 at most
        return
    te = fields.get("te") or fields.get("strength")
    unet = fields.get("unet") or fields.get("strength") or te
    largest = {"te": _largest(te), **{group: _largest(fields.get(_FIELD.get(group, group)) or unet)
                                      for group in ("in", "mid", "out")}}
    labels = {"te": "text-encoder weight", "in": "in-block weight", "mid": "mid-block weight",
              "out": "out-block weight"}
    block_ids = blocks.LBW_FORMS[blocks.FORM_BY_LENGTH[len(lbw.values)][1]]
    items = next(arg.items for arg in raw.args if (arg.key or "").lower() == "lbw")
    for block, multiplier, item in zip(block_ids, lbw.values, items):
        group = blocks.block_group(block)
        product = largest[group] * abs(multiplier)
        if product > MAX_WEIGHT:
            raise TagProblem(f"bad lbw value {clip(item.text)!r} for {block}: times the {labels[group]} "
                             f"{largest[group]:g} it gives {product:,.2f}, past the ±{MAX_WEIGHT:,.0f} a weight may "
                             f"reach (larger ones overflow the model's numbers); lower the multiplier or the "
                             f"weight", item.pos, "bad lbw")


def build_tag(raw: RawTag, text: str, span: tuple[int, int]) -> LoraTag:
    """Validates ``raw`` (parsed from ``text``) and returns the typed tag."""
    name = raw.name.strip()
    if not name:
        raise TagProblem("empty name: write the LoRA's name after the colon, e.g. <lora:my_style:0.8>",
                         raw.name_pos, "empty name")
    fields: dict[str, object] = {}
    seen: dict[str, int] = {}
    index = 0
    for arg in raw.args:
        if arg.key is None:
            index = _positional(arg, index, fields, seen)
        else:
            _named(arg, fields, seen)
    _check_lbw_products(fields, raw)
    return LoraTag.build({"name": name, "text": text, "span": span, "kind": raw.kind, **fields})
