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
# Weight rows whose column tensors a group holds on the device at once: the first ones of the schedule
# are uploaded with the group; a schedule with more distinct rows (a weight changing at every step)
# gets the others when it reaches them, the oldest dropped, so a long schedule costs no memory.
ROWS_HELD = 8


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
        self._columns = {row: group.columns(self.rows[row], device=False) for row in range(min(len(self.rows), ROWS_HELD))}
        self.everyone = group.selection(device=False)
        self._changed: dict[tuple[int | None, int], tuple[list[int] | None, torch.Tensor | None]] = {}
        for old, new in zip(self._row_of_step[:ROWS_HELD], self._row_of_step[1:ROWS_HELD]):
            if old != new and (old, new) not in self._changed:
                self._changed[(old, new)] = self._differ(old, new, device=False)

    def to_upload(self) -> list[torch.Tensor]:
        """The CPU tensors the device needs, for one :func:`batched.upload` of every group's."""
        return [*self._columns.values(), self.everyone, *(s for _, s in self._changed.values() if s is not None)]

    def take_uploaded(self, moved: Iterator[torch.Tensor]) -> None:
        """Take the device copies of :meth:`to_upload`'s tensors, in its order."""
        self._columns = {row: next(moved) for row in self._columns}
        self.everyone = next(moved)
        self._changed = {key: (select, None if s is None else next(moved)) for key, (select, s) in self._changed.items()}

    def columns(self, row: int) -> torch.Tensor:
        """Row ``row``'s (G, R) column weights on the device."""
        found = self._columns.get(row)
        if found is None:   # a row past the first ROWS_HELD: made now, the oldest other one dropped
            while len(self._columns) >= ROWS_HELD:
                del self._columns[next(r for r in self._columns if r != self.current)]
            found = self._columns[row] = self.group.columns(self.rows[row])
        return found

    def row_at(self, step: int) -> int:
        return self._row_of_step[bisect.bisect_right(self._steps, step) - 1]

    def delta(self, row: int) -> tuple[list[int] | None, torch.Tensor | None]:
        """Members whose weights differ between the current row and ``row`` (``None``: all of them), and
        the same indices on the device (cached per pair of rows)."""
        key = (self.current, row)
        if key not in self._changed:   # later in a long schedule, or a jump back (a pass started again)
            if len(self._changed) >= 4 * ROWS_HELD:
                self._changed.clear()
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
