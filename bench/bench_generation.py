"""Time per image with a stepwise stack: SDXL, 30 steps, two change points, vs the base and vs diffusers.

    python bench/bench_generation.py [--device cuda] [--dtype fp16] [--steps 30] [--size 1024] [--reduced]

An SDXL pipeline with random weights from the real configs (UNet, both CLIP text towers, VAE; built
on ``meta``, then materialised on the device) and three rank-32 PEFT LoRAs on the UNet's attention and
feed-forward linears. Timed per image (best of ``--repeat`` after a warm-up; Euler, CFG):

  base       the pipeline without LoRAs
  ours       ``activate`` + generate + restore, with weights changing at 1/3 and 2/3 of the steps
  diffusers  the adapters loaded beforehand (not timed), unfused, ``set_adapters`` at the same steps

``--reduced`` (for a CPU): half-width UNet with 2-layer text towers, a small image and few steps; what
was run is printed. Targets (issue 12): ours <= 1.03x base; ours against diffusers printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import LORA_DTYPE, SDXL, materialise, profile_to, timed, write_loras  # noqa: E402

from lora_syntax.hosts.diffusers import activate  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_pipeline(device: str, dtype: torch.dtype, reduced: bool):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from lora_syntax.demo import MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(MODEL_DIR / "tokenizer")
    vocab = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    unet_config = dict(SDXL)
    layers = (12, 32)
    if reduced:
        unet_config["block_out_channels"] = tuple(c // 2 for c in unet_config["block_out_channels"])
        unet_config["transformer_layers_per_block"] = (1, 2, 2)
        layers = (2, 2)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=layers[0],
                                           num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768,
                                           **vocab))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=layers[1], num_attention_heads=20,
            hidden_act="gelu", projection_dim=1280, **vocab))
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.13025)
    modules = [materialise(m, device, dtype) for m in (unet, te1, te2, vae)]
    for te in modules[1:3]:   # to_empty leaves buffers uninitialised: the position ids are needed
        ids = next(b for n, b in te.named_buffers() if n.endswith("position_ids"))
        ids.copy_(torch.arange(ids.shape[-1], device=ids.device).expand_as(ids))
    pipe = StableDiffusionXLPipeline(vae=modules[3], text_encoder=modules[1], text_encoder_2=modules[2],
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=modules[0],
                                     scheduler=EulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def per_image(fn, device: str, repeat: int) -> float:
    """Best time of one image after a warm-up run."""
    fn()
    return timed(fn, device, repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--steps", type=int, default=None, help="default 30 (reduced: 6)")
    parser.add_argument("--size", type=int, default=None, help="image side, default 1024 (reduced: 256)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--reduced", action="store_true", help="small UNet/text towers/image/steps for a CPU")
    parser.add_argument("--profile", type=Path, default=None, help="file for a cProfile report of one image of ours")
    parser.add_argument("--lora-dtype", choices=tuple(LORA_DTYPE), default="fp32", help="the LoRA files' dtype")
    args = parser.parse_args()
    steps = args.steps or (6 if args.reduced else 30)
    size = args.size or (256 if args.reduced else 1024)
    first, second = steps // 3 + 1, 2 * steps // 3 + 1          # 30 steps: changes at steps 11 and 21
    dtype = DTYPES[args.dtype]
    pipe = build_pipeline(args.device, dtype, args.reduced)
    common = dict(num_inference_steps=steps, height=size, width=size, guidance_scale=5.0, output_type="latent")
    prompt = "a lighthouse at dusk"
    tags = f" <lora:lora0:0.8@1,0.4@{first}> <lora:lora1:0.3@1,0.9@{second}> <lora:lora2:0.6>"
    weights = {1: [0.8, 0.3, 0.6], first: [0.4, 0.3, 0.6], second: [0.4, 0.9, 0.6]}
    names = ["lora0", "lora1", "lora2"]

    def generator():
        return torch.Generator(args.device).manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_loras(pipe.unet, folder, dtype=LORA_DTYPE[args.lora_dtype])

        def base():
            pipe(prompt, generator=generator(), **common)

        runs = []

        def ours():
            with activate(pipe, prompt + tags, lora_dirs=[folder], steps=steps) as run:
                pipe(run.prompt, generator=generator(), callback_on_step_end=run.callback,
                     callback_on_step_end_tensor_inputs=run.callback_tensor_inputs, **common)
            runs.append(run)

        t_base = per_image(base, args.device, args.repeat)
        t_ours = per_image(ours, args.device, args.repeat)
        engine = runs[-1].timings.as_dict()
        if args.profile:
            profile_to(args.profile, ours, (("cumulative", 40), ("tottime", 25)))

        from safetensors.torch import load_file
        for name in names:
            pipe.unet.load_lora_adapter(load_file(str(folder / f"{name}.safetensors")), prefix="unet",
                                        adapter_name=name)

        def reweight(pipe_, index, timestep, kwargs):
            step = index + 2                                  # the next step to run (1-based)
            if step in weights:
                pipe_.unet.set_adapters(names, weights[step])
            return {}

        def theirs():
            pipe.unet.set_adapters(names, weights[1])
            pipe(prompt, generator=generator(), callback_on_step_end=reweight, **common)

        t_theirs = per_image(theirs, args.device, args.repeat)
    print(f"SDXL{' (reduced: half-width UNet, 2-layer text towers)' if args.reduced else ''}, {size}x{size}, "
          f"{steps} steps, Euler, CFG, {args.device} {args.dtype}, LoRA files {args.lora_dtype}, change points at steps {first} and {second}, "
          f"best of {args.repeat} after a warm-up (latents out, no VAE decode)")
    print(f"per image  base {t_base:7.3f} s  ours {t_ours:7.3f} s ({t_ours / t_base:.3f}x base, target <= 1.03)  "
          f"diffusers set_adapters {t_theirs:7.3f} s ({t_theirs / t_base:.3f}x base); ours / diffusers "
          f"{t_ours / t_theirs:.3f}")
    points = ", ".join(f"step {p['step']} {p['ms']} ms ({p['modules']} modules)" for p in engine["change_points"])
    print(f"engine, last image: load {engine['load_ms']} ms, step-1 apply {engine['apply_ms']} ms "
          f"({engine['applied_modules']} modules), change points: {points or 'none'}, restore {engine['restore_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
