"""Holding Python's cyclic garbage collector off during the engine's bulk phases.

Loading a LoRA and applying a stack each create thousands of short-lived objects per call (tensor views,
records per module) that form no reference cycles. Those allocations trigger collections, and a full one
walks every object of the host process (a whole pipeline with its text encoders): tens of milliseconds,
at a random point of the phase. Paused, the phase runs at its own speed; the collector resumes after it,
on its usual thresholds.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off inside the block (left as it was when it is already off: nesting is fine)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
