#!/usr/bin/env bash
# Prepares a real web-UI host from ../shared/hosts for the host tests: extracts the snapshot and builds its own venv
# with the versions the host pins (see ../shared/hosts/README.md). Cached: a second run with the same inputs is a no-op.
#   bash tools/setup_host.sh sdnext|forge      -> prints the host folder (its venv is HOST/venv)
# LORA_SYNTAX_HOST_CACHE chooses the cache folder (default ~/.cache/lora-syntax/hosts).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
host="${1:?usage: setup_host.sh sdnext|forge}"
shared="${LORA_SYNTAX_SHARED:-$here/../shared}/hosts"
cache="${LORA_SYNTAX_HOST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-syntax/hosts}"
case "$host" in
    sdnext) archive="$shared/sdnext-058a7f0c.tar.xz"; top=sdnext ;;
    forge)  archive="$shared/forge-dfdcbab.tar.xz";   top=forge ;;
    *) echo "setup_host: unknown host '$host' (sdnext or forge)" >&2; exit 2 ;;
esac
[[ -f "$archive" ]] || { echo "setup_host: $archive is absent" >&2; exit 3; }
dest="$cache/$(basename "$archive" .tar.xz)"
stamp="$dest/.ready-$(sha256sum "$0" | cut -c1-12)"
if [[ -f "$stamp" ]]; then echo "$dest/$top"; exit 0; fi
rm -rf "$dest"; mkdir -p "$dest"
tar -xJf "$archive" -C "$dest"
src="$dest/$top"
python=$(command -v python3.11 || command -v python3)
"$python" -m venv "$src/venv"
pip=("$src/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" --no-deps "torchvision==0.28.0"

# torchvision 0.28 from the index is a CUDA build whose ops cannot load with the CPU torch: its fake-op
# registrations then fail at import. Register them only when the ops exist (test venv only).
meta="$("$src/venv/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
"$src/venv/bin/python" - "$meta" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
fixed = re.sub(r'^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)\n',
               r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))\n',
               text, flags=re.M)
open(path, "w").write(fixed)
PY

if [[ "$host" == sdnext ]]; then
    grep -v -E '^(setuptools==|ruff|pylint|pre-commit)' "$src/requirements.txt" > "$dest/requirements.txt"
    "${pip[@]}" -r "$dest/requirements.txt" diffusers==0.39.0 transformers==5.13.0 tokenizers==0.22.2 \
        pydantic==2.13.4 scipy==1.14.1 opencv-python-headless==4.13.0.92 fastapi==0.124.4 websockets aiofiles ffmpy \
        pydub uvicorn semantic-version altair python-multipart matplotlib importlib-resources addict yapf \
        "torch==2.13.0" "torchvision==0.28.0"
    "${pip[@]}" --no-deps gradio==3.43.2 gradio-client==0.5.0 compel==2.4.0 setuptools==69.5.1 wheel
else
    grep -v -E '^(torch==|setuptools==)' "$src/requirements_versions.txt" > "$dest/requirements.txt"
    echo -e "torch==2.13.0\ntorchvision==0.28.0" > "$dest/constraints.txt"
    "${pip[@]}" -r "$dest/requirements.txt" setuptools==80.9.0 huggingface-guess==0.1.0 joblib -c "$dest/constraints.txt"
    mkdir -p "$src/repositories/stable-diffusion-webui-assets"
fi
touch "$stamp"
echo "$src"
