"""The host-independent part of the A1111/Forge host (lora_syntax/hosts/a1111.py): step and pass counts, the
conditioning swap driven by denoiser calls, storage refusal. No host needed."""

from __future__ import annotations

import pytest
import torch

from helpers_engine import lora_state_dict, write_lora
from lora_syntax.hosts.a1111 import StepHook, pass_steps, plan_step, storage_refusal
from lora_syntax.hosts.webui import tag_text
from lora_syntax.keymaps.build import tree_from_pipeline
from lora_syntax.keymaps.tree import pipeline_components
from lora_syntax.library import LoraLibrary
from lora_syntax.session import EngineSession
from lora_syntax.testing.tiny import tiny_pipeline


@pytest.mark.parametrize("steps,denoising,fix,expected", [(20, None, False, 20), (8, 0.5, False, 5),
                                                            (20, 1.0, False, 20), (20, 0.75, True, 20),
                                                            (10, 0.33, False, 4)])
def test_pass_steps(steps, denoising, fix, expected):
    assert pass_steps(steps, denoising=denoising, fix_steps=fix) == expected


def test_plan_step_counts_calls_as_the_host_does():
    assert [plan_step(c, 4, 4) for c in range(4)] == [1, 2, 3, 4]
    assert [plan_step(c, 4, 8) for c in range(7)] == [1, 1, 2, 2, 3, 3, 4]   # second order: 2 calls per step


def test_tag_text_rebuilds_the_hosts_pieces():
    assert tag_text("lora", ["ink", "0.5@1,1@3", "te=0"]) == "<lora:ink:0.5@1,1@3:te=0>"


def test_storage_refusal_names_fp8_and_quantized():
    fp8 = torch.nn.Linear(4, 4).to(torch.float8_e4m3fn)
    assert "float8_e4m3fn" in storage_refusal({"unet": fp8})
    quantized = torch.nn.Linear(4, 4)
    quantized.weight.bnb_quantized = True
    assert "quantized" in storage_refusal({"unet": quantized})
    assert storage_refusal({"unet": torch.nn.Linear(4, 4).half()}) is None


@pytest.fixture()
def session(tmp_path):
    pipe = tiny_pipeline("sd15")
    write_lora(tmp_path, "ink", lora_state_dict(pipe, seed=1))
    return pipe, EngineSession(pipeline_components(pipe), tree_from_pipeline(pipe, "sd15"), LoraLibrary([tmp_path]))


def test_hook_reencodes_once_per_text_encoder_segment_and_swaps_every_call_after(session):
    pipe, engine = session
    run = engine.start("a cat <lora:ink:te=0@1,1@3:unet=1>", 4)
    encodes = []
    hook = StepHook(run, lambda: encodes.append(run.te_segment(run._current)) or f"enc{len(encodes)}",
                    lambda encoded, call: (f"{encoded}/c{call}", f"{encoded}/u{call}"))
    denoiser = object()
    swaps = [hook.before_call(denoiser, call, 4, 8) for call in range(8)]   # second-order: steps 1,1,2,2,3,3,4,4
    assert [s.step for s in swaps] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [s.replaced for s in swaps] == [False] * 4 + [True] * 4
    assert [s.cond for s in swaps[4:]] == ["enc1/c4", "enc1/c5", "enc1/c6", "enc1/c7"]
    assert encodes == [1]
    run.end()


def test_hook_starts_a_pass_for_a_new_denoiser_with_its_own_count(session):
    pipe, engine = session
    run = engine.start("a cat <lora:ink:0@1,1@50%:te=0>", 4)
    hook = StepHook(run, lambda: None, lambda encoded, call: (None, None))
    first, hires = object(), object()
    [hook.before_call(first, call, 4, 4) for call in range(4)]
    assert run.plan.steps == 4 and hook.calls == [1, 2, 3, 4]
    hook.new_pass(6)                       # the host announces the hires pass before encoding its conds
    assert run.plan.steps == 6 and run.passes == [4, 6]
    [hook.before_call(hires, call, 6, 6) for call in range(6)]
    assert run.passes == [4, 6]            # not started twice
    assert hook.calls[4:] == [1, 2, 3, 4, 5, 6]
    run.end()


def test_hook_replans_when_the_denoiser_runs_another_count(session):
    pipe, engine = session
    run = engine.start("a cat <lora:ink:0@1,1@50%:te=0>", 8)
    hook = StepHook(run, lambda: None, lambda encoded, call: (None, None))
    hook.before_call(object(), 0, 5, 5)    # img2img ran 5 steps, not the 8 the plan assumed
    assert run.plan.steps == 5
    run.end()
