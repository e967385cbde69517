"""``format_tag``: the canonical text of a tag; parsing it again gives the same plan."""

from __future__ import annotations

from decimal import Decimal

from .model import BlockWeights, Keyframe, LoraTag, Schedule


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _fixed(value: float) -> str:
    """A number in positional notation (no exponent), as fractions and percentages need."""
    text = format(Decimal(repr(float(value))), "f")
    return text if "." in text else text + ".0"


def _keyframe(frame: Keyframe) -> str:
    if frame.at is None:
        return _number(frame.value)
    if frame.unit == "step":
        return f"{_number(frame.value)}@{int(frame.at)}"
    at = frame.at + 0.0   # -0.0 (a Keyframe built by hand) is written 0: the syntax takes no sign there
    if frame.unit == "percent":
        return f"{_number(frame.value)}@{_fixed(at).rstrip('0').rstrip('.')}%"
    return f"{_number(frame.value)}@{_fixed(at)}"


def format_number(value: float) -> str:
    """The shortest text that parses back to exactly ``value`` (``0.8``, ``1``, ``0.3333333333333333``)."""
    return _number(value)


def format_tag_parts(tag: LoraTag, keys: tuple[str, ...]) -> list[str]:
    """The ``key=value`` parts of ``tag`` for the given keys (``dyn``, ``lbw``), as :func:`format_tag` writes them."""
    parts = []
    if "dyn" in keys and tag.dyn is not None:
        parts.append(f"dyn={tag.dyn}")
    if "lbw" in keys and tag.lbw is not None:
        parts.append(f"lbw={_lbw(tag.lbw)}")
    return parts


def format_keyframe(frame: Keyframe) -> str:
    """``0.6@6``, ``1@50%``: one keyframe as plan warnings quote it."""
    return _keyframe(frame)


def format_schedule(schedule: Schedule) -> str:
    """``0.8``, ``0.1@1,0.6@6`` or ``lerp(0@0,1@10)``."""
    body = ",".join(_keyframe(frame) for frame in schedule.keyframes)
    return f"lerp({body})" if schedule.interpolation == "lerp" else body


def _lbw(lbw: BlockWeights) -> str:
    return lbw.preset if lbw.preset else ",".join(_number(v) for v in lbw.values)


def format_tag(tag: LoraTag) -> str:
    """Canonical ``<lora:NAME[:STRENGTH][:key=value]...[:high|low]>`` text for ``tag``."""
    parts = [tag.name]
    if tag.strength is not None:
        parts.append(format_schedule(tag.strength))
    for key, value in (("te", tag.te), ("unet", tag.unet), ("in", tag.in_), ("mid", tag.mid),
                       ("out", tag.out), ("hr", tag.hr), ("hrte", tag.hrte), ("hrunet", tag.hrunet)):
        if value is not None:
            parts.append(f"{key}={format_schedule(value)}")
    if tag.dyn is not None:
        parts.append(f"dyn={tag.dyn}")
    if tag.modules is not None:
        parts.append("module=" + ",".join(tag.modules))
    if tag.lbw is not None:
        parts.append(f"lbw={_lbw(tag.lbw)}")
    if tag.stage is not None:
        parts.append(tag.stage)
    return f"<{tag.kind}:" + ":".join(parts) + ">"
