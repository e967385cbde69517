"""First apply in a fresh process: ours through ``activate`` vs diffusers' load + set_adapters + fuse.

    python bench/bench_first_apply.py [--repeat 2] [--reduced] [--dtype fp32|fp16|bf16]

The parent writes three rank-32 PEFT LoRAs on the 160 attention/feed-forward linears of an SD1.5-size
UNet, then times each side in its own fresh Python process (so thread pools, the allocator and the page
tables start cold, as they do for a user's first generation). Each child builds the UNet with random
weights from the real SD1.5 config (every weight already touched, as after loading a checkpoint) and
puts it in a ``StableDiffusionPipeline`` whose other parts are tiny. Printed: ours (first apply
through ``activate``, then a second apply after restore), diffusers (``load_lora_adapter`` x3 +
``set_adapters`` + ``fuse_lora``), and the ratio. Best of ``--repeat`` children per side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import SD15, SUFFIXES  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def unet_config(reduced: bool) -> dict:
    config = dict(SD15)
    if reduced:
        config["block_out_channels"] = tuple(c // 2 for c in config["block_out_channels"])
    return config


def build_pipeline(reduced: bool, dtype: torch.dtype):
    """A StableDiffusionPipeline around an SD1.5-size random UNet (text encoder, VAE: tiny, never run)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lora_syntax.demo import MODEL_DIR

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(reduced))
    unet = unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=g)
    unet = unet.to(dtype).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, vocab_size=49408)).eval()
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(
        MODEL_DIR / "tokenizer"), unet=unet, scheduler=DDIMScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def write_loras(folder: Path, reduced: bool, rank: int = 32) -> int:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(reduced))
    linears = [(n, m) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(SUFFIXES)]
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        state = {}
        for name, m in linears:
            state[f"unet.{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.01
            state[f"unet.{name}.lora_B.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.01
        save_file(state, str(folder / f"lora{i}.safetensors"))
    return len(linears)


def child_ours(folder: Path, reduced: bool, dtype: torch.dtype) -> dict:
    from lora_syntax.hosts.diffusers import activate

    pipe = build_pipeline(reduced, dtype)
    prompt = "a cat <lora:lora0:0.8> <lora:lora1:0.8> <lora:lora2:0.8>"
    start = time.perf_counter()
    with activate(pipe, prompt, lora_dirs=[folder], steps=20, architecture="sd15") as run:
        first = time.perf_counter() - start
        first_fuse = run.timings.apply
    start = time.perf_counter()
    with activate(pipe, prompt, lora_dirs=[folder], steps=20, architecture="sd15") as run:
        second = time.perf_counter() - start
    return {"first": first, "first_fuse": first_fuse, "second": second, "modules": run.timings.applied_modules}


def child_diffusers(folder: Path, reduced: bool, dtype: torch.dtype) -> dict:
    from safetensors.torch import load_file

    pipe = build_pipeline(reduced, dtype)
    names = [f"lora{i}" for i in range(3)]
    start = time.perf_counter()
    for name in names:
        pipe.unet.load_lora_adapter(load_file(str(folder / f"{name}.safetensors")), prefix="unet", adapter_name=name)
    pipe.unet.set_adapters(names, [0.8] * 3)
    pipe.unet.fuse_lora(adapter_names=names)
    return {"first": time.perf_counter() - start}


def run_child(side: str, folder: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--folder", str(folder), "--dtype", args.dtype]
    if args.reduced:
        cmd.append("--reduced")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="fresh processes per side; the best is kept")
    parser.add_argument("--reduced", action="store_true", help="half the channels (a smaller machine)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--child", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    if args.child:
        fn = child_ours if args.child == "ours" else child_diffusers
        print(json.dumps(fn(args.folder, args.reduced, dtype)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        modules = write_loras(Path(tmp), args.reduced)
        ours, theirs = [], []
        for _ in range(args.repeat):   # interleaved: load changes on a shared machine hit both alike
            ours.append(run_child("ours", Path(tmp), args))
            theirs.append(run_child("diffusers", Path(tmp), args))
    best = min(ours, key=lambda r: r["first"])
    d = min(r["first"] for r in theirs)
    print(f"SD1.5{' (reduced)' if args.reduced else ''} UNet {args.dtype} on the CPU, 3 rank-32 LoRAs on {modules} "
          f"linears, fresh process per run, best of {args.repeat}, threads {torch.get_num_threads()}")
    print(f"first apply  ours {best['first'] * 1000:8.1f} ms (fuse {best['first_fuse'] * 1000:.1f} ms)  "
          f"diffusers load+set_adapters+fuse {d * 1000:8.1f} ms  ratio {best['first'] / d:.3f} (target < 1)")
    print(f"second apply ours {min(r['second'] for r in ours) * 1000:8.1f} ms (same process, after restore)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
