#!/usr/bin/env bash
# Creates .venv and installs lora-syntax into it; `--test` adds the test tools and a browser.
# torch: an existing install is kept; otherwise TORCH_SPEC (default the CPU wheel torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
if [[ "${1:-}" == "--test" ]]; then
    "$py" -m pip install -q -e ".[test]"
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
            || echo "setup: could not install chromium; browser tests will be skipped" >&2
    fi
else
    "$py" -m pip install -q -e ".[fast]"
fi
