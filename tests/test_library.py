"""lora_syntax.library: tag names -> files (safely), and the bounded cache of loaded LoRAs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_syntax.errors import LoraFileError, LoraNameError
from lora_syntax.library import LoraLibrary, check_name

TENSORS = {"lora_unet_a.lora_down.weight": torch.zeros(2, 4), "lora_unet_a.lora_up.weight": torch.zeros(4, 2)}


def write(folder: Path, name: str, metadata: dict | None = None, tensors: dict | None = None) -> Path:
    path = folder / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(TENSORS if tensors is None else tensors, str(path), metadata=metadata)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "loras"
    write(root, "ink")
    write(root, "styles/ink")
    write(root, "styles/watercolor", {"modelspec.title": "Soft Water"})
    write(root, "chars/Alice", {"ss_output_name": "alice_v2"})
    write(root, "styles/sketch")
    write(root, "chars/sketch")
    torch.save({"w": torch.ones(1)}, root / "old.pt")
    (root / "notes.txt").write_text("not a LoRA")
    return root


@pytest.fixture()
def library(folder: Path) -> LoraLibrary:
    return LoraLibrary([folder])


def test_entries_list_every_file_with_posix_names(library: LoraLibrary, folder: Path) -> None:
    entries = {entry.name: entry for entry in library.entries()}
    assert sorted(entries) == ["chars/Alice", "chars/sketch", "ink", "old", "styles/ink", "styles/sketch",
                               "styles/watercolor"]
    assert entries["styles/watercolor"].aliases == ("Soft Water",)
    assert entries["chars/Alice"].aliases == ("alice_v2",)
    assert entries["ink"].size == (folder / "ink.safetensors").stat().st_size and entries["ink"].folder == folder
    assert entries["old"].refused and "arbitrary code" in entries["old"].refused
    assert all(entry.refused is None for name, entry in entries.items() if name != "old")


@pytest.mark.parametrize("name, expected", [
    ("watercolor", "styles/watercolor"),           # stem
    ("styles/watercolor", "styles/watercolor"),    # relative path
    ("styles\\watercolor", "styles/watercolor"),   # Windows separators
    ("./styles//watercolor", "styles/watercolor"),
    ("styles/watercolor.safetensors", "styles/watercolor"),
    ("Soft Water", "styles/watercolor"),           # modelspec.title alias
    ("alice_v2", "chars/Alice"),                   # ss_output_name alias
    ("WATERCOLOR", "styles/watercolor"),           # case-insensitive fallbacks
    ("Styles/WaterColor", "styles/watercolor"),
    ("ALICE_V2", "chars/Alice"),
    ("alice", "chars/Alice"),
    ("ink", "ink"),                                # the relative path beats another file's stem
    ("styles/ink", "styles/ink"),
])
def test_resolve(library: LoraLibrary, name: str, expected: str) -> None:
    assert library.resolve(name).name == expected


def test_every_entry_name_resolves_back_to_its_file(library: LoraLibrary) -> None:
    for entry in library.entries():
        if entry.refused is None:
            assert library.resolve(entry.name) == entry


def test_exact_case_beats_case_insensitive(tmp_path: Path) -> None:
    write(tmp_path, "Ink")
    write(tmp_path, "sub/ink")
    library = LoraLibrary([tmp_path])
    assert library.resolve("Ink").name == "Ink"
    assert library.resolve("ink").name == "sub/ink"   # exact stem before case-folded path
    assert library.resolve("INK").name == "Ink"       # case-folded path before case-folded stem


def test_ambiguous_name_lists_candidates(library: LoraLibrary) -> None:
    with pytest.raises(LoraNameError) as caught:
        library.resolve("sketch")
    assert caught.value.candidates == ("chars/sketch", "styles/sketch")
    assert "ambiguous" in str(caught.value) and "'chars/sketch'" in str(caught.value)
    assert "'styles/sketch'" in str(caught.value)


def test_unknown_name_suggests_close_names(library: LoraLibrary, folder: Path) -> None:
    with pytest.raises(LoraNameError) as caught:
        library.resolve("watercolour")
    assert caught.value.candidates[0] == "styles/watercolor"
    assert "'watercolour'" in str(caught.value) and str(folder) in str(caught.value)
    with pytest.raises(LoraNameError, match="7 LoRA files are there"):
        library.resolve("qqqqqqqqqqqq")


@pytest.mark.parametrize("name", ["../x", "..\\x", "styles/../../x", "/etc/passwd", "\\\\server\\share\\x",
                                  "C:\\loras\\x", "c:x", "", "  ", "a\x00b"])
def test_names_that_leave_the_folders_are_refused(library: LoraLibrary, name: str) -> None:
    with pytest.raises(LoraNameError) as caught:
        library.resolve(name)
    assert "outside the LoRA folders" in str(caught.value) or "empty or invalid" in str(caught.value)


def test_inner_dotdot_is_refused_even_when_it_stays_inside(library: LoraLibrary) -> None:
    with pytest.raises(LoraNameError, match="outside"):
        check_name("styles/../ink")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinks_out_of_the_folders_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "loras", tmp_path / "outside"
    write(root, "inside")
    secret = write(outside, "secret")
    write(outside, "deep/hidden")
    (root / "evil.safetensors").symlink_to(secret)
    (root / "linked_dir").symlink_to(outside / "deep", target_is_directory=True)
    (root / "alias.safetensors").symlink_to(root / "inside.safetensors")  # stays inside: fine
    library = LoraLibrary([root])
    names = {entry.name: entry for entry in library.entries()}
    assert "linked_dir/hidden" not in names                      # symlinked folders are not followed
    assert names["evil"].refused and "outside the LoRA folders" in names["evil"].refused
    with pytest.raises(LoraFileError, match="outside the LoRA folders"):
        library.resolve("evil")
    with pytest.raises(LoraFileError, match="outside"):
        library.load("evil", tree=object())
    assert library.resolve("alias").path == root / "alias.safetensors"


def test_pickles_are_listed_but_refused(library: LoraLibrary, folder: Path) -> None:
    with pytest.raises(LoraFileError) as caught:
        library.resolve("old")
    assert "arbitrary code" in str(caught.value) and caught.value.path == folder / "old.pt"
    torch.save({}, folder / "ink.pt")
    assert library.resolve("ink").path.suffix == ".safetensors"  # a converted file wins over its pickle


def test_new_files_are_found_without_a_manual_refresh(library: LoraLibrary, folder: Path) -> None:
    library.entries()
    write(folder, "fresh/new")
    assert library.resolve("new").name == "fresh/new"


def test_earlier_folder_wins_for_the_same_relative_path(tmp_path: Path) -> None:
    first, second = write(tmp_path / "a", "ink"), write(tmp_path / "b", "ink")
    write(tmp_path / "b", "only_b")
    library = LoraLibrary([tmp_path / "a", tmp_path / "b", tmp_path / "missing"])
    assert library.resolve("ink").path == first and library.resolve("only_b").folder == tmp_path / "b"
    assert [entry.path for entry in library.entries()].count(second) == 1


def test_corrupt_files_are_listed_and_fail_only_when_used(tmp_path: Path) -> None:
    write(tmp_path, "good")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    library = LoraLibrary([tmp_path])
    assert library.resolve("bad").aliases == ()
    with pytest.raises(LoraFileError, match="bad.safetensors"):
        library.info("bad")


def test_info_is_lazy_and_follows_sidecar_edits(library: LoraLibrary, folder: Path) -> None:
    entry = library.resolve("watercolor")
    assert "info" not in vars(entry)
    assert entry.info.trigger_words == () and entry.info is entry.info
    (folder / "styles" / "watercolor.json").write_text('{"activation text": "wet paper"}')
    assert library.info(entry).trigger_words == ("wet paper",)
    (folder / "styles" / "watercolor.json").write_text('{"activation text": "dry paper"}')  # same size
    os.utime(folder / "styles" / "watercolor.json", ns=(1, 1))  # and a distinct mtime even on coarse clocks
    assert library.info("watercolor").trigger_words == ("dry paper",)


def test_info_of_a_file_deleted_after_the_scan_names_it(library: LoraLibrary, folder: Path) -> None:
    entry = library.resolve("watercolor")
    (folder / "styles" / "watercolor.safetensors").unlink()
    with pytest.raises(LoraFileError, match=r"watercolor\.safetensors.*moved or deleted"):
        library.info(entry)


def test_unknown_name_in_a_missing_folder_says_the_folder_is_missing(tmp_path: Path) -> None:
    library = LoraLibrary([tmp_path / "no such folder"])
    with pytest.raises(LoraNameError, match=r"Not a folder \(missing\?\): '.*no such folder'"):
        library.resolve("ink")


def test_resolve_without_rescan_uses_the_last_scan_only(tmp_path) -> None:
    from lora_syntax.errors import LoraNameError
    from lora_syntax.library import LoraLibrary
    from safetensors.torch import save_file
    import torch

    library = LoraLibrary([tmp_path])
    assert library.entries() == []
    save_file({"a": torch.ones(1)}, str(tmp_path / "late.safetensors"))
    with pytest.raises(LoraNameError):
        library.resolve("late", rescan=False)       # the plan view's lookup: no folder scan per keystroke
    assert library.resolve("late").name == "late"   # Generate's lookup rescans once


def test_touched_components_come_from_the_header_once_per_file(monkeypatch) -> None:
    from lora_syntax import library as library_module
    from lora_syntax.demo import LORA_DIR
    from lora_syntax.plan import COMPONENTS, DENOISERS, build_plan

    reads = []
    real = library_module.read_info
    monkeypatch.setattr(library_module, "read_info", lambda path, **kw: reads.append(path) or real(path, **kw))
    library = LoraLibrary([LORA_DIR])
    assert library.touched_components("sepia") == DENOISERS
    assert library.touched_components("zorbstar") == COMPONENTS
    assert library.touched_components("no such lora") == COMPONENTS        # unknown: counts everywhere
    plan = build_plan("a <lora:sepia:1> <lora:night:1>", 8)
    for _ in range(3):                                                    # as the Plan view, per keystroke
        assert "text encoders" not in library.touching(plan, rescan=False).warnings[0]
    assert sorted(p.name for p in reads) == ["night.safetensors", "sepia.safetensors", "zorbstar.safetensors"]
    quiet = build_plan("a <lora:sepia:0.5>", 8)
    assert library.touching(quiet) is quiet                               # no strength warning: nothing to read
