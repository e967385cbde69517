"""The plan's shortcuts (lazy vectors, change points and peaks read off keyframes, shared stack entries)
give exactly what expanding every step gives."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_syntax import schedule as schedule_module
from lora_syntax.plan import build_plan
from lora_syntax.syntax import parse

from test_syntax_properties import schedule as schedule_text, tag_text

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def step_by_step(schedule, steps: int) -> tuple[float, ...]:
    """The documented semantics, one step at a time (the reference the fast paths must match)."""
    points = sorted({frame.start_step(steps): frame.value for frame in schedule.keyframes}.items())
    values = []
    for step in range(1, steps + 1):
        started = [(k, v) for k, v in points if k <= step]
        if not started:
            values.append(0.0)
        elif schedule.interpolation == "switch" or started[-1] == points[-1]:
            values.append(started[-1][1])
        else:
            (k0, v0), (k1, v1) = started[-1], points[len(started)]
            values.append(v0 + (v1 - v0) * (step - k0) / (k1 - k0))
    return tuple(values)


@SETTINGS
@given(schedule_text(), st.integers(1, 70))
def test_schedule_shortcuts_match_the_expansion(text: str, steps: int) -> None:
    tag = parse(f"<lora:x:{text}>").tags[0]
    expanded = step_by_step(tag.strength, steps)
    assert schedule_module.resolve(tag.strength, steps) == expanded
    changes = {i + 2 for i, (a, b) in enumerate(zip(expanded, expanded[1:])) if a != b}
    assert schedule_module.change_steps(tag.strength, steps) == changes
    assert schedule_module.peak(tag.strength, steps) == max(map(abs, expanded))


@SETTINGS
@given(st.lists(tag_text(), min_size=1, max_size=4), st.integers(1, 60),
       st.sampled_from([None, "sd15", "sdxl", "flux"]))
def test_lazy_plan_matches_eager_expansion(texts: list[str], steps: int, architecture: str | None) -> None:
    plan = build_plan(parse(" ".join(texts)), steps, architecture=architecture)
    for lora in plan.loras:
        for group, vector in lora.group_weights.items():
            assert vector == step_by_step(_schedule_of(lora.tag, group), steps)
        for component, block in (("text_encoder", None), ("unet", "IN04"), ("unet", "M00"), ("unet", None),
                                 ("transformer", "S03"), ("transformer_2", "OUT08")):
            weights = lora.weights(component, block)
            assert len(weights) == steps and all(lora.weight(component, block, s) == weights[s - 1]
                                                 for s in (1, steps))
        for point in lora.change_points:
            assert 2 <= point <= steps
    assert plan.change_points == tuple(sorted({p for lora in plan.loras for p in lora.change_points}))
    again = build_plan(parse(" ".join(texts)), steps, architecture=architecture)  # from the caches
    assert again.warnings == plan.warnings and again.loras == plan.loras


def _schedule_of(tag, group: str):
    """The documented defaults: te = te or strength or 1; unet = unet or strength or te; in/mid/out = key or unet."""
    one = parse("<lora:x:1>").tags[0].strength
    te = tag.te or tag.strength or one
    unet = tag.unet or tag.strength or te
    return {"te": te, "unet": unet, "in": tag.in_ or unet, "mid": tag.mid or unet, "out": tag.out or unet}[group]
