"""SD.Next's step/pass mapping and conditioning swap (lora_syntax.hosts.sdnext), on a tiny pipeline, no SD.Next."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers_engine import assert_bitwise, lora_state_dict, snapshot, write_lora
from lora_syntax.hosts.diffusers import session_for
from lora_syntax.hosts.sdnext import SdnextRun, guidance_embeds, pass_steps, plan_step
from lora_syntax.testing.tiny import tiny_pipeline

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    write_lora(folder, "ink", lora_state_dict(tiny_pipeline("sd15"), seed=1))
    return folder


def _sample(sdrun, pipe, total, kwargs_of=lambda i: {"prompt_embeds": torch.zeros(2, 3, 4)}):
    """What SD.Next's pipeline does: ``total`` steps, our callback after each; the weight seen by each step."""
    fake = SimpleNamespace(num_timesteps=total)
    seen = []
    for index in range(total):
        seen.append(pipe.unet.get_submodule(Q).weight.detach().clone())
        sdrun.on_step_end(fake, index, kwargs_of(index))
    return seen


def test_plan_step_and_guidance_layout():
    assert plan_step(0) == 2 and plan_step(6) == 8
    neg, pos = torch.zeros(1, 2), torch.ones(1, 2)
    assert torch.equal(guidance_embeds(neg, pos, True), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert guidance_embeds(None, pos, True) is pos and guidance_embeds(neg, pos, False) is pos
    assert pass_steps(SimpleNamespace(num_timesteps=5), 8) == 5 and pass_steps(SimpleNamespace(), 8) == 8


def test_steps_of_a_pass_and_a_hires_pass_with_its_own_count(lora_dir):
    pipe = tiny_pipeline("sd15")
    before = snapshot(pipe)
    session = session_for(pipe, [lora_dir])
    run = session.start("a <lora:ink:1@1,0@3>", 4)
    sdrun = SdnextRun(run, lambda *a: (None, False), expected_passes=2)
    original = before[f"unet.{Q}.weight"]
    base = _sample(sdrun, pipe, 4)
    assert [torch.equal(w, original) for w in base] == [False, False, True, True]   # 1-based step 3 switches
    hires = _sample(sdrun, pipe, 6)            # the hires pass: its own 6 steps, step 1 weights again first
    assert [torch.equal(w, original) for w in hires] == [False, False, True, True, True, True]
    assert run.passes == [4, 6] and sdrun.state.passes == 2
    assert [(r.step, r.modules > 0) for r in run.timings.reweights] == [(3, True), (1, True), (3, True)]
    run.end()
    assert_bitwise(before, pipe)


def test_a_shorter_first_pass_is_replanned_and_the_last_pass_does_not_reset(lora_dir):
    pipe = tiny_pipeline("sd15")
    original = pipe.unet.get_submodule(Q).weight.detach().clone()
    session = session_for(pipe, [lora_dir])
    run = session.start("a <lora:ink:1@1,0@50%>", 10)
    sdrun = SdnextRun(run, lambda *a: (None, False))
    seen = _sample(sdrun, pipe, 4)             # img2img: the pipeline samples 4 of the 10 requested
    assert run.passes == [4] and run.plan.steps == 4
    assert [torch.equal(w, original) for w in seen] == [False, False, True, True]
    assert torch.equal(pipe.unet.get_submodule(Q).weight, original)   # no step-1 write after the last pass
    run.end()


def test_stale_conditioning_is_reencoded_once_and_handed_back(lora_dir):
    pipe = tiny_pipeline("sd15")
    session = session_for(pipe, [lora_dir])
    run = session.start("a <lora:ink:1:te=1@1,0@3>", 5)
    calls = []

    def encode(_pipe, step, kwargs):
        calls.append(step)
        return torch.full_like(kwargs["prompt_embeds"], 7.0), True

    sdrun = SdnextRun(run, encode)
    answers = []
    fake = SimpleNamespace(num_timesteps=5)
    for index in range(5):
        answers.append(sdrun.on_step_end(fake, index, {"prompt_embeds": torch.zeros(2, 3, 4)})["prompt_embeds"])
    assert calls == [3]                         # once, at the change point
    assert [float(a[0, 0, 0]) for a in answers] == [0.0, 7.0, 7.0, 7.0, 0.0]   # kept while SD.Next resets it
    assert run.timings.reweights[0].reencode_seconds > 0
    run.end()
