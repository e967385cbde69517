"""Host-independent web-UI conventions: infotext field and paste-back, negative tags, API payloads, folders."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from lora_syntax.hosts import webui
from lora_syntax.library import LoraLibrary
from lora_syntax.plan import build_plan
from lora_syntax.syntax import parse

KIT = Path(__file__).resolve().parents[1] / "lora_syntax" / "demo" / "kit"


def test_infotext_field_is_what_generate_writes_and_pastes_back_to_the_same_weights():
    plan = build_plan("a cat <lora:ink:0.8:te=1@1,0.25@3> <lora:oil:0.5>", 10)
    fields = webui.infotext_fields(plan)
    assert fields == {"LoRA weights": json.dumps("<lora:ink:te=1@1,0.25@3:unet=0.8> <lora:oil:te=0.5:unet=0.5>")}
    pasted = webui.paste_tags("a cat", fields["LoRA weights"])
    assert pasted == "a cat, <lora:ink:te=1@1,0.25@3:unet=0.8> <lora:oil:te=0.5:unet=0.5>"
    again = build_plan(pasted, 10)
    assert [(l.weights("text_encoder", None), l.weights("unet", None)) for l in again.loras] == \
           [(l.weights("text_encoder", None), l.weights("unet", None)) for l in plan.loras]
    # tags already in the prompt are not added twice; no tags, no field
    assert webui.paste_tags("a cat <lora:ink:0.8:te=1@1,0.25@3> <lora:oil:0.5>", fields["LoRA weights"]) == \
        "a cat <lora:ink:0.8:te=1@1,0.25@3> <lora:oil:0.5>"
    assert webui.infotext_fields(build_plan("a cat", 10)) == {}


def test_negative_prompt_tags_are_removed_with_a_warning_naming_them():
    clean, warning = webui.strip_negative("ugly <lora:ink:0.5>, blurry <lora:bad:te=>")
    assert clean == "ugly, blurry"
    assert warning is not None and "'<lora:ink:0.5>', '<lora:bad:te=>'" in warning
    assert webui.strip_negative("ugly, blurry") == ("ugly, blurry", None)


def test_error_messages_name_the_bad_tag_and_keep_the_good_ones():
    prompt = "x <lora:a:zz=1> <lora:b:0.5>"
    messages = webui.error_messages(prompt)
    assert len(messages) == 1 and "<lora:a:zz=1>" in messages[0] and "unknown key 'zz'" in messages[0]
    assert [t.name for t in parse(prompt, on_error="skip").tags] == ["b"]


def test_library_payload_lists_architecture_trigger_words_and_compatibility():
    items = {item["name"]: item for item in webui.library_payload(LoraLibrary([KIT / "loras"]), "sd15")}
    assert sorted(items) == ["night", "sepia", "zorbstar"]
    assert items["zorbstar"]["trigger_words"][0] == "zorbstar"   # activation text first, then dataset tags
    assert items["night"]["preferred_weight"] == 0.8
    assert {item["architecture"] for item in items.values()} == {"sd15"}
    assert {item["compatible"] for item in items.values()} == {True}
    assert {i["compatible"] for i in webui.library_payload(LoraLibrary([KIT / "loras"]), "sdxl")} == {False}
    assert json.loads(json.dumps(list(items.values())))  # JSON-ready


def test_last_run_payload_and_plan_payload():
    assert webui.last_run_payload(None) == {"status": "none"}
    plan = build_plan("a <lora:ink:1:te=1@1,0@4>", 6)
    record = webui.RunRecord(prompt="a", steps=[6], plan=webui.plan_payload(plan), status="done")
    payload = webui.last_run_payload(record)
    assert payload["plan"] == [{"name": "ink", "te": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "unet": [1.0] * 6,
                                "change_points": [4]}]
    assert payload["status"] == "done" and payload["passes"] == [6]


def test_lora_folders_from_options_or_models_path():
    assert webui.lora_folders(SimpleNamespace(lora_dir="/a", lyco_dir="/b"), "/m") == [Path("/a"), Path("/b")]
    assert webui.lora_folders(SimpleNamespace(lora_dir=None), "/m") == [Path("/m/Lora")]
    assert webui.lora_folders(None, None) == []


def test_start_good_tags_leaves_out_each_failing_tag_and_says_why(tmp_path):
    import shutil

    from lora_syntax.hosts.diffusers import session_for
    from lora_syntax.testing.tiny import tiny_pipeline

    for name in ("sepia", "night"):
        shutil.copy2(KIT / "loras" / f"{name}.safetensors", tmp_path / f"{name}.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    pipe = tiny_pipeline("sd15")
    session = session_for(pipe, [tmp_path])
    run, messages = webui.start_good_tags(session, "<lora:broken:1> <lora:nosuch:1> <lora:x:zz=1>", 4)
    assert run is None and len(messages) == 3
    assert [m.split(":")[0] for m in messages] == ["LoRA tag error", "<lora", "<lora"]
    assert "<lora:nosuch:1>: " in messages[1] and "<lora:broken:1>: " in messages[2]
    assert webui.network_text({"lora": [SimpleNamespace(items=["a", "te=1@1", "0@3"])], "lyco": []}) == \
        "<lora:a:te=1@1:0@3>"
    assert webui.strip_negatives(["a <lora:x:1>", "b"]) == (["a", "b"], webui.strip_negative("a <lora:x:1>")[1])


def test_library_is_kept_while_the_folders_stay_and_errors_accumulate_in_one_field(tmp_path):
    library = webui.library_for(None, [KIT / "loras"])
    assert webui.library_for(library, [KIT / "loras"]) is library
    assert webui.library_for(library, [tmp_path]) is not library
    fields: dict = {}
    webui.add_error_field(fields, "first problem\n  caret line")
    webui.add_error_field(fields, "second problem")
    assert fields == {"LoRA errors": "first problem; second problem"}
