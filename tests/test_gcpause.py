"""The engine's bulk phases run with Python's cyclic collector paused, and leave it as they found it."""

from __future__ import annotations

import gc

import pytest
import torch

from lora_syntax import patcher as patcher_module
from lora_syntax.adapters.lora import LoraAdapter
from lora_syntax.gcpause import collector_paused
from lora_syntax.patcher import ModuleStack, Patcher, Term
from lora_syntax.targets import ModuleTarget


def test_the_collector_is_off_inside_and_back_after_even_on_errors_and_nested():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()          # the inner block does not turn it back on early
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()          # off before: left off
    finally:
        gc.enable()


def test_patcher_load_and_apply_run_with_the_collector_paused(monkeypatch):
    seen = []
    real = patcher_module.prepare_factors

    def watching(slots):
        seen.append(gc.isenabled())
        return real(slots)

    monkeypatch.setattr(patcher_module, "prepare_factors", watching)
    net = torch.nn.Linear(6, 4, bias=False)
    stack = ModuleStack(ModuleTarget("net", ""), (Term("a", LoraAdapter(up=torch.ones(4, 2), down=torch.ones(2, 6)),
                                                       (0.5,)),))
    patcher = Patcher({"net": net})
    patcher.load([stack])
    patcher.apply(1)
    patcher.restore()
    assert seen == [False] and gc.isenabled()
