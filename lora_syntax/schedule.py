"""A weight schedule resolved over the steps of a run.

Keyframe ``w@K`` starts at step K (integer, 1-based; 0 means 1), or at floor(f x steps) + 1 for a
fraction f (``0.5``) or a percentage (``50%``). Switch (default): the weight is the value of the last
keyframe started, 0 before the first. ``lerp(...)``: linear between keyframes, the last value after
the last keyframe, 0 before the first.
"""

from __future__ import annotations

from functools import lru_cache

from .syntax.model import Schedule


def _points(schedule: Schedule, steps: int) -> list[tuple[int, float]]:
    """(start step, value) sorted by step; for equal steps the keyframe written last wins."""
    points: dict[int, float] = {}
    for frame in schedule.keyframes:
        points[frame.start_step(steps)] = frame.value
    return sorted(points.items())


def _switch(points: list[tuple[int, float]], steps: int) -> tuple[float, ...]:
    """Each keyframe's value from its step to the next keyframe's, filled a run at a time (not step by step)."""
    values: list[float] = []
    current = 0.0
    for step, value in points:
        if step > steps:
            break
        values.extend([current] * (step - 1 - len(values)))
        current = value
    values.extend([current] * (steps - len(values)))
    return tuple(values)


def _lerp(points: list[tuple[int, float]], steps: int) -> tuple[float, ...]:
    """0 before the first keyframe, a line between neighbours, the last value after: one segment at a time."""
    values = [0.0] * min(points[0][0] - 1, steps)
    for (k0, v0), (k1, v1) in zip(points, points[1:]):
        values.extend(v0 + (v1 - v0) * (step - k0) / (k1 - k0) for step in range(k0, min(k1, steps + 1)))
    values.extend([points[-1][1]] * (steps - len(values)))
    return tuple(values)


@lru_cache(maxsize=4096)
def resolve(schedule: Schedule, steps: int) -> tuple[float, ...]:
    """The weight at steps 1..``steps`` (index 0 = step 1)."""
    if steps < 1:
        return ()
    if schedule.is_constant:
        return (schedule.keyframes[0].value,) * steps
    points = _points(schedule, steps)
    return _lerp(points, steps) if schedule.interpolation == "lerp" else _switch(points, steps)


@lru_cache(maxsize=4096)
def change_steps(schedule: Schedule, steps: int) -> frozenset[int]:
    """Steps >= 2 at which the resolved weight differs from the step before.

    A switch schedule changes only at its keyframes, so they are read off the keyframes without
    expanding every step (planning a cold prompt stays cheap); lerp changes at every step of a ramp."""
    if steps < 2 or schedule.is_constant:
        return frozenset()
    if schedule.interpolation == "lerp":
        values = resolve(schedule, steps)
        return frozenset(i + 2 for i, (a, b) in enumerate(zip(values, values[1:])) if a != b)
    return frozenset(_switch_changes(_points(schedule, steps), steps))


def _switch_changes(points: list[tuple[int, float]], steps: int):
    """Keyframe steps inside the run whose value differs from the one before (0 before the first)."""
    previous = 0.0
    for step, value in points:
        if step > steps:
            return
        if step >= 2 and value != previous:
            yield step
        previous = value


def peak(schedule: Schedule, steps: int) -> float:
    """The largest |weight| over steps 1..``steps``; a constant or a switch needs no expansion (a switch
    takes the values of its keyframes inside the run, and 0 before the first)."""
    if schedule.is_constant:
        return abs(schedule.keyframes[0].value)
    if schedule.interpolation == "lerp":
        return max(map(abs, resolve(schedule, steps)))
    points = _points(schedule, steps)
    reached = [abs(value) for step, value in points if step <= steps]
    if points[0][0] > 1:
        reached.append(0.0)
    return max(reached)
