"""Runs inside Forge's own venv, from the extracted Forge folder: drives Forge's real A1111 ``modules`` with our glue.

    cd FORGE && venv/bin/python WORKTREE/tests/host_a1111_driver.py OUT.json

Real host code: ``processing`` (``StableDiffusionProcessingTxt2Img``/``Img2Img``, ``parse_extra_network_prompts``,
``setup_conds``/``calculate_hr_conds`` with the host's cond cache), ``extra_networks`` (parse, activate,
deactivate), ``script_callbacks``, ``sd_samplers`` (``KDiffusionSampler.sample``/``sample_img2img``, the
k-diffusion Euler and Heun loops), ``CFGDenoiser.forward``, ``prompt_parser``, Forge's ``Prediction`` and its
``IntegratedUNet2DConditionModel`` built with Forge's operations (tiny config, LDM names). Stubbed: the model
call behind the denoiser (Forge's ``sampling_function``, which needs its memory manager) and the text encoder
call (a tiny transformers CLIP), both tiny. Writes what every denoiser call saw to OUT.json; the assertions
are in tests/test_host_a1111.py.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import types
from pathlib import Path

WORKTREE = Path(__file__).resolve().parents[1]
OUT = sys.argv[1]
sys.argv = ["webui.py", "--always-cpu", "--skip-torch-cuda-test", "--no-half", "--no-download-sd-model", "--nowebui"]
sys.path.insert(0, os.getcwd())

from modules import initialize  # noqa: E402

initialize.imports()

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from backend.modules.k_prediction import Prediction  # noqa: E402
from backend.nn.unet import IntegratedUNet2DConditionModel  # noqa: E402
from backend.operations import using_forge_operations  # noqa: E402
from modules import (extra_networks, processing, prompt_parser, rng, sd_models, sd_samplers,  # noqa: E402
                     sd_samplers_cfg_denoiser, sd_samplers_kdiffusion, shared)

sys.path.insert(0, str(WORKTREE))
from lora_syntax.testing.tiny import build_clip_tokenizer  # noqa: E402

WIDTH = 32
torch.manual_seed(0)


# -- a tiny model with the host's module names -------------------------------------------------------
UNET_CONFIG = dict(in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, channel_mult=(1, 2),
                   num_head_channels=8, use_spatial_transformer=True, transformer_depth=[1, 1], context_dim=WIDTH,
                   transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1], use_linear_in_transformer=False)


def tiny_unet() -> torch.nn.Module:
    """Forge's UNet class, built with Forge's operations and loaded from a state dict as Forge loads checkpoints."""
    state = {k: torch.randn_like(v) * 0.05 for k, v in IntegratedUNet2DConditionModel(**UNET_CONFIG).state_dict().items()}
    with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
        unet = IntegratedUNet2DConditionModel(**UNET_CONFIG)
    unet.load_state_dict(state)
    return unet.eval()


def tiny_clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=64, num_attention_heads=4,
                            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1)
    return tokenizer, CLIPTextModel(config).eval()


class TinySD:
    """What the host's code reads of ``shared.sd_model`` (Forge's engine object), around the tiny modules."""

    is_sd1, is_sdxl, is_sd2 = True, False, False

    def __init__(self) -> None:
        self.unet = tiny_unet()
        self.tokenizer, self.clip = tiny_clip()
        predictor = Prediction(prediction_type="epsilon", beta_schedule="linear", linear_start=0.00085, linear_end=0.012, timesteps=1000)
        unet_patcher = types.SimpleNamespace(model=types.SimpleNamespace(
            diffusion_model=self.unet, storage_dtype=torch.float32, predictor=predictor), lora_patches={})
        clip = types.SimpleNamespace(cond_stage_model=types.SimpleNamespace(
            clip_l=types.SimpleNamespace(transformer=self.clip)))
        self.forge_objects = types.SimpleNamespace(unet=unet_patcher, clip=clip)
        self.forge_objects_original = self.forge_objects_after_applying_lora = self.forge_objects
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny", model_name="tiny")
        self.extra_generation_params, self.comments = {}, []
        self.encodes = 0
        empty = self.get_learned_conditioning([""])
        self.cond_stage_model_empty_prompt = empty

    def set_clip_skip(self, clip_skip):
        pass

    @torch.no_grad()
    def get_learned_conditioning(self, texts):
        self.encodes += 1
        ids = self.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        return self.clip(ids).last_hidden_state


MODEL = TinySD()
sd_models.model_data.set_sd_model(MODEL)
for name in ("sampling_prepare", "sampling_cleanup"):
    setattr(sd_samplers_kdiffusion, name, lambda *a, **k: None)

Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"
CALLS: list[dict] = []
FAULT: dict = {}


def sampling_function(denoiser, denoiser_params, cond_scale, cond_composition):
    """Forge's model call, tiny: eps from the UNet on [cond, uncond], CFG mix (and the test's probes)."""
    call = denoiser.step
    CALLS.append({"call": call, "sigma": float(denoiser_params.sigma[0]),
                  "q": MODEL.unet.get_submodule(Q).weight.detach().clone(),
                  "te_q": MODEL.clip.get_submodule(TE_Q).weight.detach().clone(),
                  "cond": denoiser_params.text_cond.detach().clone()})
    if FAULT.get("at") == call:
        FAULT["action"]()
    x, sigma = denoiser_params.x, denoiser_params.sigma
    cond, uncond = denoiser_params.text_cond, denoiser_params.text_uncond
    if uncond is None:
        uncond, cond_scale = cond, 1.0
    t = MODEL.forge_objects.unet.model.predictor.timestep(sigma)
    with torch.no_grad():
        scaled = x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5
        eps = MODEL.unet(torch.cat([scaled, scaled]), timesteps=torch.cat([t, t]), context=torch.cat([cond, uncond]))
    eps_c, eps_u = eps.chunk(2)
    denoised = x - sigma[:, None, None, None] * (eps_u + cond_scale * (eps_c - eps_u))
    return denoised, eps_c, eps_u


sd_samplers_cfg_denoiser.sampling_function = sampling_function


# -- LoRA files in the host's own module names (kohya keys) ----------------------------------------------
def lora_file(folder: Path, name: str, seed: int, *, unet: bool = True, te: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd, factors = {}, {}
    targets = []
    if unet:
        targets += [("lora_unet_", MODEL.unet, n) for n, m in MODEL.unet.named_modules()
                    if n.endswith(("to_q", "to_k", "to_v", "to_out.0")) and hasattr(m, "weight")]
    if te:
        targets += [("lora_te_", MODEL.clip, n) for n, m in MODEL.clip.named_modules()
                    if n.endswith(("q_proj", "k_proj", "v_proj", "out_proj")) and hasattr(m, "weight")]
    for prefix, root, module in targets:
        w = root.get_submodule(module).weight
        down, up = torch.randn(2, w.shape[1], generator=g) * 0.2, torch.randn(w.shape[0], 2, generator=g) * 0.2
        key = prefix + module.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"], sd[f"{key}.alpha"] = down, up, torch.tensor(2.0)
        factors[module] = (up, down)
    save_file(sd, str(folder / f"{name}.safetensors"))
    return factors


LORA_DIR = Path(tempfile.mkdtemp()) / "Lora"
LORA_DIR.mkdir()
shared.cmd_opts.lora_dir = str(LORA_DIR)
FACTORS = {"ink": lora_file(LORA_DIR, "ink", 1), "oil": lora_file(LORA_DIR, "oil", 2)}

# the built-in LoRA handler, registered as its before_ui callback does
sys.path.insert(0, str(Path.cwd() / "extensions-builtin" / "sd_forge_lora"))
MODEL.current_lora_hash = str([])
import extra_networks_lora  # noqa: E402
import networks  # noqa: E402

networks.extra_network_lora = extra_networks_lora.ExtraNetworkLora()
extra_networks.register_extra_network(networks.extra_network_lora)

sys.path.insert(0, str(WORKTREE / "scripts"))
import lora_syntax_webui  # noqa: E402  (hooks the host: wrapper, on_cfg_denoiser, setting)

GLUE = lora_syntax_webui.GLUE


def snapshot() -> dict:
    return {**{f"unet.{k}": v.clone() for k, v in MODEL.unet.state_dict().items()},
            **{f"te.{k}": v.clone() for k, v in MODEL.clip.state_dict().items()}}


def bitwise(before: dict) -> bool:
    after = snapshot()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def txt2img(prompt: str, steps: int, sampler: str = "Euler", **kwargs):
    return processing.StableDiffusionProcessingTxt2Img(
        sd_model=MODEL, prompt=prompt, negative_prompt="", steps=steps, sampler_name=sampler, cfg_scale=4.0,
        width=32, height=32, seed=1, do_not_save_samples=True, do_not_save_grid=True, **kwargs)


def generate(p, *, hires_steps: int | None = None, img2img: bool = False, batches: int = 1):
    """process_images_inner's path over ``batches`` batches (and sample_hr_pass's order of calls for a hires pass)."""
    def inner(p):
        shared.state.interrupted = shared.state.skipped = False
        p.all_prompts, p.all_negative_prompts = [p.prompt] * batches, [p.negative_prompt] * batches
        p.fill_fields_from_opts()
        p.seeds, p.subseeds = [1], [1]
        for n in range(batches):      # process_images_inner's loop over batches
            p.prompts, p.negative_prompts = p.all_prompts[n:n + 1], p.all_negative_prompts[n:n + 1]
            if hires_steps:
                p.all_hr_prompts, p.all_hr_negative_prompts = p.all_prompts, p.all_negative_prompts
                p.hr_prompts, p.hr_negative_prompts = p.prompts, p.negative_prompts
                p.hr_upscale_to_x, p.hr_upscale_to_y = p.width, p.height
            p.rng = rng.ImageRNG((4, 4, 4), p.seeds, subseeds=p.subseeds)
            p.parse_extra_network_prompts()
            extra_networks.activate(p, p.extra_network_data)
            if batches > 1:    # as with per-batch prompts (wildcards): the cache misses, conds are encoded now
                p.cached_c, p.cached_uc = [None, None], [None, None]
            p.setup_conds()
            p.sampler = sd_samplers.create_sampler(p.sampler_name, MODEL)
            x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
            if img2img:
                p.sampler.sample_img2img(p, x, torch.randn_like(x), p.c, p.uc)
            else:
                x = p.sampler.sample(p, x, p.c, p.uc)
            if hires_steps:
                p.is_hr_pass = True
                extra_networks.activate(p, p.hr_extra_network_data)
                p.calculate_hr_conds()
                p.sampler = sd_samplers.create_sampler(p.hr_sampler_name or p.sampler_name, MODEL)
                p.sampler.sample_img2img(p, x, torch.randn_like(x), p.hr_c, p.hr_uc, steps=hires_steps)
                p.is_hr_pass = False
        extra_networks.deactivate(p, p.extra_network_data)
        return "ok"

    CALLS.clear()
    wrapped_inner = processing.process_images_inner.lora_syntax_inner
    try:
        _swap_inner(inner)
        return processing.process_images_inner(p)
    finally:
        _swap_inner(wrapped_inner)


def _swap_inner(fn) -> None:
    """Point the glue's wrapper at ``fn`` (the wrapper calls the inner it was given at install)."""
    wrapper = processing.process_images_inner
    cell = next(c for c, name in zip(wrapper.__closure__, wrapper.__code__.co_freevars) if name == "inner")
    cell.cell_contents = fn


def encode_with(te_weights: dict, text: str) -> torch.Tensor:
    """The prompt encoded with the CLIP's q/k/v/out weights set to original + m * up @ down (fp64 then fp32)."""
    clip = copy.deepcopy(MODEL.clip)
    with torch.no_grad():
        for module, (up, down) in FACTORS["ink"].items():
            if module.startswith("text_model"):
                w = clip.get_submodule(module).weight
                w.copy_((w.double() + te_weights.get("ink", 0.0) * (up.double() @ down.double())).float())
        ids = MODEL.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return clip(ids).last_hidden_state


def coefficient(seen: torch.Tensor, original: torch.Tensor, unit: torch.Tensor) -> tuple[float, float]:
    """(m, residual): the multiple of the LoRA's delta a weight holds, and how far it is from exactly that."""
    delta = seen.double() - original.double()
    m = float((delta * unit).sum() / (unit * unit).sum())
    return round(m, 6), float((delta - m * unit).abs().max())


def summary(name: str, base: dict, result: object = None, expected_cond=None, **extra) -> dict:
    """What each denoiser call saw: the LoRA multiple in a UNet and a text-encoder module, the conds' error."""
    up, down = FACTORS["ink"][Q]
    unit = up.double() @ down.double()
    te_up, te_down = FACTORS["ink"][TE_Q]
    te_unit = te_up.double() @ te_down.double()
    calls = []
    for c in CALLS:
        m, resid = coefficient(c["q"], base[f"unet.{Q}.weight"], unit)
        te_m, te_resid = coefficient(c["te_q"], base[f"te.{TE_Q}.weight"], te_unit)
        item = {"call": c["call"], "sigma": c["sigma"], "m": m, "resid": resid, "te_m": te_m, "te_resid": te_resid}
        if expected_cond is not None:
            item["cond_err"] = float((c["cond"].double() - expected_cond(c["call"]).double()).abs().max())
        calls.append(item)
    return {"name": name, "calls": calls, "restored": bitwise(base), "report": lora_syntax_webui.last_run(),
            "result": str(result), **extra}


def prompt_at(prompt: str, steps: int, call: int) -> str:
    """The text the host's prompt editing gives denoiser call ``call`` (its own schedule function)."""
    schedule = prompt_parser.get_learned_conditioning_prompt_schedules([prompt], steps)[0]
    return next(text for end, text in schedule if end >= call)


def main(out: str) -> None:
    base = snapshot()
    results = []

    # 1. txt2img, Euler, a UNet schedule and a text-encoder change point, prompt editing in the prompt
    p = txt2img("a [cat:dog:4] photo <lora:ink:unet=0.5@1,1@3:te=0@1,1@3>", 6)
    res = generate(p)

    def expected(call: int) -> torch.Tensor:   # te weight 1 from plan step 3 (call 2) on, the host's text per call
        return encode_with({"ink": 1.0 if call >= 2 else 0.0}, prompt_at("a [cat:dog:4] photo", 6, call))
    texts = [prompt_at("a [cat:dog:4] photo", 6, call) for call in range(6)]
    results.append(summary("euler", base, res, expected, infotext=dict(p.extra_generation_params), texts=texts,
                           cat_vs_dog=float((encode_with({}, "a cat photo") - encode_with({}, "a dog photo")).abs().max()),
                           te0_vs_te1=float((encode_with({}, "a cat photo") - encode_with({"ink": 1.0}, "a cat photo")).abs().max())))
    # 1b. the same generation again: the host's cond cache still holds the step-1 conds
    p = txt2img("a [cat:dog:4] photo <lora:ink:unet=0.5@1,1@3:te=0@1,1@3>", 6)
    results.append(summary("euler-again", base, generate(p), expected))
    # 1c. two batches of one generation, prompts not in the host's cond cache: each batch starts at step 1
    p = txt2img("a [cat:dog:4] photo <lora:ink:unet=0.5@1,1@3:te=0@1,1@3>", 6)
    results.append(summary("batches", base, generate(p, batches=2), expected))

    # 2. a second-order sampler: two denoiser calls per step
    p = txt2img("a cat <lora:ink:0.5@1,1@3:te=0>", 4, sampler="Heun")
    results.append(summary("heun", base, generate(p)))

    # 3. img2img at denoising 0.5 over 8 steps: int(0.5 * 8) + 1 = 5 steps
    p = processing.StableDiffusionProcessingImg2Img(
        sd_model=MODEL, prompt="a cat <lora:ink:0@1,1@0.5:te=0>", negative_prompt="", steps=8, sampler_name="Euler",
        cfg_scale=4.0, width=32, height=32, denoising_strength=0.5, init_images=[], do_not_save_samples=True)
    results.append(summary("img2img", base, generate(p, img2img=True)))

    # 4. hires fix: first pass 4 steps, hires pass 3 steps with its own schedule
    p = txt2img("a cat <lora:ink:0.25@1,1@50%:te=0>", 4, enable_hr=True, hr_second_pass_steps=3, denoising_strength=0.5, hr_cfg=4.0)
    results.append(summary("hires", base, generate(p, hires_steps=3)))

    # 5. an exception in the middle of sampling
    FAULT.update(at=2, action=lambda: (_ for _ in ()).throw(RuntimeError("boom in the sampler")))
    try:
        generate(txt2img("a cat <lora:ink:0.5@1,1@3:te=0>", 5))
        error = None
    except RuntimeError as err:
        error = str(err)
    FAULT.clear()
    results.append(summary("exception", base, error))

    # 6. interrupted at the third call (the host's own InterruptedException path)
    FAULT.update(at=2, action=lambda: setattr(shared.state, "interrupted", True))
    res = generate(txt2img("a cat <lora:ink:0.5@1,1@3:te=0>", 5))
    FAULT.clear()
    results.append(summary("interrupt", base, res))

    # 7. a state-dict load into the patched UNet mid-run (a checkpoint reload)
    original = {k: v.clone() for k, v in MODEL.unet.state_dict().items()}
    FAULT.update(at=2, action=lambda: MODEL.unet.load_state_dict(original))
    res = generate(txt2img("a cat <lora:ink:0.5@1,1@3:te=0>", 5))
    FAULT.clear()
    results.append(summary("state-dict", base, res))

    # 8. a malformed tag: an error line, no traceback, the model untouched
    p = txt2img("a cat <lora:ink:0.5@@1>", 3)
    res = generate(p)
    results.append(summary("bad-tag", base, res, comments=list(p.comments), infotext=dict(p.extra_generation_params)))

    # 8b. an unknown LoRA next to a good one: the good one applies, the other is named
    p = txt2img("a cat <lora:ink:1:te=0> <lora:nosuch:1>", 3)
    res = generate(p)
    results.append(summary("unknown", base, res, comments=list(p.comments)))

    # 9. the setting off: the built-in handler is registered again and ours gets nothing
    shared.opts.data["lora_syntax_enabled"] = False
    GLUE.register()
    results.append({"name": "setting-off", "registry": type(extra_networks.extra_network_registry.get("lora")).__name__})
    shared.opts.data["lora_syntax_enabled"] = True
    GLUE.register()
    results.append({"name": "setting-on", "registry": type(extra_networks.extra_network_registry.get("lora")).__name__})

    # 10. paste-back: the host's infotext parser and callbacks put our tags back into a prompt without them
    from modules import infotext_utils, script_callbacks
    text = 'a cat\nSteps: 6, Sampler: Euler, LoRA weights: "<lora:ink:te=0@1,1@3:unet=0.5@1,1@3>", Lora hashes: "ink: 0123"'
    params = infotext_utils.parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)
    results.append({"name": "paste", "prompt": params["Prompt"]})

    # 11. install.py inside the host: every requirement is already there, so nothing is installed over its pins
    sys.path.insert(0, str(WORKTREE))
    import install
    results.append({"name": "install", "missing": install.missing_requirements()})

    import lark
    Path(out).write_text(json.dumps({"lark": lark.__version__, "results": results}))


if __name__ == "__main__":
    main(OUT)
