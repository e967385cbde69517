"""Cost of parse + build_plan for a prompt with 10 tags over 50 steps, cold and cached.

    python bench/bench_parse.py [--repeat N] [--no-gc]

cold:        every cache emptied first (Lark parses each tag)
tags cached: a new prompt string each time whose tags were seen before (the usual web-UI case:
             the user edits the words around the tags)
all cached:  the same prompt again (parse result and plan cores come from the caches)
Median, 90th percentile and min per case; --no-gc turns the collector off while timing, to tell its
pauses from the code's own cost.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_syntax import plan as plan_module  # noqa: E402
from lora_syntax import schedule  # noqa: E402
from lora_syntax.plan import build_plan  # noqa: E402
from lora_syntax.syntax import parse  # noqa: E402
from lora_syntax.syntax import parser as parser_module  # noqa: E402

TAGS = [
    "<lora:styles/ink wash v1.2:0.8>", "<lora:detail:te=0.1@1,0.6@6>", "<lyco:light:0.5:0.7:16>",
    "<lora:ramp:unet=lerp(0@0,1@0.5)>", "<lora:faces:0.6:lbw=OUTD>", "<lora:hands:1@25%,0.4@75%>",
    "<lora:bg:0.3:module=unet>", "<lora:color:in=0.2:mid=0.4:out=0.6>", "<lora:wan:0.9:high>",
    "<lora:ctl:0.5@0,1@0.5:hr=1:hrte=0.5>",
]
PROMPT = "masterpiece, a cat on a windowsill, " + ", ".join(TAGS) + ", night, rain"


def _clear() -> None:
    parser_module._parse_tag.cache_clear()
    parser_module._parse.cache_clear()
    schedule.resolve.cache_clear()
    schedule.change_steps.cache_clear()
    plan_module._lbw.cache_clear()
    plan_module._CORES.clear()


def _time(make_prompt, repeat: int, clear: bool) -> list[float]:
    samples = []
    for i in range(repeat):
        prompt = make_prompt(i)
        if clear:
            _clear()
        start = time.perf_counter()
        build_plan(parse(prompt), 50, architecture="sd15")
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--repeat", type=int, default=300)
    args.add_argument("--no-gc", action="store_true", help="disable the garbage collector while timing")
    options = args.parse_args()
    repeat = options.repeat
    if options.no_gc:
        gc.disable()
    build_plan(parse(PROMPT), 50, architecture="sd15")  # warm imports
    rows = [
        ("cold", _time(lambda i: PROMPT, max(repeat // 3, 5), clear=True)),
        ("tags cached", _time(lambda i: f"{PROMPT} {i}", repeat, clear=False)),
        ("all cached", _time(lambda i: PROMPT, repeat, clear=False)),
    ]
    print(f"parse + build_plan, {len(TAGS)} tags, 50 steps (µs per call)" + (", gc off" if options.no_gc else ""))
    for label, samples in rows:
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"  {label:<12} median {statistics.median(samples):8.1f}   p90 {p90:8.1f}   min {min(samples):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
