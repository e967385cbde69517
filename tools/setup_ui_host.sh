#!/usr/bin/env bash
# Builds the Gradio 3.41 venv that tests/test_ui_host.py serves its A1111-like page with (A1111 pins
# gradio==3.41.2), so the Networks tab is tested on the old Gradio in CI instead of being skipped.
#   bash tools/setup_ui_host.sh         -> prints the venv's python (export it as LORA_SYNTAX_GRADIO341_PYTHON)
# Cached: a second run is a no-op until this script changes. LORA_SYNTAX_GRADIO341_VENV chooses the folder
# (default ~/.cache/lora-syntax/gradio341). Only what the page imports is installed: gradio, torch, safetensors,
# lark, Pillow; the repository itself comes from PYTHONPATH.
set -euo pipefail
venv="${LORA_SYNTAX_GRADIO341_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-syntax/gradio341}"
stamp="$venv/.ready-$(sha256sum "$0" | cut -c1-12)"
if [[ -f "$stamp" ]]; then echo "$venv/bin/python"; exit 0; fi
rm -rf "$venv"
python=$(command -v python3.11 || command -v python3.10 || command -v python3)
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip >&2
"${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}" >&2
# gradio 3.41.2 breaks with later fastapi/starlette/pydantic: the versions A1111 runs it with
"${pip[@]}" "gradio==3.41.2" "fastapi==0.104.1" "starlette==0.27.0" "pydantic==2.5.3" "safetensors>=0.4" \
    "lark>=1.1.9" "Pillow>=9" >&2
"$venv/bin/python" -c "import gradio, torch, safetensors, lark; assert gradio.__version__ == '3.41.2'" >&2
touch "$stamp"
echo "$venv/bin/python"
