"""Reliability (issue 14, issue 13 items 4, 5, 9): files swapped under a session, hostile metadata, huge prompts,
odd names, stale caches. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers_engine import assert_bitwise, lora_state_dict, snapshot, write_lora
from lora_syntax.errors import LoraError, LoraFileError, LoraNameError
from lora_syntax.hosts.diffusers import activate
from lora_syntax.library import LoraLibrary
from lora_syntax.metadata import read_info, save_user_metadata
from lora_syntax.testing.tiny import tiny_pipeline

DEEP = "[" * 1000 + "]" * 1000   # 2 KB of JSON nested past Python's recursion limit


@pytest.fixture(scope="module")
def sd15():
    return tiny_pipeline("sd15")


def _lora_file(folder: Path, name: str, metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    state = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 32) * 0.1 + seed,
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 2) * 0.1}
    save_file(state, str(path), metadata=metadata)
    return path


# -- 14.1: containment is checked on the file actually opened --------------------------------------------------
def test_a_lora_swapped_for_a_symlink_out_of_the_folders_is_refused_at_load_time(tmp_path):
    pipe = tiny_pipeline("sd15")
    folder, outside = tmp_path / "loras", tmp_path / "elsewhere"
    write_lora(folder, "t", lora_state_dict(pipe, seed=1))
    evil = write_lora(outside, "evil", lora_state_dict(pipe, seed=2, scale=5.0))
    before = snapshot(pipe)
    with activate(pipe, "a <lora:t:1>", lora_dirs=[folder], steps=2):
        pass
    (folder / "t.safetensors").unlink()
    (folder / "t.safetensors").symlink_to(evil)
    with pytest.raises(LoraFileError, match=r"t\.safetensors' .*evil\.safetensors', outside the LoRA "
                                            r"folders.*Move or copy the file into a LoRA folder"):
        with activate(pipe, "a <lora:t:1>", lora_dirs=[folder], steps=2):
            pass
    assert_bitwise(before, pipe)


def test_the_check_is_made_on_the_file_read_even_with_an_entry_from_before_the_swap(tmp_path, sd15):
    from lora_syntax.keymaps.build import tree_from_pipeline

    folder, outside = tmp_path / "loras", tmp_path / "elsewhere"
    write_lora(folder, "t", lora_state_dict(sd15, seed=1))
    evil = write_lora(outside, "evil", lora_state_dict(sd15, seed=2))
    library = LoraLibrary([folder])
    entry = library.resolve("t")            # scanned while inside
    (folder / "t.safetensors").unlink()
    (folder / "t.safetensors").symlink_to(evil)
    with pytest.raises(LoraFileError, match=r"'.*loras/t\.safetensors' leads to '.*evil\.safetensors', outside"):
        library.load(entry, tree_from_pipeline(sd15))
    with pytest.raises(LoraFileError, match="outside the LoRA folders"):
        library.cache.clear()
        entry.info   # noqa: B018 - the header read is checked too


def test_sidecars_and_previews_that_lead_outside_the_folders_are_not_read(tmp_path):
    folder, outside = tmp_path / "loras", tmp_path / "elsewhere"
    path = _lora_file(folder, "t")
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"activation text": "leaked words"}), encoding="utf-8")
    (outside / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "t.json").symlink_to(outside / "secret.json")
    (folder / "t.preview.png").symlink_to(outside / "secret.png")
    library = LoraLibrary([folder])
    with pytest.warns(UserWarning, match="outside the LoRA folders"):
        info = library.info("t")
    assert info.activation_text == "" and "leaked words" not in info.trigger_words
    assert info.preview is None
    assert read_info(path).activation_text == "leaked words"   # without roots (inspect FILE): read as given


# -- 14.2: nested JSON is bad input, never a RecursionError --------------------------------------------------
def test_deeply_nested_metadata_and_sidecars_give_a_warning_naming_the_file(tmp_path):
    folder = tmp_path / "loras"
    _lora_file(folder, "deep", {"ss_tag_frequency": DEEP, "software": DEEP, "ss_output_name": "deep"})
    _lora_file(folder, "sidecar")
    (folder / "sidecar.json").write_text(DEEP, encoding="utf-8")
    _lora_file(folder, "fine", {"ss_output_name": "fine"})
    from ui.networks import NetworksModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cards = NetworksModel(LoraLibrary([folder])).cards()
    assert [(card.name, card.problem) for card in cards] == [("deep", None), ("fine", None), ("sidecar", None)]
    texts = [str(w.message) for w in caught]
    assert any("ss_tag_frequency metadata of '" in t and "deep.safetensors" in t and "nested too deeply" in t
               for t in texts), texts
    assert any("sidecar.json" in t and "nested too deeply" in t for t in texts), texts
    with pytest.raises(LoraFileError, match=r"cannot update '.*sidecar\.json': it is not valid JSON \(or nested "
                                            r"too deeply to read\); fix or delete it"):
        save_user_metadata(folder / "sidecar.safetensors", notes="x")
    assert (folder / "sidecar.json").read_text(encoding="utf-8") == DEEP   # left as it was


def test_inspect_reports_nested_metadata_as_a_warning(tmp_path, capsys):
    from lora_syntax.commands import inspect

    path = _lora_file(tmp_path, "deep", {"ss_tag_frequency": DEEP, "software": DEEP})
    result = inspect.report_with_warnings(path, "sd15")
    assert any("nested too deeply" in text and "deep.safetensors" in text for text in result["warnings"])
    assert result["trainer"] == DEEP[:80]


# -- 14.8: odd names, unreadable folders ----------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_refused_as_a_name_not_as_a_corrupt_file(tmp_path):
    folder = tmp_path / "loras"
    _lora_file(folder, "fine")
    shutil.copy(folder / "fine.safetensors", os.fsencode(folder) + b"/caf\xe9.safetensors")
    library = LoraLibrary([folder])
    bad = [entry for entry in library.entries() if entry.refused]
    assert len(bad) == 1 and bad[0].name == "caf\ufffd"
    assert "'caf\\xe9' in" in bad[0].refused and "is not valid UTF-8" in bad[0].refused
    assert "rename the file" in bad[0].refused and "corrupt" not in bad[0].refused
    assert library.resolve("fine").name == "fine"


def test_a_backslash_in_a_posix_file_name_can_be_named(tmp_path):
    folder = tmp_path / "loras"
    path = _lora_file(folder, "back\\slash")
    _lora_file(folder / "sub", "name")
    library = LoraLibrary([folder])
    assert library.resolve("back\\slash").path == path
    assert library.resolve("sub\\name").path == folder / "sub" / "name.safetensors"   # Windows habit still works


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable folders")
def test_an_unreadable_sub_folder_is_reported(tmp_path):
    folder = tmp_path / "loras"
    _lora_file(folder, "fine")
    _lora_file(folder / "locked", "hidden")
    (folder / "locked").chmod(0)
    try:
        library = LoraLibrary([folder])
        with pytest.warns(UserWarning, match=r"cannot read the LoRA folder '.*locked'.*Check its permissions"):
            names = [entry.name for entry in library.entries()]
        assert names == ["fine"]
        with pytest.raises(LoraNameError, match=r"No LoRA named 'locked/hidden'.*cannot read the LoRA folder"):
            library.resolve("locked/hidden")
    finally:
        (folder / "locked").chmod(0o755)


def test_an_unreadable_sub_folder_is_reported_by_the_walk_error_handler(tmp_path, monkeypatch):
    """The same report where the test runs as root (who reads every folder): os.walk's error is simulated."""
    import lora_syntax.library as library_module

    folder = tmp_path / "loras"
    _lora_file(folder, "fine")
    real_walk = os.walk

    def walk(top, onerror=None, followlinks=False):
        onerror(PermissionError(13, "Permission denied", str(folder / "locked")))
        yield from real_walk(top, followlinks=followlinks)

    monkeypatch.setattr(library_module.os, "walk", walk)
    library = LoraLibrary([folder])
    with pytest.warns(UserWarning, match=r"cannot read the LoRA folder '.*locked' \(Permission denied\)"):
        library.entries()
    assert library.warnings == (f"cannot read the LoRA folder '{folder / 'locked'}' (Permission denied); the "
                                "LoRAs in it are not listed. Check its permissions.",)


# -- 14.9: renames, alias changes, same-size rewrites that keep the mtime ------------------------------------
def test_a_renamed_file_is_found_under_its_new_name_and_the_old_name_is_unknown(tmp_path):
    folder = tmp_path / "loras"
    _lora_file(folder, "old")
    library = LoraLibrary([folder])
    assert library.resolve("old").name == "old"
    (folder / "old.safetensors").rename(folder / "new.safetensors")
    with pytest.raises(LoraNameError, match=r"No LoRA named 'old'.*Closest names: 'new'|No LoRA named 'old'"):
        library.resolve("old")
    assert library.resolve("new").name == "new"


def test_a_changed_alias_resolves_to_the_new_one_only(tmp_path):
    folder = tmp_path / "loras"
    path = _lora_file(folder, "file", {"ss_output_name": "first"})
    library = LoraLibrary([folder])
    assert library.resolve("first").path == path
    _lora_file(folder, "file", {"ss_output_name": "second"})
    with pytest.raises(LoraNameError, match="No LoRA named 'first'"):
        library.resolve("first")
    assert library.resolve("second").path == path


def test_a_same_size_rewrite_keeping_the_mtime_is_reloaded(tmp_path, sd15):
    from lora_syntax.keymaps.build import tree_from_pipeline

    folder = tmp_path / "loras"
    path = _lora_file(folder, "t", seed=0)
    library, tree = LoraLibrary([folder]), tree_from_pipeline(sd15)
    loaded = library.load("t", tree)
    first = loaded.patches[0].adapter.down.clone()
    stat = path.stat()
    replacement = _lora_file(tmp_path / "new", "t", seed=3)
    shutil.copyfile(replacement, path)                       # same size: only the contents change
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p / rsync -t do
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    again = library.load("t", tree)
    assert again is not loaded and library.cache.misses == 2   # read again, not served from the cache
    second = again.patches[0].adapter.down
    assert not torch.equal(first, second) and torch.equal(second.mean().round(), torch.tensor(3.0))


# -- 13.4: an alias never shadows another file's name ----------------------------------------------------------
def test_an_alias_never_shadows_another_files_name_and_each_card_resolves_to_its_file(tmp_path):
    folder = tmp_path / "loras"
    sepia = _lora_file(folder, "Sepia", {"ss_output_name": "sepia"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shutil.copy(sepia, folder / "copy.safetensors")   # keeps its internal alias "sepia"
    library = LoraLibrary([folder])
    with pytest.warns(UserWarning, match=r"'copy.safetensors' has the alias 'sepia'.*also the name of "
                                         r"'Sepia.safetensors'.*write <lora:copy> for this one"):
        entries = library.entries(refresh=True)
    assert library.resolve("sepia").path == sepia          # the file name (ignoring case) wins over the alias
    assert library.resolve("copy").path == folder / "copy.safetensors"
    assert {entry.name: library.tag_name(entry) for entry in entries} == {"Sepia": "Sepia", "copy": "copy"}


# -- 14.7: inspect names the NaN/inf tensor --------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_inspect_names_a_non_finite_tensor_even_when_no_architecture_is_known(tmp_path, capsys, bad):
    import argparse

    from lora_syntax.commands import inspect

    down = torch.randn(4, 7) * 0.1
    down[0, 0] = bad
    path = tmp_path / "broken.safetensors"
    save_file({"lora_unet_odd_module.lora_down.weight": down,
               "lora_unet_odd_module.lora_up.weight": torch.randn(7, 4)}, str(path))
    assert inspect.run(argparse.Namespace(file=path, arch=None, json=False)) == 1
    shown = capsys.readouterr()
    what = "NaN" if bad != bad else "infinite"
    message = f"has {what} values in tensor 'lora_unet_odd_module.lora_down.weight'"
    assert (shown.out + shown.err).count(message) == 1   # said once, in the report


# -- 14.4 / 13.9: bounded work and warnings per prompt ----------------------------------------------------------
def test_thousands_of_keyframes_past_the_end_give_one_short_warning_per_weight():
    from lora_syntax import build_plan

    late = ",".join(f"1@{step}" for step in range(21, 621))               # 600 keyframes past step 20, per weight
    tag = "<lora:x:" + ":".join(f"{key}=0@1,{late}" for key in ("te", "unet", "in", "mid", "out")) + ">"
    plan = build_plan(f"a {tag}", 20)                                      # 3,000 keyframes past the end in all
    assert len(tag) > 17_000 and len(plan.warnings) == 5
    assert sum(map(len, plan.warnings)) < 5 * 400                          # it was 59 MB for 3,000 keyframes
    assert plan.warnings[0] == (f"{tag[:60]}…{tag[-15:]} ({len(tag):,} characters): te= keyframes @21, @22, @23, "
                                "@24, @25 and 595 more are after the last step (20): they never apply; use a step "
                                "from 1 to 20 or a fraction (1.0 = the last step)")


def test_repeated_warnings_are_collapsed_with_a_count():
    from lora_syntax import build_plan

    plan = build_plan(" ".join(["<lora:x:0@1,1@30>"] * 3), 20)
    assert plan.warnings[0] == ("<lora:x:0@1,1@30>: strength keyframe @30 is after the last step (20): it never "
                                "applies; use a step from 1 to 20 or a fraction (1.0 = the last step) (3 times)")


@pytest.mark.parametrize(("prompt", "message"), [
    ("a " * 40_000 + "<lora:x:1>", "the prompt has 80,010 characters; at most 65,536 are read for LoRA tags"),
    (" ".join(f"<lora:x{i}:0.1>" for i in range(300)), "the prompt has 300 LoRA tags; at most 256 are allowed"),
    ("<lora:x:" + ",".join(f"1@{i}" for i in range(1, 1100)) + ">",
     "bad schedule for strength: 1,099 keyframes; at most 1,024 are allowed per weight"),
    ("<lora:x:1e308>", "bad number '1e308' for strength: weights and multipliers are limited to ±10,000"),
    ("<lora:x:1:lbw=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,-2e4>", "bad number '-2e4' for lbw: weights and multipliers"),
])
def test_past_a_documented_limit_the_prompt_gets_a_clear_error_naming_it(prompt, message):
    from lora_syntax import build_plan
    from lora_syntax.errors import LoraSyntaxError
    from lora_syntax.syntax import parse

    with pytest.raises(LoraSyntaxError, match=re_escape(message)):
        build_plan(prompt, 20)
    skipped = parse(prompt, on_error="skip")               # hosts that skip bad tags: removed, reported
    assert "<lora:" not in skipped.prompt and message in str(skipped.errors[0])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_a_huge_tag_is_planned_in_linear_size():
    from lora_syntax import build_plan
    from lora_syntax.syntax import parse

    prompt = "<lora:x:" + ",".join(f"{step % 7}@{step}" for step in range(1, 1025)) + ":lbw=OUTD>"
    plan = build_plan(prompt, 1000)
    assert len(plan.loras[0].change_points) > 800 and sum(map(len, plan.warnings)) < 1_000
    assert len(parse(prompt).tags[0].strength.keyframes) == 1024


# -- 13.5 / 14.10: the plan once the files are known -------------------------------------------------------------
def test_the_strength_warning_counts_only_components_a_file_touches(tmp_path, sd15):
    folder = tmp_path / "loras"
    write_lora(folder, "sepia", lora_state_dict(sd15, ("unet",), seed=1))
    write_lora(folder, "night", lora_state_dict(sd15, ("unet",), seed=2))
    from lora_syntax import build_plan

    prompt = "a <lora:sepia:1> <lora:night:1>"
    assert "text encoders 2.00 at step 1" in build_plan(prompt, 8).warnings[-1]   # not knowing the files
    with activate(sd15, prompt, lora_dirs=[folder], steps=8) as run:
        assert run.warnings == ("total LoRA strength above 1.5: denoiser in blocks 2.00 at step 1; denoiser mid "
                                "blocks 2.00 at step 1; denoiser out blocks 2.00 at step 1. Stacked LoRAs compound each other's artefacts: lower some weights",)
    with activate(sd15, "a <lora:sepia:1:unet=0.1> <lora:night:1:unet=0.1>", lora_dirs=[folder], steps=8) as run:
        assert run.warnings == ()   # only their text encoders would pass 1.5, and they have none
    from lora_syntax.hosts.diffusers import session_for

    run = session_for(sd15, [folder]).start(prompt, 8)
    try:
        run.begin_pass(4)           # a hires pass re-plans for its own steps: still only what the files touch
        assert "text encoders" not in run.plan.warnings[0] and "denoiser in blocks 2.00" in run.plan.warnings[0]
    finally:
        run.end()


def test_low_or_transformer_2_on_a_one_transformer_model_is_named(tmp_path):
    pipe = tiny_pipeline("flux")
    write_lora(tmp_path, "ink", lora_state_dict(pipe, ("transformer",), seed=6))
    for tag in ("<lora:ink:1:low>", "<lora:ink:1:module=transformer_2>"):
        with activate(pipe, f"a {tag}", lora_dirs=[tmp_path], steps=2, architecture="flux") as run:
            assert run.warnings == (f"{tag}: this model has no transformer_2 (its denoiser: transformer), so nothing "
                                    "of this LoRA is applied to its denoiser; `low` and module=transformer_2 are for "
                                    "two-stage models (Wan 2.2)",)
    with activate(pipe, "a <lora:ink:1:high>", lora_dirs=[tmp_path], steps=2, architecture="flux") as run:
        assert run.warnings == ()


# -- 14.11: the LoRA weights infotext plans back to the same weights ---------------------------------------------
ROUND_TRIP_TAGS = (
    "<lora:night:1:in=0:te=0@1,0.5@4>", "<lora:a:0.8>", "<lora:a:0.7:0.3>", "<lora:a:1:te=0.1@1,0.6@6>",
    "<lora:a:0@0,1@0.5>", "<lora:a:1@50%>", "<lora:a:lerp(0@0,1@10)>", "<lora:a:1:mid=0.25:out=lerp(1@1,0@12)>",
    "<lora:a:1:lbw=OUTD>", "<lora:a:1:lbw=1,0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1>", "<lora:a:1:dyn=8>",
    "<lora:a:1:module=te>", "<lora:a:1:module=unet:in=0.5>", "<lora:a:-0.5:unet=2@3,0@9>", "<lyco:a:1:0.5:4>",
    "<lora:a:1:high>", "<lora:a:0.3:low>", "<lora:styles/ink:1:te=0>", "<lora:a:0.3333>",
    "<lora:a:lerp(0@1,1@4,0.5@0.9)>",
)


@pytest.mark.parametrize("tag", ROUND_TRIP_TAGS)
@pytest.mark.parametrize("steps", [1, 12, 30])
def test_the_applied_tag_plans_back_to_the_same_weights(tag, steps):
    from lora_syntax import build_plan
    from lora_syntax.infotext import applied_tag
    from lora_syntax.plan import COMPONENTS

    original = build_plan(tag, steps).loras[0]
    written = applied_tag(original)
    again = build_plan(written, steps).loras[0]
    assert again == original, written
    for component in COMPONENTS:
        for block in (None, "IN04", "M00", "OUT08", "BASE"):
            assert again.weights(component, block) == original.weights(component, block), (written, component, block)


def test_the_infotext_keeps_group_weights():
    from lora_syntax import build_plan
    from lora_syntax.commands.generate import lora_summary

    plan = build_plan("<lora:night:1:in=0:te=0@1,0.5@4> <lora:sepia:0.5>", 10)
    assert lora_summary(plan) == "<lora:night:te=0@1,0.5@4:unet=1:in=0> <lora:sepia:te=0.5:unet=0.5>"


# -- 14.13: tags in the negative prompt, the same way everywhere --------------------------------------------------
def test_negative_prompt_tags_are_removed_and_named_by_one_core_function(tmp_path, sd15):
    from lora_syntax.hosts.diffusers import generate
    from lora_syntax.syntax import strip_negative

    assert strip_negative("blurry, <lora:night:0.3>") == (
        "blurry", "LoRA tags in the negative prompt are not applied (a LoRA changes the model, not one prompt); "
                  "removed from it: '<lora:night:0.3>'")
    assert strip_negative("blurry <lora:bad:x>, dark") == (
        "blurry, dark", "LoRA tags in the negative prompt are not applied (a LoRA changes the model, not one "
                        "prompt); removed from it: '<lora:bad:x>'")
    assert strip_negative("blurry") == ("blurry", None) and strip_negative("") == (None, None)
    write_lora(tmp_path, "ink", lora_state_dict(sd15, seed=1))
    seen = []
    real_encode = sd15.encode_prompt

    def encode(*args, **kwargs):
        seen.append(kwargs.get("negative_prompt", args[4] if len(args) > 4 else None))
        return real_encode(*args, **kwargs)

    sd15.encode_prompt = encode
    try:
        generate(sd15, "a <lora:ink:1>", lora_dirs=[tmp_path], steps=1, negative_prompt="blurry, <lora:ink:0.3>",
                 output_type="latent", height=32, width=32)
    finally:
        del sd15.encode_prompt
    assert seen == ["blurry"]


# -- 14.5 / 14.6: rank 0, non-float factors, absurd magnitudes ----------------------------------------------------
PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"


def _load(sd15, state):
    from lora_syntax.keymaps.build import tree_from_pipeline
    from lora_syntax.loader import load_lora

    return load_lora(state, tree_from_pipeline(sd15), name="bad")


def test_a_rank_0_lora_is_refused_as_a_file_error_naming_the_module(sd15):
    state = {f"{PROJ_IN}.lora_down.weight": torch.zeros(0, 32), f"{PROJ_IN}.lora_up.weight": torch.zeros(32, 0),
             f"{PROJ_IN}.alpha": torch.tensor(4.0)}
    with pytest.raises(LoraFileError, match=r"LoRA 'bad' at unet\.down_blocks\.0\.attentions\.0\.proj_in: "
                                            r"lora_down\.weight has shape \(0, 32\), with no values \(a rank-0 LoRA\)"):
        _load(sd15, state)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.int32])
def test_non_float_factors_are_refused(sd15, dtype):
    state = {f"{PROJ_IN}.lora_down.weight": torch.ones(2, 32, dtype=dtype),
             f"{PROJ_IN}.lora_up.weight": torch.ones(32, 2, dtype=dtype), f"{PROJ_IN}.alpha": torch.tensor(2)}
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(LoraFileError, match=rf"proj_in: lora_down\.weight holds {name} values; LoRA factors are "
                                            r"floating point"):
        _load(sd15, state)


def test_an_int_alpha_is_still_accepted(sd15):
    state = {f"{PROJ_IN}.lora_down.weight": torch.ones(2, 32), f"{PROJ_IN}.lora_up.weight": torch.ones(32, 2),
             f"{PROJ_IN}.alpha": torch.tensor(1, dtype=torch.int64)}
    loaded = _load(sd15, state)
    assert loaded.patches[0].adapter.alpha == 1.0 and loaded.warnings == ()


def test_absurd_magnitudes_are_loaded_with_a_warning_naming_the_tensor(tmp_path, sd15):
    up = torch.ones(32, 2) * 0.01
    up[3, 1] = 1e30
    state = {f"{PROJ_IN}.lora_down.weight": torch.ones(2, 32) * 0.01, f"{PROJ_IN}.lora_up.weight": up}
    assert _load(sd15, state).warnings == (
        f"LoRA 'bad': tensor '{PROJ_IN}.lora_up.weight' holds values up to 1e+30 (above 10,000); trained LoRA factors "
        "are far smaller, so this file will likely ruin the image. Check it, or re-download it.",)
    write_lora(tmp_path, "big", state)
    with activate(sd15, "a <lora:big:0.5>", lora_dirs=[tmp_path], steps=1) as run:
        assert any("holds values up to 1e+30" in warning for warning in run.warnings)


# -- 14.3: runs do not nest, kept or not ---------------------------------------------------------------------------
def test_activate_inside_a_kept_run_raises_and_the_outer_stack_stays(tmp_path):
    from lora_syntax.hosts.diffusers import restore
    from lora_syntax.session import LoraSessionBusyError

    pipe = tiny_pipeline("sd15")
    write_lora(tmp_path, "ink", lora_state_dict(pipe, seed=1))
    write_lora(tmp_path, "oil", lora_state_dict(pipe, seed=2))
    before = snapshot(pipe)
    q = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    with activate(pipe, "a <lora:ink:1>", lora_dirs=[tmp_path], steps=2, keep=True):
        outer = q.weight.detach().clone()
        with pytest.raises(LoraSessionBusyError, match=r"<lora:ink> is still running on this model; LoRA runs do "
                                                       r"not nest"):
            with activate(pipe, "a <lora:oil:1>", lora_dirs=[tmp_path], steps=2, keep=True):
                pass
        assert torch.equal(q.weight, outer)
    assert torch.equal(q.weight, outer)      # kept: the outer stack, not the inner one
    restore(pipe)
    assert_bitwise(before, pipe)


def test_a_card_whose_name_cannot_be_written_never_inserts_an_alias_meaning_another_file(tmp_path):
    from ui.networks import NetworksModel

    folder = tmp_path / "loras"
    _lora_file(folder, "sepia", {"ss_output_name": "sepia"})
    _lora_file(folder, "odd:name", {"ss_output_name": "sepia"})    # ':' cannot be written in a tag
    _lora_file(folder, "other:name", {"ss_output_name": "moody"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cards = {card.name: card.tag_name for card in NetworksModel(LoraLibrary([folder])).cards()}
    assert cards == {"odd:name": None, "other:name": "moody", "sepia": "sepia"}


def test_a_preview_swapped_for_a_symlink_out_of_the_folders_is_not_shown(tmp_path):
    from PIL import Image

    from ui.networks import NetworksModel

    folder, outside = tmp_path / "loras", tmp_path / "elsewhere"
    _lora_file(folder, "t")
    outside.mkdir()
    Image.new("RGB", (4, 4), "red").save(folder / "t.png")
    Image.new("RGB", (4, 4), "blue").save(outside / "secret.png")
    model = NetworksModel(LoraLibrary([folder]))
    assert model.cards()[0].preview == folder / "t.png"
    info = model.library.info("t")
    (folder / "t.png").unlink()
    (folder / "t.png").symlink_to(outside / "secret.png")
    from ui.cards import card_from_entry

    assert card_from_entry(model.library.entries()[0], info).preview is None   # info read before the swap
    with pytest.warns(UserWarning, match="outside the LoRA folders"):
        assert model.cards()[0].preview is None
