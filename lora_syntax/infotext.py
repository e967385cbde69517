"""What an image records about its LoRAs: each one as the tag of what was applied.

The web UIs' infotext names LoRAs and one weight each; a schedule, group weights (``in=0``) or block weights
would be lost. :func:`applied_tag` writes the weights each group had at every step (a change point per
keyframe), with ``lbw``, ``dyn`` and ``module`` kept, so that parsing the text again over the same number of
steps gives the same plan (tests/test_reliability.py checks that round trip over many tags).
"""

from __future__ import annotations

import json
from typing import Any

from .plan import COMPONENTS, LoraPlan
from .syntax.format import format_number, format_tag_parts
from .syntax.parser import parse


def applied_tag(lora: LoraPlan) -> str:
    """A tag whose plan over the same steps is ``lora`` (weights per group written step by step): what the
    ``LoRA weights`` infotext records, so that an image's text reads back to the weights it was made with."""
    weights = lora.group_weights
    parts = [lora.name, f"te={_steps_text(weights['te'])}", f"unet={_steps_text(weights['unet'])}"]
    parts += [f"{group}={_steps_text(weights[group])}" for group in ("in", "mid", "out")
              if weights[group] != weights["unet"]]
    tag = lora.tag
    extra = format_tag_parts(tag, ("dyn", "lbw"))
    if lora.modules is not None:
        parts.append("module=" + ",".join(c for c in COMPONENTS if c in lora.modules))
    return f"<{tag.kind}:" + ":".join(parts + extra) + ">"


def _steps_text(vector: tuple[float, ...]) -> str:
    """``0.8`` for a constant, else ``value@step`` at step 1 and at each step where the value changes."""
    if vector.count(vector[0]) == len(vector):
        return format_number(vector[0])
    return ",".join(f"{format_number(v)}@{i}" for i, v in enumerate(vector, start=1) if i == 1 or v != vector[i - 2])


def lora_summary(plan: Any) -> str:
    """The ``LoRA weights`` value: ``<lora:ink:te=1:unet=1@1,0.25@3:in=0> <lora:oil:...>``, each LoRA's applied
    weights as a tag that plans back to them (see :func:`applied_tag`)."""
    return " ".join(applied_tag(lora) for lora in plan.loras)


def paste_tags(prompt: str, value: str) -> str:
    """``prompt`` with the tags of a pasted ``LoRA weights`` value (JSON-quoted or not) appended for every LoRA
    the prompt does not name yet: pasting an image's text back reproduces its stack."""
    text = value.strip()
    if text.startswith('"'):
        try:
            text = json.loads(text)
        except json.JSONDecodeError:
            text = text.strip('"')
    present = {tag.name for tag in parse(prompt, on_error="skip").tags}
    missing = [tag.text for tag in parse(text, on_error="skip").tags if tag.name not in present]
    return ", ".join(part for part in (prompt.rstrip(", "), " ".join(missing)) if part)
