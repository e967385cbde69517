"""The extension hook in ``scripts/``: harmless outside a host; inside an A1111-like page (current Gradio,
and Gradio 3.41 from the venv ``tools/setup_ui_host.sh`` builds) the Networks tab edits the host's prompt box."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers_ui import CHROMIUM, CHROMIUM_ARGS, fake_host_modules, free_port, load_host_script, sample_library

ROOT = Path(__file__).resolve().parents[1]
# Built by tools/setup_ui_host.sh (.ci/run builds it and exports the variable). Set explicitly, it must exist:
# CI then fails instead of skipping the Gradio 3.41 case; unset, the default cache path is tried.
GRADIO_341_GIVEN = os.environ.get("LORA_SYNTAX_GRADIO341_PYTHON")
GRADIO_341 = Path(GRADIO_341_GIVEN or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                  / "lora-syntax" / "gradio341" / "bin" / "python")


def test_importing_the_script_outside_a_host_registers_nothing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "modules", None)  # no host: "import modules" fails
    script = load_host_script()
    assert script.script_callbacks is None and script.shared is None


def test_script_registers_a_tab_whose_cards_target_the_host_prompts(monkeypatch, tmp_path) -> None:
    for name, module in fake_host_modules(sample_library(tmp_path), "is_sdxl").items():
        monkeypatch.setitem(sys.modules, name, module)
    script = load_host_script()
    (callback,) = sys.modules["modules.script_callbacks"].registered
    ((blocks, title, tab_id),) = callback()
    assert (title, tab_id) == ("LoRA Networks", "lora_syntax_networks")
    page = next(block.value for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "lsx_cards")
    assert "txt2img_prompt" in page and "img2img_neg_prompt" in page
    assert "loaded model: SDXL" in page and "lsx-other-arch" in page  # SD1.5 cards dimmed under an SDXL model
    assert script.lora_folders(sys.modules["modules.shared"]) == [tmp_path]


def interpreters() -> list:
    marks = pytest.mark.skipif(not GRADIO_341.exists() and not GRADIO_341_GIVEN,
                               reason=f"no Gradio 3.41 venv at {GRADIO_341}: run bash tools/setup_ui_host.sh")
    return [pytest.param(sys.executable, id="gradio-current"), pytest.param(str(GRADIO_341), id="gradio-3.41",
                                                                         marks=marks)]


@pytest.mark.browser
@pytest.mark.parametrize("python", interpreters())
def test_card_click_edits_the_host_prompt(python, tmp_path) -> None:
    if python != sys.executable:
        assert Path(python).exists(), f"LORA_SYNTAX_GRADIO341_PYTHON={python} does not exist (tools/setup_ui_host.sh)"
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent")
    port, lora_dir = free_port(), sample_library(tmp_path)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([python, str(ROOT / "tests" / "helpers_ui.py"), str(lora_dir), str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(f"http://127.0.0.1:{port}/")
            prompt = "#txt2img_prompt textarea"
            page.fill(prompt, "a cat")
            page.wait_for_function("() => window.loraSyntax !== undefined")
            # Gradio 4+: role=tab buttons; 3.41: buttons in .tab-nav
            page.locator("[role=tab], .tab-nav button").filter(has_text="LoRA Networks").first.click()
            card = page.locator(".lsx-card", has=page.locator(".lsx-name", has_text="watercolor"))
            card.click()
            assert page.input_value(prompt) == "a cat, <lora:styles/watercolor:1>, wcstyle"
            card.click()
            assert page.input_value(prompt) == "a cat"
            save_preferred_weight_in_details(page, lora_dir)
            (ROOT / "test-output").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "test-output" / f"ui-host-{Path(python).parent.parent.name}.png"))
            browser.close()
    finally:
        server.kill()
        server.wait()


def save_preferred_weight_in_details(page, lora_dir: Path) -> None:
    page.locator(".lsx-card", has=page.locator(".lsx-name", has_text="inkwash")).locator(".lsx-details").click()
    # Gradio 3.41 puts an HTML/Markdown component's elem_id on two nested elements: take the first
    page.locator("#lsx_details_html", has_text="kohya-ss/sd-scripts").first.wait_for()
    page.locator("#lsx_weight textarea, #lsx_weight input").fill("0.7")
    page.locator("#lsx_save").click()
    page.locator("#lsx_status", has_text="Saved").first.wait_for()
    assert json.loads((lora_dir / "inkwash.json").read_text(encoding="utf-8"))["preferred weight"] == 0.7


def wait_until_up(server: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"host page exited with {server.returncode}: {server.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"host page did not answer at {url} within {timeout} s")


def test_ui_command_serves_the_app_on_localhost(tmp_path) -> None:
    """``python extension.py ui`` end to end: arguments, library, launch; the page answers on 127.0.0.1."""
    port = free_port()
    model = tmp_path / "model"  # the model loads on first Generate: the page starts on a folder that only looks like one
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    server = subprocess.Popen([sys.executable, str(ROOT / "extension.py"), "ui", "--model", str(model),
                               "--lora-dir", str(sample_library(tmp_path / "loras")), "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_up(server, f"http://127.0.0.1:{port}/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as answer:
            config = answer.read().decode("utf-8")
        assert "lora_syntax_prompt" in config and "lsx-card" in config
    finally:
        server.kill()
        server.wait()
