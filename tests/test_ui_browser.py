"""The standalone app and its Networks tab in headless Chromium: clicks, details, plan view, generation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from helpers_ui import CHROMIUM, CHROMIUM_ARGS, HOSTILE, free_port, make_lora, sample_library

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

OUT = Path(__file__).resolve().parents[1] / "test-output"
PROMPT = "#lora_syntax_prompt textarea"
NEGATIVE = "#lora_syntax_negative textarea"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    return sample_library(tmp_path_factory.mktemp("loras"))


@pytest.fixture(scope="module")
def generation(tmp_path_factory, lora_dir) -> tuple[Path, list[Path], str]:
    """(model folder, LoRA folders, a LoRA name) for Generate: the demo model and one of its LoRAs when the
    demo kit is built, else the tiny SD1.5 pipeline saved to disk and the sample 'inkwash' (which fits it)."""
    from lora_syntax import demo

    demo_loras = sorted(Path(demo.LORA_DIR).glob("*.safetensors")) if Path(demo.LORA_DIR).is_dir() else []
    if (Path(demo.MODEL_DIR) / "model_index.json").is_file() and demo_loras:
        return Path(demo.MODEL_DIR), [Path(demo.LORA_DIR)], demo_loras[0].stem
    from lora_syntax.testing.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("model")
    tiny_pipeline("sd15").save_pretrained(folder)
    return folder, [lora_dir], "inkwash"


@pytest.fixture(scope="module")
def server(lora_dir, generation):
    from lora_syntax.library import LoraLibrary
    from ui.app import Generator, build_app, launch

    model_dir, generation_dirs, _ = generation
    library = LoraLibrary([lora_dir])
    shared = library if generation_dirs == [lora_dir] else None  # the demo LoRAs get their own library
    blocks = build_app(library, Generator(model_dir, generation_dirs, shared))
    port = free_port()
    launch(blocks, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(15_000)
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(server)
    page.wait_for_selector(PROMPT)
    page.wait_for_function("() => window.loraSyntax !== undefined")
    yield page
    OUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUT / f"ui-{request.node.name}.png"), full_page=True)
    page.close()


def networks(page):
    page.get_by_role("tab", name="Networks").click()
    page.wait_for_selector(".lsx-card")


def card(page, text: str):
    return page.locator(".lsx-card", has=page.locator(".lsx-name", has_text=text))


def test_card_click_inserts_tag_and_trigger_word_then_removes_them(page, lora_dir) -> None:
    from lora_syntax.library import LoraLibrary
    from lora_syntax.syntax import parse

    page.fill(PROMPT, "a photo of a cat")
    networks(page)
    card(page, "watercolor").click()
    text = page.input_value(PROMPT)
    assert text == "a photo of a cat, <lora:styles/watercolor:1>, wcstyle"
    name = parse(text).tags[0].name
    assert LoraLibrary([lora_dir]).resolve(name).path == lora_dir / "styles" / "watercolor.safetensors"
    card(page, "watercolor").click()
    assert page.input_value(PROMPT) == "a photo of a cat"


def test_click_inserts_at_cursor_of_focused_negative_box_without_duplicate_words(page) -> None:
    page.fill(PROMPT, "inkwash mountain")
    page.fill(NEGATIVE, "blurry, ugly")
    page.locator(NEGATIVE).evaluate("box => { box.focus(); box.setSelectionRange(6, 6); }")
    networks(page)
    card(page, "inkwash").click()
    assert page.input_value(NEGATIVE) == "blurry, <lora:inkwash:0.8>, inkwash, ugly"
    assert page.input_value(PROMPT) == "inkwash mountain"
    page.locator(PROMPT).focus()
    card(page, "inkwash").click()  # word already there: only the tag goes in
    assert page.input_value(PROMPT) == "inkwash mountain, <lora:inkwash:0.8>"
    card(page, "inkwash").click()
    assert page.input_value(PROMPT) == "inkwash mountain"


def test_click_mid_prompt_then_weight_edit_then_click_gives_the_prompt_back(page) -> None:
    original = "a blue circle on a white background"
    page.fill(PROMPT, original)
    page.locator(PROMPT).evaluate("box => { box.focus(); box.setSelectionRange(6, 6); }")
    networks(page)
    card(page, "watercolor").click()
    inserted = "a blue, <lora:styles/watercolor:1>, wcstyle, circle on a white background"
    assert page.input_value(PROMPT) == inserted
    page.fill(PROMPT, inserted.replace(":1>", ":0.45>"))
    card(page, "watercolor").click()
    assert page.input_value(PROMPT) == original


def test_auto_insert_off_inserts_only_the_tag(page) -> None:
    networks(page)
    page.locator("#lsx_autoinsert input[type=checkbox]").uncheck()
    card(page, "pixel art").click()
    assert page.input_value(PROMPT) == "<lora:styles/pixel art:1>"


def test_search_filter_and_marking_other_architectures(page) -> None:
    networks(page)
    page.fill("#lsx_search textarea, #lsx_search input", "wcstyle")
    page.wait_for_function("() => document.querySelectorAll('.lsx-card').length === 1")
    assert card(page, "watercolor").count() == 1
    page.fill("#lsx_search textarea, #lsx_search input", "")
    page.wait_for_function("() => document.querySelectorAll('.lsx-card').length === 5")
    assert page.locator(".lsx-group h3").all_inner_texts() == ["(top folder)", "styles", "xl"]
    assert "lsx-other-arch" in card(page, "neon_xl").get_attribute("class")  # SDXL LoRA, SD1.5 model
    assert "lsx-other-arch" not in card(page, "inkwash").get_attribute("class")
    page.locator("#lsx_networks_tab").screenshot(path=str(OUT / "ui-networks-tab.png"))


def test_details_show_metadata_chips_insert_and_user_fields_save(page, lora_dir) -> None:
    networks(page)
    card(page, "inkwash").locator(".lsx-details").click()
    panel = page.locator("#lsx_details_html")
    panel.locator("text=kohya-ss/sd-scripts").wait_for()
    assert "mountain 7" in panel.inner_text().replace("\n", " ")
    page.locator(PROMPT).focus()
    # trigger words (its trigger phrase) and dataset tags are separate chips
    assert panel.locator(".lsx-chip:not(.lsx-tag)").all_inner_texts() == ["inkwash"]
    panel.locator(".lsx-chip.lsx-tag", has_text="mountain").click()
    assert page.input_value(PROMPT) == "mountain"
    weight = page.locator("#lsx_weight textarea, #lsx_weight input")
    assert float(weight.input_value()) == 0.8
    weight.fill("abc")
    page.locator("#lsx_save").click()
    page.locator("#lsx_status", has_text="preferred weight must be a number from 0 to 2").wait_for()
    assert "notes" not in json.loads((lora_dir / "inkwash.json").read_text(encoding="utf-8"))
    weight.fill("0.6")
    page.fill("#lsx_notes textarea", "good at 0.6")
    page.locator("#lsx_save").click()
    # a pattern, not a string: has_text="Saved" matches case-insensitively, and the refusal above ends
    # "nothing was saved", so it would not wait for this save at all (the file read too early)
    page.locator("#lsx_status", has_text=re.compile(r"Saved inkwash\.json")).wait_for()
    saved = json.loads((lora_dir / "inkwash.json").read_text(encoding="utf-8"))
    assert saved["preferred weight"] == 0.6 and saved["notes"] == "good at 0.6"
    card(page, "inkwash").locator(".lsx-weight", has_text="0.6").wait_for()
    page.locator("#lsx_details_panel").screenshot(path=str(OUT / "ui-networks-details.png"))
    page.locator(PROMPT).fill("")
    card(page, "inkwash").click()
    assert page.input_value(PROMPT) == "<lora:inkwash:0.6>, inkwash"


def test_hostile_name_and_metadata_render_as_text(page) -> None:
    networks(page)
    hostile = card(page, HOSTILE)
    assert hostile.locator(".lsx-name").inner_text() == HOSTILE
    assert page.locator("img[src='x']").count() == 0
    hostile.click()  # the name cannot be written in a tag: the card says so and leaves the prompt alone
    assert page.input_value(PROMPT) == ""
    assert "cannot contain" in page.locator(".lsx-status").inner_text()
    hostile.locator(".lsx-details").click()
    page.locator("#lsx_details_html .lsx-tag", has_text="<script>alert(2)</script>").wait_for()
    assert page.locator("#lsx_details_html script").count() == 0
    assert page.dialogs == []


def test_plan_view_updates_as_you_type_and_shows_error_column(page) -> None:
    from lora_syntax.syntax import parse

    page.locator(PROMPT).fill("a cat <lora:inkwash:0.5@3>")
    plan = page.locator("#lsx_plan")
    plan.locator("text=3-20: 0.5").first.wait_for()
    assert "inkwash" in plan.inner_text()
    bad = "a cat <lora:inkwash:te=0.5:bogus=1>"
    column = parse(bad, on_error="skip").errors[0].column
    page.locator(PROMPT).fill(bad)
    plan.locator(f"text=column {column}:").wait_for()


def test_generate_shows_image_and_plan(page, generation) -> None:
    name = generation[2]
    page.locator(PROMPT).fill(f"a photo of a cat <lora:{name}:0.8>")
    for slider, value in (("#lsx_steps", "3"), ("#lsx_width", "64"), ("#lsx_height", "64")):
        page.locator(f"{slider} input[type=number]").fill(value)
        page.locator(f"{slider} input[type=number]").press("Enter")
    page.locator("#lsx_generate").click()
    page.locator("#lsx_gen_status", has_text="Done").wait_for(timeout=90_000)
    assert page.locator("#lsx_image img").count() == 1
    assert name in page.locator("#lsx_gen_status").inner_text()
    assert "1-3: 0.8" in page.locator("#lsx_plan").inner_text()
    # the served image is the PNG with its infotext, and the page shows that text under it
    shown = page.locator("#lsx_infotext textarea").input_value()
    assert shown.startswith(f"a photo of a cat <lora:{name}:0.8>\nSteps: 3, Sampler: ") and "Lora hashes: " in shown
    served = page.evaluate("""async () => {
        const bytes = new Uint8Array(await (await fetch(document.querySelector('#lsx_image img').src)).arrayBuffer());
        return Array.from(bytes); }""")
    from PIL import Image
    import io

    with Image.open(io.BytesIO(bytes(served))) as image:
        assert image.format == "PNG" and image.text["parameters"] == shown
    page.locator("#lsx_steps input[type=number]").fill("500")
    page.locator("#lsx_generate").click()
    page.locator("#lsx_gen_status", has_text="Steps must be a whole number from 1 to 150").wait_for(timeout=30_000)
    page.locator("#lsx_steps input[type=number]").fill("3")
    page.locator(PROMPT).fill("a cat <lora:no such lora:1>")
    page.locator("#lsx_generate").click()
    page.locator("#lsx_gen_status", has_text="No LoRA named 'no such lora'").wait_for(timeout=30_000)


def test_refresh_finds_new_files(page, lora_dir) -> None:
    networks(page)
    make_lora(lora_dir / "new", "fresh", words="freshstyle")
    try:
        page.locator("#lsx_refresh").click()
        card(page, "fresh").wait_for()
    finally:
        shutil.rmtree(lora_dir / "new")
        page.locator("#lsx_refresh").click()
