"""Inside the real SD.Next: time per generation with lora-syntax vs SD.Next's built-in LoRA handler.

    python bench/bench_host_sdnext.py [--steps 20] [--repeats 5]

Starts SD.Next from ../shared/hosts (``tools/setup_host.sh sdnext``, cached) with this worktree under its
``extensions/`` and the demo model and LoRAs, then times ``POST /sdapi/v1/txt2img`` (same prompt, seed and
size; 32 px, so the LoRA work is a large share of each call). The built-in runs with our setting off, on the
same server. Medians over ``--repeats`` calls after one warm-up call per case; wall-clock from the client.
Stepwise tags: the built-in evaluates ``@`` schedules once, at step 0, so its figure is for less work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers_sdnext import SdnextServer, sdnext_host  # noqa: E402
from lora_syntax.hosts.webui import SETTING_KEY  # noqa: E402

PROMPT = "a red circle"
CASES = {
    "no LoRA": "",
    "static: sepia 1 + night 0.8": " <lora:sepia:1> <lora:night:0.8>",
    "stepwise: sepia 1@1,0@10 + night lerp": " <lora:sepia:1@1,0@10> <lora:night:lerp(0@0,1@100%)>",
    "te schedule: zorbstar te=1@1,0@10": " <lora:zorbstar:1:te=1@1,0@10>",
}


def timed(server: SdnextServer, prompt: str, steps: int, repeats: int) -> float:
    server.txt2img(prompt, steps=steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        server.txt2img(prompt, steps=steps)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import pytest
    try:
        host = sdnext_host()
    except pytest.skip.Exception as skip:
        print(f"skipped: {skip}")
        return 0
    with tempfile.TemporaryDirectory() as data:
        server = SdnextServer(host, Path(data))
        server.start()
        try:
            rows = []
            for name, tags in CASES.items():
                ours = timed(server, PROMPT + tags, args.steps, args.repeats)
                engine = server.last_run().get("engine", {})
                server.set_options(**{SETTING_KEY: False})
                builtin = timed(server, PROMPT + tags, args.steps, args.repeats)
                server.set_options(**{SETTING_KEY: True})
                rows.append((name, ours, builtin, engine))
        finally:
            server.stop()
    print(f"SD.Next, demo model 32 px, {args.steps} steps, DDIM, median of {args.repeats} (noisy shared CPU)")
    print(f"{'case':42} {'ours s':>8} {'built-in s':>10} {'ratio':>6}  engine (ours)")
    for name, ours, builtin, engine in rows:
        points = engine.get("change_points", [])
        detail = (f"apply {engine.get('apply_ms', 0)} ms, {len(points)} change points "
                  f"{sum(p['ms'] + p['reencode_ms'] for p in points):.1f} ms, restore {engine.get('restore_ms', 0)} ms"
                  if engine else "-")
        print(f"{name:42} {ours:8.3f} {builtin:10.3f} {ours / builtin:6.2f}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
