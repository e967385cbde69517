"""The real SD.Next from ../shared/hosts, started with this worktree under its extensions/, driven over HTTP.

``tools/setup_host.sh sdnext`` extracts the snapshot and builds its venv (cached). Each server gets its own
``--data-dir`` (extensions, models, config), so the cached snapshot stays as it was extracted.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LORA_SYNTAX_SHARED", ROOT.parent / "shared"))
KIT = ROOT / "lora_syntax" / "demo" / "kit"
MODEL_NAME = "lora-syntax-demo"
ENV = {"TORCH_COMPILE_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
BASE = {"steps": 8, "width": 32, "height": 32, "cfg_scale": 4, "seed": 1234, "sampler_name": "DDIM",
        "batch_size": 1, "save_images": False, "send_images": True}


def sdnext_host() -> Path:
    """The prepared SD.Next folder (its venv inside), or a skip saying why there is none."""
    if not (SHARED / "hosts" / "sdnext-058a7f0c.tar.xz").is_file():
        pytest.skip(f"no SD.Next snapshot: {SHARED / 'hosts'} is absent (shared test fixtures not installed)")
    done = subprocess.run(["bash", str(ROOT / "tools" / "setup_host.sh"), "sdnext"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"SD.Next host setup failed: {done.stderr.strip()[-500:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Generation:
    images: list[np.ndarray]
    info: dict[str, Any]

    @property
    def infotext(self) -> str:
        return self.info["infotexts"][0]

    @property
    def comments(self) -> str:
        return json.dumps(self.info.get("comments", ""))


class SdnextServer:
    """One SD.Next process with the extension installed as a user would: a link under ``extensions/``."""

    def __init__(self, host: Path, data: Path) -> None:
        self.host, self.data, self.port = host, data, free_port()
        self.log_path = data / "sdnext.log"
        self.process: subprocess.Popen | None = None

    def prepare(self) -> None:
        (self.data / "extensions").mkdir(parents=True, exist_ok=True)
        (self.data / "extensions" / "lora-syntax").symlink_to(ROOT, target_is_directory=True)
        shutil.copytree(KIT / "model", self.data / "models" / "Diffusers" / MODEL_NAME)
        loras = self.data / "loras"
        loras.mkdir()
        for path in (KIT / "loras").iterdir():
            shutil.copy2(path, loras / path.name)
        (loras / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
        (self.data / "config.json").write_text(json.dumps({"sdnq_dequantize_compile": False}))

    def start(self, timeout: float = 240.0) -> None:
        self.prepare()
        command = [str(self.host / "venv" / "bin" / "python"), "launch.py", "--skip-all", "--use-cpu", "all",
                   "--server-name", "127.0.0.1", "--port", str(self.port), "--ckpt", MODEL_NAME,
                   "--data-dir", str(self.data), "--lora-dir", str(self.data / "loras")]
        env = {**os.environ, **ENV}
        env.pop("PYTHONPATH", None)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, cwd=self.host, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SD.Next exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            if "Startup time" in self.log():
                return
            time.sleep(0.5)
        raise RuntimeError(f"SD.Next did not start in {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP --------------------------------------------------------------------------------------
    def call(self, method: str, route: str, body: Any = None, timeout: float = 120.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{route}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {route}: HTTP {error.code} {error.read()[:2000]!r}") from error

    def txt2img(self, prompt: str, **overrides: Any) -> Generation:
        answer = self.call("POST", "/sdapi/v1/txt2img", {**BASE, "prompt": prompt, **overrides})
        images = [np.asarray(_png(b64)) for b64 in answer["images"]]
        return Generation(images, json.loads(answer["info"]))

    def txt2img_interrupted(self, prompt: str, after_step: int, **overrides: Any) -> Generation:
        """A generation interrupted through ``/sdapi/v1/interrupt`` once SD.Next reports ``after_step`` steps."""
        result: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: result.setdefault("g", self.txt2img(prompt, **overrides)))
        worker.start()
        deadline = time.monotonic() + 120
        while worker.is_alive() and time.monotonic() < deadline:
            if self.call("GET", "/sdapi/v1/progress")["state"].get("sampling_step", 0) >= after_step:
                break
            time.sleep(0.05)
        self.call("POST", "/sdapi/v1/interrupt")
        worker.join(120)
        return result.get("g")

    def set_options(self, **options: Any) -> None:
        self.call("POST", "/sdapi/v1/options", options)

    def last_run(self) -> dict[str, Any]:
        return self.call("GET", "/lora-syntax/v1/last-run")


def _png(b64: str) -> Any:
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))).convert("RGB")


def differ(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two images, in 0-255 units."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
