"""Per-module stacks from plan entries (lora_syntax/stack.py): weights per block, zero terms dropped."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_syntax.adapters.lora import LoraAdapter
from lora_syntax.stack import StackEntry, module_stacks
from lora_syntax.targets import LoadedLora, ModulePatch, ModuleTarget


class CountingPlan:
    """A plan entry whose weights depend on the block, counting how often they are asked for."""

    name, dyn, is_zero = "ink", None, False

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def weights(self, component: str, block: str | None = None) -> tuple[float, ...]:
        self.asked.append((component, block))
        return (0.0, 0.0) if block == "OUT00" else (0.5, 1.0 if block == "IN01" else 0.25)


def test_weights_are_asked_once_per_block_and_shared_by_its_modules():
    adapter = LoraAdapter(up=torch.ones(2, 1), down=torch.ones(1, 2))
    blocks = ["IN01"] * 40 + ["M00"] * 30 + ["OUT00"] * 5 + [None] * 3
    patches = tuple(ModulePatch(ModuleTarget("unet", f"m{i}", block), adapter) for i, block in enumerate(blocks))
    plan = CountingPlan()
    entry = StackEntry("ink", LoadedLora(Path("ink.safetensors"), "sd15", "kohya", patches), (plan,))
    stacks = module_stacks([entry])
    assert sorted(plan.asked, key=str) == sorted([("unet", "IN01"), ("unet", "M00"), ("unet", "OUT00"),
                                                  ("unet", None)], key=str)
    assert len(stacks) == 73                                     # OUT00 is at 0 throughout: dropped
    by_module = {s.target.module: s.terms[0].weights for s in stacks}
    assert by_module["m0"] == (0.5, 1.0) and by_module["m45"] == (0.5, 0.25) and by_module["m77"] == (0.5, 0.25)
    assert by_module["m0"] is by_module["m39"]                   # one tuple per block
