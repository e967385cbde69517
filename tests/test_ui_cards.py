"""Networks tab logic without a browser: card data, escaping, search/sort, details, saving, plan view."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from helpers_ui import HOSTILE, make_lora, sample_library
from lora_syntax.library import LoraLibrary
from lora_syntax.syntax import parse
from ui import compat
from ui.cards import data_attr, format_weight, render_card, render_details, select, tag_name_for
from ui.networks import NetworksModel
from ui.plan_view import plan_view


@pytest.fixture
def model(tmp_path) -> NetworksModel:
    return NetworksModel(LoraLibrary([sample_library(tmp_path)]), model_architecture=lambda: "sd15")


def by_name(model: NetworksModel) -> dict:
    return {card.name: card for card in model.cards()}


def test_cards_carry_tag_name_weight_words_and_group(model) -> None:
    cards = by_name(model)
    ink, water, neon = cards["inkwash"], cards["styles/watercolor"], cards["xl/neon_xl"]
    assert (ink.tag_name, ink.weight, ink.auto_words, ink.group) == ("inkwash", 0.8, ("inkwash",), "")
    assert (water.tag_name, water.group, water.auto_words) == ("styles/watercolor", "styles", ("wcstyle",))
    assert water.words == ("wcstyle",) and water.tags == ("wcstyle", "flower")  # caption tags: dataset tags only
    assert (ink.words_source, water.words_source) == ("trigger phrase", "dataset folder name")
    assert neon.architecture == "sdxl"


def test_details_label_trigger_words_with_their_source_and_caption_tags_as_dataset_tags(model) -> None:
    card = by_name(model)["styles/watercolor"]
    panel = render_details(card, model.library.info("styles/watercolor"))
    trigger, dataset = panel.split("<h4>Trigger words (from dataset folder name)</h4>")[1].split(
        "<h4>Dataset tags</h4>")
    assert "wcstyle" in trigger and "flower" not in trigger
    assert "flower" in dataset and "wcstyle" in dataset


def test_every_inserted_name_resolves_back_to_its_file(model) -> None:
    library = model.library
    for card in model.cards():
        if card.tag_name is None:
            continue
        tag = f"<lora:{card.tag_name}:{format_weight(card.weight)}>"
        (parsed,) = parse(tag).tags
        assert library.resolve(parsed.name).name == card.name


def test_names_a_tag_cannot_hold_fall_back_to_an_alias_or_none() -> None:
    assert tag_name_for("a:b", ()) is None
    assert tag_name_for("a:b", ("my alias",)) == "my alias"
    assert tag_name_for(HOSTILE, ()) is None
    assert tag_name_for("styles/pixel art", ()) == "styles/pixel art"


def test_hostile_name_and_tags_are_escaped_everywhere(model) -> None:
    page = model.html()
    assert "<img src=x" not in page and "<script>" not in page
    assert html.escape(HOSTILE) in page
    card = by_name(model)[HOSTILE]
    details = render_details(card, model.library.info(next(e for e in model.library.entries() if e.name == HOSTILE)))
    assert "<script>" not in details and "&lt;script&gt;alert(2)&lt;/script&gt;" in details


def test_json_in_attributes_round_trips_and_cannot_close_the_attribute() -> None:
    value = {"name": 'x" onmouseover="alert(1)', "words": ["</div><script>", "it's"]}
    attribute = data_attr(value)
    assert '"' not in attribute and "<" not in attribute and "'" not in attribute
    assert json.loads(html.unescape(attribute)) == value


def test_card_payload_has_what_the_page_script_reads(model) -> None:
    snippet = render_card(by_name(model)["inkwash"], "sd15")
    payload = json.loads(html.unescape(re.search(r'data-lora="([^"]*)"', snippet).group(1)))
    assert payload == {"name": "inkwash", "file": "inkwash", "weight": "0.8", "words": ["inkwash"]}
    other = render_card(by_name(model)["xl/neon_xl"], "sd15")
    assert "lsx-other-arch" in other and "lsx-badge-other" in other


def test_search_filter_and_sort(model, tmp_path) -> None:
    cards = model.cards()
    assert [c.name for c in select(cards, query="WCSTYLE")] == ["styles/watercolor"]
    assert [c.name for c in select(cards, query="flower")] == ["styles/watercolor"]  # dataset tag
    assert [c.name for c in select(cards, architecture="sdxl")] == ["xl/neon_xl"]
    make_lora(tmp_path / "styles", "zz_big", rank=64)
    sizes = [c.name for c in select(model.cards(refresh=True), sort="size") if c.group == "styles"]
    assert sizes[0] == "styles/zz_big"
    with pytest.raises(ValueError, match="sort must be one of"):
        select(cards, sort="colour")


def test_refresh_rescans_folders(model, tmp_path) -> None:
    assert "late/newcomer" not in by_name(model)
    make_lora(tmp_path / "late", "newcomer")
    assert "late/newcomer" not in by_name(model)  # the scan is cached until Refresh
    assert "late/newcomer" in model.html(refresh=True) and "late/newcomer" in by_name(model)


def test_details_and_save_write_a1111_sidecar(model, tmp_path) -> None:
    panel, activation, weight, negative, notes, status = model.details("inkwash")
    assert "kohya-ss/sd-scripts" in panel and "mountain" in panel and (weight, status) == ("0.8", "")
    message = model.save("inkwash", "inkwash, ink", 0.65, "blurry", "my notes")
    assert message.startswith("Saved")
    saved = json.loads((tmp_path / "inkwash.json").read_text(encoding="utf-8"))
    assert saved == {"activation text": "inkwash, ink", "preferred weight": 0.65, "negative text": "blurry",
                     "notes": "my notes"}
    assert by_name(model)["inkwash"].auto_words == ("inkwash", "ink")
    assert model.save("", "", 0, "", "").startswith("**Error:**")
    assert model.details("gone")[-1].startswith("**Error:**")


@pytest.mark.parametrize("typed", ["-1", "100", "100000000099", "abc", "nan", "inf", "1e400", "2.01", " -0.5 "])
def test_save_refuses_a_preferred_weight_outside_0_to_2_and_keeps_the_file(model, tmp_path, typed) -> None:
    sidecar = tmp_path / "inkwash.json"
    before = sidecar.read_bytes() if sidecar.exists() else None
    message = model.save("inkwash", "changed", typed, "changed", "changed")
    assert message == ("**Error:** preferred weight must be a number from 0 to 2 (0 or empty = not set, as in "
                       f"A1111), not {typed.strip()!r}; nothing was saved.".replace("'", "&#x27;"))
    assert (sidecar.read_bytes() if sidecar.exists() else None) == before


@pytest.mark.parametrize(("typed", "stored"), [("0", 0.0), ("", 0.0), ("2", 2.0), (" 0.35 ", 0.35), (1.25, 1.25)])
def test_save_accepts_weights_0_to_2_as_typed(model, tmp_path, typed, stored) -> None:
    assert model.save("inkwash", "", typed, "", "").startswith("Saved")
    assert json.loads((tmp_path / "inkwash.json").read_text(encoding="utf-8"))["preferred weight"] == stored


def test_save_user_metadata_checks_the_weight_too(tmp_path) -> None:
    from lora_syntax.metadata import save_user_metadata

    with pytest.raises(ValueError, match="from 0 to 2"):
        save_user_metadata(tmp_path / "x.safetensors", preferred_weight=float("nan"))
    assert not (tmp_path / "x.json").exists()


def test_plan_view_shows_table_plot_and_error_columns() -> None:
    text, plot = plan_view("cat <lora:ink:0.5@3>", 20)
    assert "3-20: 0.5" in text and plot is not None and plot.size[0] > 100
    bad = "cat <lora:ink:te=0.5:bogus=1>"
    text, _ = plan_view(bad, 20)
    assert text.count("column 22") == 1 and "\">column" not in text   # the position, said once
    assert "did you mean" not in text and "expected one of" in text     # 'bogus' is close to no key


def test_plan_view_position_on_a_multi_line_prompt_is_the_line_and_column() -> None:
    text, _ = plan_view("a cat\nin the snow <lora:ink:bogus=1>", 20)
    assert "at line 2, column 23:" in text and text.count("column") == 1
    assert html.unescape(text).count("\n  in the snow <lora:ink:bogus=1>\n" + " " * 24 + "^") == 1


def test_plan_view_names_unknown_loras_with_the_closest_names(model) -> None:
    text, _ = plan_view("cat <lora:inkwsh:1> <lora:inkwash:0.5>", 20, library=model.library)
    assert "No LoRA named &#x27;inkwsh&#x27;" in text and "Closest names: &#x27;inkwash&#x27;" in text
    assert "no syntax errors" not in text
    text, _ = plan_view("cat <lora:inkwash:0.5>", 20, library=model.library)
    assert "1 LoRA tag(s), no syntax errors, every name found" in text
    assert "<lora:" not in plan_view("<lora:<img src=x onerror=alert(1)>:1>", 20)[0].replace("&lt;lora:", "")


def test_plan_view_strength_warning_counts_only_components_each_demo_file_touches() -> None:
    from lora_syntax.demo import LORA_DIR

    library = LoraLibrary([LORA_DIR])
    text, _ = plan_view("a <lora:sepia:1> <lora:night:1>", 8, library=library)   # neither has text-encoder keys
    assert "denoiser in blocks 2.00 at step 1" in text and "text encoders" not in text
    assert "text encoders 2.00 at step 1" in plan_view("a <lora:sepia:1> <lora:night:1>", 8)[0]  # no library: unknown
    text, _ = plan_view("a <lora:zorbstar:2:0.5>", 8, library=library)               # zorbstar has some
    assert "&lt;lora:zorbstar:2:0.5&gt;: LoRA strength above 1.5: text encoders 2.00 at step 1. One LoRA" in text
    assert "strength" not in plan_view("a <lora:sepia:2:0.5>", 8, library=library)[0]


def test_compat_picks_the_js_keyword_for_the_installed_gradio(monkeypatch) -> None:
    assert compat.js_kwargs("() => 1") == ({"js": "() => 1"} if compat.gradio_major() >= 4 else {"_js": "() => 1"})
    monkeypatch.setattr(compat, "gradio_major", lambda: 3)
    assert compat.js_kwargs("f") == {"_js": "f"} and "quiet" not in compat.launch_kwargs("127.0.0.1", 1)
    assert compat.static_text("networks.js").lstrip().startswith("() =>")


def test_app_command_arguments() -> None:
    import argparse

    from ui import app

    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    args = parser.parse_args(["--lora-dir", "a", "--lora-dir", "b", "--port", "9000"])
    assert (args.lora_dirs, args.port, args.host, args.model) == ([Path("a"), Path("b")], 9000, "127.0.0.1", None)
    args.lora_dirs = [Path("/nonexistent/loras")]
    from lora_syntax.errors import LoraError

    with pytest.raises(LoraError, match="does not exist"):
        app.run(args)
