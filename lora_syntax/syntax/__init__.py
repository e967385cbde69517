"""The prompt tag syntax: ``parse(prompt) -> ParsedPrompt`` and ``format_tag(tag) -> str``.

See docs/syntax.md for the language; ``tags.lark`` is its grammar.
"""

from __future__ import annotations

from .format import format_keyframe, format_schedule, format_tag
from .model import BlockWeights, Keyframe, LoraTag, ParsedPrompt, Schedule
from .parser import parse, strip_negative

__all__ = ["BlockWeights", "Keyframe", "LoraTag", "ParsedPrompt", "Schedule", "format_keyframe", "format_schedule",
           "format_tag", "parse", "strip_negative"]
