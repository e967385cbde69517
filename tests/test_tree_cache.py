"""Module trees cached on disk: the cached tree is the built one, rebuilt when what it depends on changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_syntax.keymaps import tree_cache
from lora_syntax.keymaps.tree import ModelTree, ModuleInfo

TREE = ModelTree("sd15", {"unet": {"a.to_q": ModuleInfo((320, 320), False, "linear"),
                                   "conv": ModuleInfo((4, 320, 3, 3), True, "conv")},
                          "text_encoder": {"emb": ModuleInfo((49408, 768), False, "embedding")}},
                 {"unet": {"layers_per_block": 2, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LORA_SYNTAX_CACHE", str(tmp_path))
    return tmp_path / "trees"


def test_second_call_reads_the_file_and_gives_the_same_tree(cache) -> None:
    builds = []
    first = tree_cache.cached_tree("x", "config A", lambda: builds.append(1) or TREE)
    second = tree_cache.cached_tree("x", "config A", lambda: pytest.fail("built again"))
    assert first == second == TREE and builds == [1]
    assert [p.name for p in cache.iterdir()] == [f"x-{tree_cache.cache_key('config A')}.json"]


def test_another_config_or_a_broken_file_builds_again(cache) -> None:
    tree_cache.cached_tree("x", "config A", lambda: TREE)
    other = ModelTree("sd15", {"unet": {}}, {})
    assert tree_cache.cached_tree("x", "config B", lambda: other) == other
    (cache / f"x-{tree_cache.cache_key('config A')}.json").write_text("{not json")
    assert tree_cache.cached_tree("x", "config A", lambda: TREE) == TREE
    assert tree_cache.cached_tree("x", "config A", lambda: pytest.fail("built again")) == TREE


def test_an_unwritable_cache_still_gives_the_tree(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LORA_SYNTAX_CACHE", str(blocker))   # a file where a folder should be
    assert tree_cache.cached_tree("x", "c", lambda: TREE) == TREE


def test_key_depends_on_the_library_versions(monkeypatch) -> None:
    before = tree_cache.cache_key("c")
    monkeypatch.setattr(tree_cache, "_versions", lambda: "diffusers=99")
    assert tree_cache.cache_key("c") != before


def test_model_folder_tree_is_the_live_pipeline_tree(cache) -> None:
    from lora_syntax import demo
    from lora_syntax.demo.model import load_pipeline
    from lora_syntax.keymaps.build import tree_from_model_dir, tree_from_pipeline

    live = tree_from_pipeline(load_pipeline(demo.MODEL_DIR), "sd15")
    built = tree_from_model_dir(demo.MODEL_DIR)
    cached = tree_from_model_dir(demo.MODEL_DIR)  # from the file written by the first call
    assert len(list(cache.iterdir())) == 1
    for tree in (built, cached):
        assert tree.architecture == "sd15" and tree.modules == live.modules
        live_config = {k: v for k, v in live.config["unet"].items() if k != "_name_or_path"}  # where it was read
        assert json.loads(json.dumps(tree.config["unet"], default=list)) == json.loads(
            json.dumps(live_config, default=list))


@pytest.mark.slow
def test_cached_reference_tree_equals_a_fresh_build(cache) -> None:
    from lora_syntax.keymaps import reference

    reference.reference_tree.cache_clear()
    try:
        from_file = (reference.reference_tree("sd15"), reference.reference_tree.cache_clear(),
                     reference.reference_tree("sd15"))[2]
    finally:
        reference.reference_tree.cache_clear()
    fresh = reference.build_reference_tree("sd15")
    assert from_file.modules == fresh.modules
    assert from_file.config["unet"]["layers_per_block"] == fresh.config["unet"]["layers_per_block"] == 2
