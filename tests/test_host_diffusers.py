"""The diffusers host on a tiny SD1.5 pipeline: equality with diffusers' fuse, per-step weights seen by the
UNet, text-encoder schedules, bitwise restores on every exit path."""

from __future__ import annotations

import pytest
import torch

from helpers_engine import assert_bitwise, lora_state_dict, snapshot, write_lora
from lora_syntax.errors import LoraError, LoraNameError
from lora_syntax.hosts.diffusers import activate, generate, restore
from lora_syntax.library import LoraLibrary
from lora_syntax.testing.tiny import tiny_pipeline

STEPS = 4
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    pipe = tiny_pipeline("sd15")
    write_lora(folder, "ink", lora_state_dict(pipe, seed=1))
    write_lora(folder, "oil", lora_state_dict(pipe, rank=2, seed=2))
    bad = lora_state_dict(pipe, seed=3)
    key = f"unet.{Q}.lora_A.weight"
    bad[key] = torch.randn(bad[key].shape[0], bad[key].shape[1] + 3)   # does not fit to_q
    write_lora(folder, "misfit", bad)
    return folder


@pytest.fixture()
def pipe():
    return tiny_pipeline("sd15")


def call(pipe, run, steps=STEPS, output_type="latent", **kwargs):
    return pipe(run.prompt, num_inference_steps=steps, height=32, width=32, output_type=output_type,
                generator=torch.Generator().manual_seed(0), callback_on_step_end=run.callback,
                callback_on_step_end_tensor_inputs=run.callback_tensor_inputs, **kwargs).images


def record_unet(pipe, what):
    """Record, per UNet call, the to_q weight and the encoder hidden states it sees."""
    seen = []

    def hook(module, args, kwargs):
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        seen.append({"w": module.get_submodule(Q).weight.detach().clone(), "ehs": ehs.detach().clone()}[what])

    return seen, pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_fused_weights_equal_diffusers(pipe, lora_dir):
    ours = {}
    with activate(pipe, "a cat <lora:ink:0.7> <lora:oil:-0.4>", lora_dirs=[lora_dir], steps=2,
                  architecture="sd15") as run:
        assert run.prompt.strip() == "a cat"
        for comp in ("unet", "text_encoder"):
            for name, module in getattr(pipe, comp).named_modules():
                if isinstance(module, torch.nn.Linear):
                    ours[(comp, name)] = module.weight.detach().clone()
    ref = tiny_pipeline("sd15")
    ref.load_lora_weights(str(lora_dir / "ink.safetensors"), adapter_name="ink")
    ref.load_lora_weights(str(lora_dir / "oil.safetensors"), adapter_name="oil")
    ref.set_adapters(["ink", "oil"], [0.7, -0.4])
    ref.fuse_lora(components=["unet", "text_encoder"], adapter_names=["ink", "oil"])
    compared = 0
    for (comp, name), weight in ours.items():
        module = getattr(ref, comp).get_submodule(name)
        base = getattr(module, "base_layer", module)
        if base is not module:
            compared += 1
            torch.testing.assert_close(weight, base.weight, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(weight, module.weight), name
    assert compared > 20


def test_callback_changes_weights_exactly_at_change_points(pipe, lora_dir):
    before = snapshot(pipe)
    w0 = pipe.unet.get_submodule(Q).weight.detach().clone()
    seen, handle = record_unet(pipe, "w")
    with activate(pipe, "a cat <lora:ink:1.0@1,0.25@3,0.5@4>", lora_dirs=[lora_dir], steps=STEPS,
                  architecture="sd15") as run:
        call(pipe, run)
        weights = run.plan.loras[0].weights("unet", "IN01")
        assert [r.step for r in run.timings.reweights] == [3, 4]
    handle.remove()
    assert weights == (1.0, 1.0, 0.25, 0.5) and len(seen) == STEPS
    delta = seen[0] - w0
    for step, weight in enumerate(weights, start=1):
        torch.testing.assert_close(seen[step - 1] - w0, delta * weight, rtol=1e-4, atol=1e-6)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert_bitwise(before, pipe)


def test_te_schedule_changes_embeddings_from_switch_step(pipe, lora_dir):
    seen, handle = record_unet(pipe, "ehs")
    with activate(pipe, "a cat <lora:ink:te=0@1,1@3:unet=0>", lora_dirs=[lora_dir], steps=STEPS,
                  architecture="sd15") as run:
        assert run.callback_tensor_inputs == ["prompt_embeds"]
        call(pipe, run)
    with activate(pipe, "a cat <lora:ink:te=1:unet=0>", lora_dirs=[lora_dir], steps=2, architecture="sd15") as run:
        call(pipe, run, steps=1)
    base = tiny_pipeline("sd15")
    seen_base, h2 = record_unet(base, "ehs")
    base("a cat", num_inference_steps=1, height=32, width=32, output_type="latent")
    handle.remove(), h2.remove()
    scheduled, full_te = seen[:STEPS], seen[STEPS]
    assert torch.equal(scheduled[0], seen_base[0]) and torch.equal(scheduled[1], seen_base[0])
    torch.testing.assert_close(scheduled[2], full_te, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scheduled[3], full_te, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scheduled[2], seen_base[0])


def test_image_differs_from_base_and_zero_weights_equal_base(pipe, lora_dir):
    base = pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images
    with activate(pipe, "a cat <lora:ink:0> <lora:oil:0>", lora_dirs=[lora_dir], steps=2,
                  architecture="sd15") as run:
        assert run.timings.applied_modules == 0 and run.timings.backup_bytes == 0
        zero = call(pipe, run, steps=2, output_type="pt")
    with activate(pipe, "a cat <lora:ink:1>", lora_dirs=[lora_dir], steps=2, architecture="sd15") as run:
        styled = call(pipe, run, steps=2, output_type="pt")
    assert torch.equal(zero, base)
    assert (styled - base).abs().mean() > 1e-3


def test_duplicate_tags_merge_into_one_file(pipe, lora_dir):
    with activate(pipe, "a cat <lora:ink:0.5> <lora:ink:0.25>", lora_dirs=[lora_dir], steps=2,
                  architecture="sd15") as run:
        merged = pipe.unet.get_submodule(Q).weight.detach().clone()
        assert len([w for w in run.warnings if "ink" in w and "once" in w]) == 1   # the plan's, not repeated
    with activate(pipe, "a cat <lora:ink:0.5> <lora:ink.safetensors:0.25>", lora_dirs=[lora_dir], steps=2,
                  architecture="sd15") as run:   # two names, one file: only the engine can tell
        assert torch.equal(pipe.unet.get_submodule(Q).weight, merged)
        assert [w for w in run.warnings if "once" in w] == [
            "tags 'ink', 'ink.safetensors' use the same file ink.safetensors; it is applied once with their "
            "weights added"]
    with activate(pipe, "a cat <lora:ink:0.75>", lora_dirs=[lora_dir], steps=2, architecture="sd15"):
        single = pipe.unet.get_submodule(Q).weight.detach().clone()
    assert torch.equal(merged, single)


def test_kept_run_is_reused_then_restored(pipe, lora_dir):
    before = snapshot(pipe)
    library = LoraLibrary([lora_dir])
    with activate(pipe, "a cat <lora:ink:0.8>", library=library, steps=2, architecture="sd15", keep=True) as run:
        assert run.timings.applied_modules > 0
    with activate(pipe, "a cat <lora:ink:0.8>", library=library, steps=2, architecture="sd15", keep=True) as run:
        assert run.timings.applied_modules == 0
    restore(pipe)
    assert_bitwise(before, pipe)


def test_errors_and_interrupts_restore_bitwise(pipe, lora_dir):
    before = snapshot(pipe)
    with pytest.raises(LoraNameError):
        with activate(pipe, "a cat <lora:ink:1> <lora:nosuch:1>", lora_dirs=[lora_dir], steps=2,
                      architecture="sd15"):
            pass
    assert_bitwise(before, pipe)

    with pytest.raises(LoraError, match="to_q"):
        with activate(pipe, "a cat <lora:ink:1> <lora:misfit:1>", lora_dirs=[lora_dir], steps=2,
                      architecture="sd15"):
            pass
    assert_bitwise(before, pipe)

    def interrupt(p, i, t, kw):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with activate(pipe, "a cat <lora:ink:1@1,0.5@2,0.2@3>", lora_dirs=[lora_dir], steps=3,
                      architecture="sd15") as run:
            def ctrl_c_after_reweight(p, i, t, kw):
                out = run.callback(p, i, t, kw)
                if i == 1:
                    assert [r.step for r in run.timings.reweights] == [2, 3]
                    raise KeyboardInterrupt
                return out

            pipe(run.prompt, num_inference_steps=3, height=32, width=32, output_type="latent",
                 callback_on_step_end=ctrl_c_after_reweight)
    assert_bitwise(before, pipe)
    with pytest.raises(LoraError):
        generate(pipe, "a cat <lora:ink:1>", lora_dirs=[lora_dir], steps=2, architecture="sd15",
                 callback_on_step_end=interrupt)
    assert_bitwise(before, pipe)
    out = generate(pipe, "a cat <lora:ink:1>", lora_dirs=[lora_dir], steps=2, architecture="sd15",
                   height=32, width=32, output_type="pt")
    assert out.images.shape == (1, 3, 32, 32)
    assert_bitwise(before, pipe)


def test_in_place_runs_keep_the_models_own_tensors(pipe, lora_dir):
    # for CUDA graphs: same storage, new values; the default run swaps in engine buffers instead
    before = snapshot(pipe)
    module = pipe.unet.get_submodule(Q)
    own = module.weight.data_ptr()
    with activate(pipe, "a cat <lora:ink:0.5@1,1@2>", lora_dirs=[lora_dir], steps=2, architecture="sd15",
                  in_place=True) as run:
        assert module.weight.data_ptr() == own and not torch.equal(module.weight, before["unet." + Q + ".weight"])
        fused = module.weight.detach().clone()
        call(pipe, run, steps=2)                     # the change point writes into the same tensor
        assert module.weight.data_ptr() == own and not torch.equal(module.weight, fused)
    assert_bitwise(before, pipe)
    with activate(pipe, "a cat <lora:ink:0.5>", lora_dirs=[lora_dir], steps=2, architecture="sd15",
                  in_place=False):
        assert module.weight.data_ptr() != own
        assert torch.equal(module.weight, fused)     # the same values either way
    assert_bitwise(before, pipe)
    assert module.weight.data_ptr() == own
