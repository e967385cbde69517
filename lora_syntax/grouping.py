"""The patcher's groups: modules of one shape written together, and where each group is in the schedule.

:mod:`lora_syntax.batched` does a group's arithmetic; this module decides which slots can join a group
(:func:`member_of`) and keeps, per group, the distinct weight rows of the stack's schedule and the device
tensors a change point needs (:class:`GroupState`), built once per stack.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from . import batched

if TYPE_CHECKING:
    from .patcher import _Slot

# dtypes whose fused weights are written straight into their target
DIRECT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class GroupState:
    """A group's place in the stack's schedule: its distinct weight rows and which one it shows.

    The members' weights are read once per stack: each distinct row of weights (one tuple per member)
    becomes a (G, R) column tensor on the device, so a change point costs a look-up and one write per
    group, nothing per module."""

    def __init__(self, group: batched.Group, slots: list[_Slot]) -> None:
        self.group, self.slots = group, slots
        steps = sorted({1, *(p for slot in slots for p in slot.stack.change_points())})
        self._steps = steps                 # the steps at which some member's weights may change
        keys: dict[tuple, int] = {}
        self._row_of_step = []
        for step in steps:
            key = tuple(slot.stack.weights_at(step) for slot in slots)
            self._row_of_step.append(keys.setdefault(key, len(keys)))
        self.rows = list(keys)
        self.zero_rows = {i for i, row in enumerate(self.rows) if not any(any(w) for w in row)}
        self.current: int | None = None     # the row the members show (None: not written yet)
        self.pristine = all(slot.pristine for slot in slots)   # every member shows its original tensor
        self.installed = False              # the members' buffers are installed
        self._addresses = [(m.target.data_ptr(), m.original.data_ptr()) for m in group.members]
        # on the CPU until :meth:`take_uploaded`: each row's column weights, every member's index, and the
        # members that change between consecutive rows of the schedule (what its change points write)
        self.columns = [group.columns(row, device=False) for row in self.rows]
        self.everyone = group.selection(device=False)
        self._changed: dict[tuple[int | None, int], tuple[list[int] | None, torch.Tensor | None]] = {}
        for old, new in zip(self._row_of_step, self._row_of_step[1:]):
            if old != new and (old, new) not in self._changed:
                self._changed[(old, new)] = self._differ(old, new, device=False)

    def to_upload(self) -> list[torch.Tensor]:
        """The CPU tensors the device needs, for one :func:`batched.upload` of every group's."""
        return [*self.columns, self.everyone, *(s for _, s in self._changed.values() if s is not None)]

    def take_uploaded(self, moved: Iterator[torch.Tensor]) -> None:
        """Take the device copies of :meth:`to_upload`'s tensors, in its order."""
        self.columns = [next(moved) for _ in self.columns]
        self.everyone = next(moved)
        self._changed = {key: (select, None if s is None else next(moved)) for key, (select, s) in self._changed.items()}

    def row_at(self, step: int) -> int:
        return self._row_of_step[bisect.bisect_right(self._steps, step) - 1]

    def delta(self, row: int) -> tuple[list[int] | None, torch.Tensor | None]:
        """Members whose weights differ between the current row and ``row`` (``None``: all of them), and
        the same indices on the device (cached per pair of rows)."""
        key = (self.current, row)
        if key not in self._changed:   # a jump the schedule does not make (a pass started again)
            self._changed[key] = self._differ(self.current, row, device=True)
        return self._changed[key]

    def _differ(self, old: int | None, new: int, device: bool) -> tuple[list[int] | None, torch.Tensor | None]:
        if old is None:
            return None, None
        differ = [g for g, (a, b) in enumerate(zip(self.rows[old], self.rows[new])) if a != b]
        if len(differ) == len(self.slots):
            return None, None
        return differ, self.group.selection(differ, device=device)

    def addresses_hold(self) -> bool:
        """Whether every member's parameter still shows its buffer or its original (no host swap)."""
        return all(slot.weight.param.data_ptr() in pair for slot, pair in zip(self.slots, self._addresses))


def share_factors(group: batched.Group, slots: list[_Slot]) -> None:
    """Point the slots' factors at the group's stacks (so that they are held once), unless the stacks
    are the slots' own factors side by side already (:func:`batched.stacked` made no copy)."""
    if group.ups.data_ptr() == slots[0].low_up.data_ptr() and group.downs.data_ptr() == slots[0].low_down.data_ptr():
        return
    for g, slot in enumerate(slots):
        slot.low_up, slot.low_down = group.ups[g], group.downs[g]


def member_of(slot: _Slot) -> batched.Member | None:
    """A pure low-rank module whose fused weight can go straight into its target, as a group member."""
    if slot.other_terms or slot.bias is not None or not slot.low_terms:
        return None
    target, original = slot.weight.target, slot.weight.original
    if (original.device != target.device or target.dtype != original.dtype or target.dtype not in DIRECT_DTYPES
            or not target.is_contiguous() or original is target or slot.low_up.device != target.device):
        return None
    if original.dim() != 2:   # convolutions: (out, in*k) views
        original, target = original.reshape(original.shape[0], -1), target.view(original.shape[0], -1)
    return batched.Member(original, target, slot.low_up, slot.low_down, slot.low_ranks, slot.low_scales,
                          slot.low_exact)
