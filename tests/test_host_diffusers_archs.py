"""The diffusers host on tiny SDXL and FLUX pipelines: te re-encoding through the callback, bitwise restore."""

from __future__ import annotations

import torch

from helpers_engine import assert_bitwise, lora_state_dict, snapshot, write_lora
from lora_syntax.hosts.diffusers import activate
from lora_syntax.testing.tiny import tiny_pipeline


def test_sdxl_te_schedule_replaces_embeddings_and_pooled(tmp_path):
    pipe = tiny_pipeline("sdxl")
    write_lora(tmp_path, "ink", lora_state_dict(pipe, ("unet", "text_encoder", "text_encoder_2"), seed=5))
    before = snapshot(pipe)
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs["encoder_hidden_states"].clone(), kwargs["added_cond_kwargs"]["text_embeds"].clone()))

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    with activate(pipe, "a cat <lora:ink:te=0@1,1@2:unet=0>", lora_dirs=[tmp_path], steps=3,
                  architecture="sdxl") as run:
        assert run.callback_tensor_inputs == ["prompt_embeds", "add_text_embeds"]
        pipe(run.prompt, num_inference_steps=3, height=32, width=32, output_type="latent",
             callback_on_step_end=run.callback, callback_on_step_end_tensor_inputs=run.callback_tensor_inputs)
        assert [r.step for r in run.timings.reweights] == [2]
        with torch.no_grad():  # what the pipeline would encode with the te LoRA at weight 1 from the start
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a cat", device="cpu")
    handle.remove()
    assert len(seen) == 3
    (e1, p1), (e2, p2), (e3, p3) = seen
    assert torch.equal(e2, e3) and torch.equal(p2, p3)
    assert not torch.allclose(e1, e2) and not torch.allclose(p1, p2)
    torch.testing.assert_close(e2, torch.cat([negative, embeds]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p2, torch.cat([negative_pooled, pooled]), rtol=1e-5, atol=1e-6)
    assert_bitwise(before, pipe)


def test_flux_schedule_runs_and_restores(tmp_path):
    pipe = tiny_pipeline("flux")
    write_lora(tmp_path, "ink", lora_state_dict(pipe, ("transformer", "text_encoder"), seed=6))
    before = snapshot(pipe)
    q = pipe.transformer.transformer_blocks[0].attn.to_q
    w0 = q.weight.detach().clone()
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a: seen.append(q.weight.detach().clone()))
    with activate(pipe, "a cat <lora:ink:1@1,0.5@2>", lora_dirs=[tmp_path], steps=2, architecture="flux") as run:
        pipe(run.prompt, num_inference_steps=2, height=32, width=32, output_type="latent", max_sequence_length=16,
             callback_on_step_end=run.callback, callback_on_step_end_tensor_inputs=run.callback_tensor_inputs)
        flux = [w for w in run.warnings if w.startswith("FLUX:")]   # issue 14.12: CLIP gives FLUX only the pooled
        assert flux == ["FLUX: a CLIP (text_encoder) weight schedule changes nothing after step 1: FLUX reads only "
                        "CLIP's pooled vector, which the pipeline takes once (its per-token embeddings come from T5, "
                        "text_encoder_2). Schedule text_encoder_2 instead, or keep the CLIP weight constant."]
    handle.remove()
    torch.testing.assert_close(seen[1] - w0, (seen[0] - w0) * 0.5, rtol=1e-4, atol=1e-6)
    assert_bitwise(before, pipe)
