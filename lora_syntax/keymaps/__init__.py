"""Model module trees, per-architecture key tables, block ids and architecture detection.

    tree_from_pipeline(pipe, architecture=None) -> ModelTree     a live diffusers pipeline
    reference_tree(architecture) -> ModelTree                   full-size model on the meta device
    detect_architecture(shapes, metadata=None) -> str | None    which family a LoRA file is for
    block_of(architecture, component, module, config) -> str    lora-block-weight block id
"""

from .blockids import block_of
from .build import tree_from_pipeline
from .detect import detect_architecture
from .reference import reference_tree
from .tree import ModelTree, ModuleInfo

__all__ = ["ModelTree", "ModuleInfo", "block_of", "detect_architecture", "reference_tree", "tree_from_pipeline"]
