#!/usr/bin/env bash
# Issue 12 on a GPU machine (H100/H200, the project's dependencies installed): the CUDA tests, then every
# GPU bench, then each target with its figure and ratio. About 5 minutes on an H200; each step has its own
# time limit so the script always ends and reports what it got. The CPU first-apply figure is a CPU bench:
# python bench/bench_first_apply.py.
#
#     bash bench/gpu_check.sh            (PYTHON=... to choose the interpreter; OUT=... keeps the logs;
#                                         STEPS="tests sdxl_fp16" runs only those steps)
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT="${OUT:-$(mktemp -d)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
status=0

STEPS="${STEPS:-tests kernel sdxl_fp16 generation flux_bf16 load load_fp32 sd15_fp16}"   # a subset: STEPS="tests sdxl_fp16"

step() {   # step NAME SECONDS COMMAND...: run with a time limit, keep the log, say how it ended
    local name="$1" limit="$2"; shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || status=1
    echo "   rc $rc in $((SECONDS - start)) s; log $OUT/$name.log"
}

"$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, '|',
    torch.cuda.get_device_name(0) if ok else 'NO CUDA DEVICE'); sys.exit(0 if ok else 1)" || exit 1

step tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py tests/test_patcher.py tests/test_triton_fuse.py tests/test_transfer.py
step kernel 80 "$PYTHON" bench/bench_kernel.py --dtype fp16
step sdxl_fp16 100 "$PYTHON" bench/bench_engine.py --arch sdxl --device cuda --dtype fp16 --lora-dtype fp16 --repeat 3 --compare-torch-path --profile "$OUT/profile_sdxl"
step generation 110 "$PYTHON" bench/bench_generation.py --device cuda --dtype fp16 --lora-dtype fp16 --steps 30 --size 1024 --repeat 2
step flux_bf16 120 "$PYTHON" bench/bench_engine.py --arch flux --device cuda --dtype bf16 --lora-dtype bf16 --repeat 2 --compare-torch-path
step load 30 "$PYTHON" bench/bench_load.py --arch sdxl --repeat 3 --lora-dtype fp16
step load_fp32 30 "$PYTHON" bench/bench_load.py --arch sdxl --repeat 3 --lora-dtype fp32
step sd15_fp16 60 "$PYTHON" bench/bench_engine.py --arch sd15 --device cuda --dtype fp16 --lora-dtype fp16 --repeat 3

echo
echo "== figures (each line: ours, the reference, the ratio and its target)"
for name in $STEPS; do
    echo "-- $name"
    case $name in
        tests) tail -n 3 "$OUT/$name.log" ;;
        kernel) cat "$OUT/$name.log" ;;
        *) grep -E "ratio|one copy of|read again|floor|per image|engine, last|fixed cost|held by|kernel|path on|^SDXL|^sdxl|Model|Error|error" \
               "$OUT/$name.log" | grep -v -i "warn" ;;
    esac
done
exit $status
