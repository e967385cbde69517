"""Key dialects and the registry that picks one per file.

``DIALECTS`` is ordered: the dialect with the highest :meth:`score` wins and, on a tie, the LATER one
(more specific dialects are appended after the general ones). Adding a dialect is one line in the
list below (or in a family's tuple, as ``FLUX_DIALECTS``).
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import LoraFileError
from .base import Grouped, KeyDialect, ModuleParams
from .flux_dialects import FLUX_DIALECTS
from .kohya import KohyaDialect
from .legacy import AttnProcessorDialect, CloneofsimoDialect
from .peft import PeftDialect

DIALECTS: list[KeyDialect] = [
    KohyaDialect(),
    PeftDialect(),
    AttnProcessorDialect(),
    CloneofsimoDialect(),
    *FLUX_DIALECTS,
]


def pick_dialect(keys: Collection[str], *, name: str = "LoRA") -> KeyDialect:
    """The dialect that recognises most of ``keys``; :class:`LoraFileError` when none knows any."""
    best, best_score = None, 0.0
    for dialect in DIALECTS:
        score = dialect.score(keys)
        if score > 0 and score >= best_score:
            best, best_score = dialect, score
    if best is None:
        sample = ", ".join(key if key.strip() else f"{key!r} (an empty name)" for key in sorted(keys)[:3])
        raise LoraFileError(f"{name!r}: no known LoRA key layout (kohya, LyCORIS, diffusers/PEFT...) matches "
                            f"its keys, e.g. {sample or '(no tensors)'}; is it a LoRA file?")
    return best


__all__ = ["DIALECTS", "Grouped", "KeyDialect", "ModuleParams", "pick_dialect"]
