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
    state = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8) * 0.1 + seed,
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(8, 2) * 0.1}
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
