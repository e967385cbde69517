"""Loading: three LoRA files read, checked and mapped by the library vs read by ``safetensors`` alone.

    python bench/bench_load.py [--arch sd15|sdxl|flux] [--reduced] [--repeat 3]

The files are the bench's usual three rank-32 PEFT LoRAs (``bench_engine.write_loras``) for a model
built on ``meta`` (no weights needed). Ours: a fresh ``LoraLibrary`` (nothing cached) resolving and
loading each file against the model's tree (read, NaN/inf check, key mapping, adapters built, shapes
checked; as a tag stack does, every file is opened first, so later files' values are checked on the
value-check threads while earlier ones are mapped). Theirs: ``safetensors.torch.load_file`` of the same files. Both with the files in the page
cache (the first round is a warm-up); best of ``--repeat``. Target (issue 12): ours <= 1.5x.
``load_file`` returns views of a lazy memory map, so it never reads the values; the "floor" line adds one
``sum`` per tensor to it: the least any check of every value (NaN/inf) costs on top.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_engine import COMPONENT, LORA_DTYPE, SD15, SDXL, write_loras  # noqa: E402

from lora_syntax.keymaps.build import tree_from_modules  # noqa: E402
from lora_syntax.library import LoraLibrary  # noqa: E402


def meta_model(arch: str, reduced: bool):
    if arch == "flux":
        from diffusers import FluxTransformer2DModel

        from lora_syntax.keymaps.flux import FLUX_DEV_TRANSFORMER_CONFIG
        config = dict(FLUX_DEV_TRANSFORMER_CONFIG)
        if reduced:
            config.update(num_layers=2, num_single_layers=4)
        with torch.device("meta"):
            return FluxTransformer2DModel(**config)
    from diffusers import UNet2DConditionModel
    config = dict(SD15 if arch == "sd15" else SDXL)
    if reduced:
        config["block_out_channels"] = tuple(c // 2 for c in config["block_out_channels"])
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=tuple(COMPONENT), default="sd15")
    parser.add_argument("--reduced", action="store_true", help="UNet: half the channels; FLUX: 2+4 blocks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--lora-dtype", choices=tuple(LORA_DTYPE), default="fp32", help="the LoRA files' dtype")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = meta_model(args.arch, args.reduced)
    component = COMPONENT[args.arch]
    tree = tree_from_modules(args.arch, {component: model})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_loras(model, folder, prefix=component, dtype=LORA_DTYPE[args.lora_dtype])   # names and feature counts only: meta is enough
        size = sum(p.stat().st_size for p in paths)
        from safetensors.torch import load_file

        def theirs():
            return [load_file(str(p)) for p in paths]

        def touched():   # safetensors' tensors are views of a lazy map: one pass makes it read the bytes
            return [[t.sum() for t in load_file(str(p)).values()] for p in paths]

        def ours():
            library = LoraLibrary([folder])   # as a stack loads: every file opened, then each mapped
            return library.load_many([library.resolve(p.stem) for p in paths], tree)

        best = {"ours": float("inf"), "safetensors": float("inf"), "touched": float("inf")}
        for round_ in range(args.repeat + 1):   # round 0 warms the page cache and imports
            for name, fn in (("safetensors", theirs), ("ours", ours), ("touched", touched)):
                start = time.perf_counter()
                fn()
                if round_:
                    best[name] = min(best[name], time.perf_counter() - start)
    print(f"{args.arch}{' (reduced)' if args.reduced else ''}: 3 files in {args.lora_dtype}, {size / 2**20:.0f} MiB, "
          f"best of {args.repeat}, {args.threads} torch threads, files in the page cache")
    ratio = best["ours"] / best["safetensors"]
    print(f"load  ours {best['ours'] * 1000:8.1f} ms (read + check + map)  safetensors {best['safetensors'] * 1000:8.1f} ms "
          f"(read)  ratio {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    print(f"floor safetensors + one pass over the values (what any NaN/inf check must add) "
          f"{best['touched'] * 1000:8.1f} ms  ratio {best['touched'] / best['safetensors']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
