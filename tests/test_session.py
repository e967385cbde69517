"""The host-independent session: one run at a time, per-step weights, passes, the state-dict restore guard."""

from __future__ import annotations

import pytest
import torch

from helpers_engine import assert_bitwise, lora_state_dict, snapshot, write_lora
from lora_syntax.errors import LoraError
from lora_syntax.hosts.diffusers import activate, session_for
from lora_syntax.session import LoraSessionBusyError
from lora_syntax.testing.tiny import tiny_pipeline

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    pipe = tiny_pipeline("sd15")
    write_lora(folder, "ink", lora_state_dict(pipe, seed=1))
    write_lora(folder, "oil", lora_state_dict(pipe, rank=2, seed=2))
    return folder


@pytest.fixture()
def pipe():
    return tiny_pipeline("sd15")


def weight(pipe, module=Q, component="unet"):
    return getattr(pipe, component).get_submodule(module).weight.detach().clone()


def test_nested_activate_is_refused_and_the_outer_stack_keeps_running(pipe, lora_dir):
    before = snapshot(pipe)
    with activate(pipe, "a <lora:ink:1>", lora_dirs=[lora_dir], steps=4):
        outer = weight(pipe)
        assert not torch.equal(outer, before[f"unet.{Q}.weight"])
        with pytest.raises(LoraSessionBusyError, match=r"<lora:ink>.*still running.*do not nest"):
            with activate(pipe, "a <lora:oil:1>", lora_dirs=[lora_dir], steps=4):
                pass
        with pytest.raises(LoraSessionBusyError):   # switching the write mode would restore under the run
            with activate(pipe, "a <lora:oil:1>", lora_dirs=[lora_dir], steps=4, in_place=True):
                pass
        assert torch.equal(weight(pipe), outer)   # the outer run's weights are untouched
    assert_bitwise(before, pipe)


def test_a_kept_run_is_not_active_so_the_next_run_may_start(pipe, lora_dir):
    before = snapshot(pipe)
    with activate(pipe, "a <lora:ink:1>", lora_dirs=[lora_dir], steps=4, keep=True):
        pass
    with activate(pipe, "a <lora:oil:0.5>", lora_dirs=[lora_dir], steps=4) as run:
        assert run.plan.loras[0].name == "oil"
    assert_bitwise(before, pipe)


def test_step_is_idempotent_and_order_free_and_flags_stale_conditioning(pipe, lora_dir):
    session = session_for(pipe, [lora_dir])
    before = snapshot(pipe)
    run = session.start("x <lora:ink:te=0@1,1@3:unet=1@1,0.5@2>", 4)
    assert run.change_points == (2, 3) and run.te_change_points == (3,)
    first = weight(pipe)
    change = run.step(2)
    assert change.modules > 0 and not change.reencode
    at_two = weight(pipe)
    assert run.step(2).modules == 0                      # a second-order sampler's second call writes nothing
    change = run.step(3)
    assert change.reencode                                # te weights changed: the host must re-encode
    run.encoded(3, 0.01)
    assert not run.step(3).reencode and not run.step(4).reencode
    assert run.timings.reweights[-1].reencode_seconds == 0.01
    assert run.step(1).reencode                          # jumping back to step 1 makes the step-3 encoding stale
    assert torch.equal(weight(pipe), first)
    assert torch.equal(run.step(2) and weight(pipe), at_two)
    run.end()
    assert_bitwise(before, pipe)
    with pytest.raises(LoraError, match="has ended"):
        run.step(2)


def test_a_second_pass_has_its_own_step_count(pipe, lora_dir):
    reference = tiny_pipeline("sd15")
    with activate(reference, "x <lora:ink:1>", lora_dirs=[lora_dir], steps=4):
        full = weight(reference)
    base = weight(pipe)
    session = session_for(pipe, [lora_dir])
    run = session.start("x <lora:ink:0@1,1@50%>", 10)
    assert run.change_points == (6,)
    run.step(8)
    run.begin_pass(4)                                   # a hires pass of 4 steps: the switch moves to step 3
    assert run.change_points == (3,) and run.plan.steps == 4 and run.passes == [10, 4]
    assert torch.equal(weight(pipe), base)              # the pass starts at its own step 1
    assert run.step(3).modules > 0 and torch.equal(weight(pipe), full)
    run.end()
    assert torch.equal(weight(pipe), base)


def test_a_state_dict_load_while_patched_lands_in_the_models_own_tensors(pipe, lora_dir):
    fresh = {k: v + 1.0 for k, v in pipe.unet.state_dict().items() if v.is_floating_point()}
    original = pipe.unet.get_submodule(Q).weight
    session = session_for(pipe, [lora_dir])
    run = session.start("x <lora:ink:1>", 4)
    pipe.unet.load_state_dict(fresh, strict=False)     # a checkpoint reload while the stack is applied
    assert not run.active                               # the guard ended the run and restored first
    assert pipe.unet.get_submodule(Q).weight.data.data_ptr() == original.data_ptr()
    assert torch.equal(weight(pipe), fresh[f"{Q}.weight"])
    run.end()                                           # ending afterwards changes nothing
    assert torch.equal(weight(pipe), fresh[f"{Q}.weight"])
    run = session.start("x <lora:ink:1>", 4)           # the next generation patches the new weights
    assert not torch.equal(weight(pipe), fresh[f"{Q}.weight"])
    run.end()
    assert torch.equal(weight(pipe), fresh[f"{Q}.weight"])


def test_the_guard_watches_every_patched_module_and_leaves_with_the_run(pipe, lora_dir):
    session = session_for(pipe, [lora_dir])
    run = session.start("x <lora:ink:1>", 4)
    touched = session.patcher.modules
    assert len(touched) > 1 and len(touched) == len(session.patcher.stacks)
    assert all(len(m._load_state_dict_pre_hooks) == 1 for m in touched)
    assert run.timings.load > 0
    run.end()
    assert not any(m._load_state_dict_pre_hooks for m in touched)
