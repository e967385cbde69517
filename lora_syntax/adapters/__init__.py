"""Adapter types (one module each, a pure fp32 delta function per type) and the registry that picks them.

See ``docs/adapters.md`` for the table of types, keys, formulas and scale rules.
"""

from .base import Adapter
from .boft import BoftAdapter
from .dora import DoraAdapter
from .full import FullAdapter
from .glora import GloraAdapter
from .ia3 import Ia3Adapter
from .loha import LohaAdapter
from .lokr import LokrAdapter
from .lora import LoraAdapter
from .norm import NormAdapter
from .oft import OftAdapter
from .registry import ADAPTER_TYPES, build_adapter, sliced
from .rowslice import RowSlice

__all__ = [
    "ADAPTER_TYPES", "Adapter", "BoftAdapter", "DoraAdapter", "FullAdapter", "GloraAdapter", "Ia3Adapter",
    "LohaAdapter",
    "LokrAdapter", "LoraAdapter", "NormAdapter", "OftAdapter", "RowSlice", "build_adapter", "sliced",
]
