"""lora-syntax inside the real SD.Next (../shared/hosts snapshot), driven over its HTTP API (and its own page in
headless Chromium for the Networks tab: 25-45 s more, most of it the page loading).

One server for the module (about 15-40 s to start, under 2 s per 32 px generation on 2 busy cores). Numbers come
from SD.Next's own images: bit-identical (``np.array_equal``) where nothing should differ, a mean difference
well above rounding where something should.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers_sdnext import SdnextServer, differ, sdnext_host
from lora_syntax.hosts import webui

pytestmark = [pytest.mark.host, pytest.mark.slow]

PROMPT = "a red circle"
OUT = Path(__file__).resolve().parents[1] / "test-output"
VISIBLE = 1.0   # mean |difference| in 0-255 units: well above what rounding alone gives (0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    host = sdnext_host()
    srv = SdnextServer(host, tmp_path_factory.mktemp("sdnext"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def base(server):
    return server.txt2img(PROMPT).images[0]


@pytest.fixture(scope="module")
def sepia(server):
    return server.txt2img(f"{PROMPT} <lora:sepia:1>")


def test_a_static_tag_is_applied_by_our_engine_with_infotext(server, base, sepia):
    assert differ(sepia.images[0], base) > VISIBLE
    assert "LoRA networks: sepia" in sepia.infotext
    assert 'LoRA weights: "<lora:sepia:te=1:unet=1>"' in sepia.infotext
    run = server.last_run()
    assert run["status"] == "done" and run["passes"] == [8]
    assert run["engine"]["applied_modules"] == 40 and run["engine"]["change_points"] == []
    field = sepia.infotext.split("LoRA weights: ", 1)[1].split('"', 2)[1]
    assert webui.paste_tags(PROMPT, f'"{field}"') == f"{PROMPT}, <lora:sepia:te=1:unet=1>"
    assert "LoRA hashes" not in sepia.infotext          # SD.Next's "LoRA add hash info to metadata" is off
    server.set_options(lora_add_hashes_to_infotext=True)
    try:
        hashed = server.txt2img(f"{PROMPT} <lora:sepia:1> <lora:zorbstar:0.5>").infotext
    finally:
        server.set_options(lora_add_hashes_to_infotext=False)
    expected = ", ".join(_addnet_hash(server.data / "loras" / f"{name}.safetensors")[:8]
                         for name in ("sepia", "zorbstar"))
    assert f'LoRA hashes: "{expected}"' in hashed       # SD.Next quotes a value holding a comma


def test_a_stepwise_tag_switches_at_the_planned_step(server, base, sepia):
    stepwise = server.txt2img(f"{PROMPT} <lora:sepia:1@1,0@5>").images[0]
    assert differ(stepwise, sepia.images[0]) > VISIBLE
    assert differ(stepwise, base) > VISIBLE
    run = server.last_run()
    assert run["change_points"] == [5]
    assert [(c["step"], c["modules"]) for c in run["engine"]["change_points"]] == [(5, 40)]
    assert run["plan"][0]["unet"] == [1.0] * 4 + [0.0] * 4


def test_a_te_schedule_changes_the_image_only_through_the_text_encoder(server, base):
    zero = server.txt2img(f"{PROMPT} <lora:zorbstar:0>").images[0]
    assert np.array_equal(zero, base)
    full = server.txt2img(f"{PROMPT} <lora:zorbstar:1>")
    assert server.last_run()["engine"]["applied_modules"] == 52          # 12 text-encoder + 40 UNet modules
    te_only = server.txt2img(f"{PROMPT} <lora:zorbstar:unet=0:te=1>").images[0]
    assert server.last_run()["engine"]["applied_modules"] == 12          # the text encoder only
    scheduled = server.txt2img(f"{PROMPT} <lora:zorbstar:unet=0:te=1@1,0@4>").images[0]
    run = server.last_run()
    assert run["engine"]["applied_modules"] == 12
    [point] = run["engine"]["change_points"]
    assert (point["step"], point["modules"]) == (4, 12) and point["reencode_ms"] > 0
    assert differ(te_only, base) > VISIBLE and differ(full.images[0], te_only) > VISIBLE
    assert differ(scheduled, te_only) > VISIBLE and differ(scheduled, base) > VISIBLE


def test_each_batch_of_a_generation_runs_the_schedule_from_its_start(server):
    tags = f"{PROMPT} <lora:sepia:1@1,0@5>"
    both = server.txt2img(tags, n_iter=2).images
    assert server.last_run()["engine"]["change_points"][0]["step"] == 5
    assert np.array_equal(both[0], server.txt2img(tags).images[0])
    assert np.array_equal(both[1], server.txt2img(tags, seed=1235).images[0])


def test_a_hires_pass_counts_its_own_steps(server):
    server.txt2img(f"{PROMPT} <lora:sepia:1@1,0@5>", enable_hr=True, hr_force=True, hr_upscaler="Latent",
                   hr_second_pass_steps=4, denoising_strength=0.5)
    run = server.last_run()
    assert run["passes"] == [8, 4]
    # step 5 of the base pass, then the step-1 weights back for the hires pass (whose own step 5 never comes)
    assert [(c["step"], c["modules"]) for c in run["engine"]["change_points"]] == [(5, 40), (1, 40)]


def test_img2img_plans_the_steps_it_samples(server, base):
    init = base64.b64encode(_png_bytes(base)).decode()
    answer = server.call("POST", "/sdapi/v1/img2img", {**_args(), "prompt": f"{PROMPT} <lora:sepia:1@1,0@3>",
                                                       "init_images": [init], "denoising_strength": 0.5})
    run = server.last_run()
    assert run["passes"] == [8]        # SD.Next asks for steps / strength + 1 so that `steps` are sampled
    assert [(c["step"], c["modules"]) for c in run["engine"]["change_points"]] == [(3, 40)]
    assert "LoRA weights: " in json.loads(answer["info"])["infotexts"][0]


def test_in_zero_and_lbw_change_what_they_should(server, base, sepia):
    no_in = server.txt2img(f"{PROMPT} <lora:sepia:1:in=0>").images[0]
    assert server.last_run()["engine"]["applied_modules"] < 40
    assert differ(no_in, sepia.images[0]) > VISIBLE and differ(no_in, base) > VISIBLE
    out_only = server.txt2img(f"{PROMPT} <lora:sepia:1:in=0:mid=0>").images[0]
    outall = server.txt2img(f"{PROMPT} <lora:sepia:1:lbw=OUTALL>").images[0]
    assert np.array_equal(out_only, outall) and differ(out_only, base) > VISIBLE
    assert np.array_equal(server.txt2img(f"{PROMPT} <lora:sepia:1:lbw=NONE>").images[0], base)


def test_base_image_is_bit_identical_after_lora_interrupted_and_failed_runs(server, base):
    server.txt2img(f"{PROMPT} <lora:night:1@1,0.3@3> <lora:zorbstar:te=0.5@1,1@2>")
    assert np.array_equal(server.txt2img(PROMPT).images[0], base)

    server.txt2img_interrupted(f"{PROMPT} <lora:sepia:lerp(0@0,1@100%)>", after_step=4, steps=200)
    run = server.last_run()
    assert run["status"] == "interrupted" and len(run["engine"]["change_points"]) > 0
    assert np.array_equal(server.txt2img(PROMPT).images[0], base)

    failed = server.call("POST", "/sdapi/v1/txt2img", {**_args(), "prompt": f"{PROMPT} <lora:sepia:1>",
                                                       "width": 36})
    assert not failed.get("images")       # the pipeline raised (width not divisible by 8) after our weights
    run = server.last_run()               # SD.Next marks a failed run as interrupted
    assert run["status"] == "interrupted" and run["engine"]["applied_modules"] == 40
    assert np.array_equal(server.txt2img(PROMPT).images[0], base)


def test_malformed_tags_take_sdnext_error_path_and_the_good_tags_still_apply(server, sepia):
    before = server.log()
    bad = server.txt2img(f"{PROMPT} <lora:sepia:1> <lora:night:zz=1> <lora:nosuch:1> <lora:broken:1>")
    assert np.array_equal(bad.images[0], sepia.images[0])
    errors = bad.infotext.split("LoRA errors: ", 1)[1]
    assert "unknown key 'zz'" in errors and "<lora:nosuch:1>" in errors and "<lora:broken:1>" in errors
    run = server.last_run()
    assert len(run["errors"]) == 3 and run["status"] == "done" and run["passes"] == [8]
    logged = " ".join(server.log()[len(before):].split())   # SD.Next's console wraps lines at 80 columns
    assert "ERROR lora-syntax: LoRA tag error: LoRA tag '<lora:night:zz=1>'" in logged
    assert "ERROR lora-syntax: <lora:nosuch:1>: " in logged


def test_negative_prompt_tags_are_removed_with_a_warning(server):
    plain = server.txt2img(PROMPT, negative_prompt="blurry").images[0]
    tagged = server.txt2img(PROMPT, negative_prompt="blurry <lora:sepia:1>").images[0]
    assert np.array_equal(plain, tagged)
    assert any("<lora:sepia:1>" in w for w in server.last_run()["warnings"])


def test_library_route_lists_sdnext_lora_folder_with_architecture(server, base):
    items = {item["name"]: item for item in server.call("GET", "/lora-syntax/v1/loras")}
    assert sorted(items) == ["broken", "night", "sepia", "zorbstar"]
    broken = items.pop("broken")
    assert broken["error"] and broken["architecture"] is None
    assert {(i["architecture"], i["compatible"]) for i in items.values()} == {("sd15", True)}
    assert items["zorbstar"]["trigger_words"][0] == "zorbstar"
    assert "Model locked" not in server.log()   # the Networks tab read the model type without loading it
    config = json.dumps(server.call("GET", "/config"))
    assert "LoRA Networks" in config and "lora_syntax_networks" in config


@pytest.mark.browser
def test_networks_tab_in_the_sdnext_page_inserts_and_removes_a_card(server, request):
    """SD.Next's own page in headless Chromium: our tab lists the LoRAs with their architecture, and a card
    click writes into SD.Next's txt2img prompt box, a second click gives the prompt back."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from helpers_ui import CHROMIUM, CHROMIUM_ARGS
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    trigger = {i["name"]: i for i in server.call("GET", "/lora-syntax/v1/loras")}["zorbstar"]["trigger_words"][0]
    box = "#txt2img_prompt textarea"
    OUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)     # SD.Next's page is large: 10-30 s to build on 2 busy cores
        try:
            page.goto(f"http://127.0.0.1:{server.port}/", timeout=180_000)
            page.wait_for_selector(box, timeout=180_000)
            page.wait_for_function("() => window.loraSyntax !== undefined")
            page.fill(box, PROMPT)
            _main_tab(page, "LoRA Networks").click()
            page.wait_for_selector("#tab_lora_syntax_networks .lsx-card", state="visible")
            cards = page.locator("#tab_lora_syntax_networks .lsx-card")
            names = cards.locator(".lsx-name").all_inner_texts()
            assert sorted(names) == ["broken", "night", "sepia", "zorbstar"]
            badges = dict(zip(names, cards.locator(".lsx-badge").all_inner_texts()))
            assert badges == {"broken": "unknown", "night": "SD1.5", "sepia": "SD1.5", "zorbstar": "SD1.5"}
            assert page.locator("#tab_lora_syntax_networks .lsx-other-arch").count() == 0   # all fit the model
            page.locator("#tab_lora_syntax_networks").screenshot(path=str(OUT / "sdnext-networks-tab.png"))
            zorbstar = page.locator(".lsx-card", has=page.locator(".lsx-name", has_text="zorbstar"))
            zorbstar.click()
            assert page.input_value(box) == f"{PROMPT}, <lora:zorbstar:1>, {trigger}"
            zorbstar.click()
            assert page.input_value(box) == PROMPT
            _main_tab(page, "Text").click()
            assert page.locator(box).is_visible() and page.input_value(box) == PROMPT
        finally:
            page.screenshot(path=str(OUT / f"sdnext-{request.node.name}.png"), full_page=True)
            browser.close()
    assert "Model locked" not in server.log()   # neither the start nor the page made SD.Next load a model


def test_z_setting_off_gives_the_tags_back_to_the_builtin(server, base, sepia):
    ours_hashed = server.txt2img(f"{PROMPT} <lora:sepia:1>", override_settings={
        "lora_add_hashes_to_infotext": True}).infotext
    server.set_options(**{webui.SETTING_KEY: False})
    try:
        builtin = server.txt2img(f"{PROMPT} <lora:sepia:1>")
        assert server.last_run()["status"] == "off"
        builtin_hashed = server.txt2img(f"{PROMPT} <lora:sepia:1>", override_settings={
            "lora_add_hashes_to_infotext": True}).infotext
        assert _field(builtin_hashed, "LoRA hashes") == _field(ours_hashed, "LoRA hashes") != ""
        assert "LoRA weights" not in builtin.infotext and "LoRA networks: sepia" in builtin.infotext
        assert differ(builtin.images[0], base) > VISIBLE
        assert "Network load: type=LoRA" in server.log()
    finally:
        server.set_options(**{webui.SETTING_KEY: True})
    ours = server.txt2img(f"{PROMPT} <lora:sepia:1>").images[0]
    assert differ(ours, sepia.images[0]) < 0.5   # the built-in's unfuse is not bit-exact; ours is from then on
    after = server.txt2img(f"{PROMPT} <lora:sepia:1>").images[0]
    assert np.array_equal(after, ours)


def _addnet_hash(path) -> str:
    """sha256 of a safetensors file's tensor data (after its header), computed here independently."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _main_tab(page, name: str):
    """A button of SD.Next's main tab bar (Gradio 3 gives them no ``tab`` role)."""
    return page.locator("#tabs .tab-nav button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).first


def _field(infotext: str, name: str) -> str:
    return infotext.split(f"{name}: ", 1)[1].split(",", 1)[0] if f"{name}: " in infotext else ""


def _args():
    from helpers_sdnext import BASE
    return dict(BASE)
