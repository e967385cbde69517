"""LoraLibrary.load: a cache of loaded LoRAs bounded by count and bytes, invalidated by file changes."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_syntax.errors import LoraFileError
from lora_syntax.library import LoraLibrary, tensor_bytes

KB = 1024


class FakeLoader:
    """Stands in for lora_syntax.loader: counts file reads, returns patches holding ``nbytes`` of tensors."""

    def __init__(self, nbytes: int = KB) -> None:
        self.calls: list[tuple[Path, object]] = []
        self.started: list[object] = []
        self.nbytes = nbytes

    def load_lora(self, source, tree, *, metadata=None, name=None, roots=None, started=None):
        self.calls.append((Path(source), tree))
        self.started.append(started)
        adapter = types.SimpleNamespace(up=torch.zeros(self.nbytes // 8), down=torch.zeros(self.nbytes // 8))
        patch = types.SimpleNamespace(adapter=adapter, source_keys=("k",))
        return types.SimpleNamespace(path=Path(source), name=name, patches=(patch,), unmatched=())


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLoader:
    loader = FakeLoader()
    module = types.ModuleType("lora_syntax.loader")
    module.load_lora = loader.load_lora
    monkeypatch.setitem(sys.modules, "lora_syntax.loader", module)
    return loader


def tree(architecture: str = "sd15") -> types.SimpleNamespace:
    return types.SimpleNamespace(architecture=architecture)


def write(folder: Path, name: str, size: int = 4) -> Path:
    path = folder / f"{name}.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(size, 4)}, str(path))
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "d"):
        write(tmp_path, name)
    return tmp_path


def test_second_load_is_a_cache_hit(folder: Path, fake: FakeLoader) -> None:
    library, model = LoraLibrary([folder]), tree()
    first = library.load("a", model)
    assert library.load("a", model) is first and library.load(library.resolve("a"), model) is first
    assert len(fake.calls) == 1 and fake.calls[0] == (folder / "a.safetensors", model)
    assert (library.cache.hits, library.cache.misses) == (2, 1)


def test_each_model_tree_gets_its_own_entry(folder: Path, fake: FakeLoader) -> None:
    library, sd15, sdxl, other_sd15 = LoraLibrary([folder]), tree("sd15"), tree("sdxl"), tree("sd15")
    for model in (sd15, sdxl, other_sd15, sd15, sdxl):
        library.load("a", model)
    assert [call[1] for call in fake.calls] == [sd15, sdxl, other_sd15]


def test_rewritten_file_is_loaded_again(folder: Path, fake: FakeLoader) -> None:
    library, model = LoraLibrary([folder]), tree()
    library.load("a", model)
    write(folder, "a", size=8)                       # new size
    library.load("a", model)
    stat = (folder / "a.safetensors").stat()
    os.utime(folder / "a.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000))  # same size, new mtime
    library.load("a", model)
    library.load("a", model)
    assert len(fake.calls) == 3 and len(library.cache) == 1  # stale versions are dropped, not kept


def test_eviction_by_count_is_least_recently_used(folder: Path, fake: FakeLoader) -> None:
    library, model = LoraLibrary([folder], cache_items=2), tree()
    for name in ("a", "b", "a", "c"):                # "b" is the least recently used when "c" arrives
        library.load(name, model)
    assert len(fake.calls) == 3 and len(library.cache) == 2
    library.load("a", model)
    library.load("c", model)
    assert len(fake.calls) == 3
    library.load("b", model)
    assert len(fake.calls) == 4


def test_eviction_by_bytes(folder: Path, fake: FakeLoader) -> None:
    library, model = LoraLibrary([folder], cache_bytes=3 * KB), tree()   # each load holds 1 KiB of tensors
    for name in ("a", "b", "c"):
        library.load(name, model)
    assert library.cache.nbytes == 3 * KB and len(library.cache) == 3
    library.load("d", model)
    assert library.cache.nbytes == 3 * KB and len(library.cache) == 3
    library.load("a", model)                         # "a" was evicted first
    assert len(fake.calls) == 5


def test_a_lora_larger_than_the_byte_limit_is_not_cached(folder: Path, fake: FakeLoader) -> None:
    library, model = LoraLibrary([folder], cache_bytes=KB // 2), tree()
    library.load("a", model)
    library.load("a", model)
    assert len(fake.calls) == 2 and len(library.cache) == 0


def test_zero_items_disables_the_cache(folder: Path, fake: FakeLoader) -> None:
    library, model = LoraLibrary([folder], cache_items=0), tree()
    library.load("a", model)
    library.load("a", model)
    assert len(fake.calls) == 2


def test_deleted_file_is_a_clear_error(folder: Path, fake: FakeLoader) -> None:
    library = LoraLibrary([folder])
    entry = library.resolve("a")
    (folder / "a.safetensors").unlink()
    with pytest.raises(LoraFileError, match="a.safetensors"):
        library.load(entry, tree())


def test_load_many_opens_every_file_not_cached_before_mapping_the_first(folder: Path, fake: FakeLoader,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack's files are all opened first, so later files' values are checked while earlier ones map."""
    from lora_syntax import io

    opened: list[str] = []
    library, model = LoraLibrary([folder]), tree()
    first = library.load("a", model)

    def start_read(path, *, roots=None):
        opened.append(Path(path).stem)
        assert len(fake.calls) == 1, "a file was opened after mapping began"
        return f"read of {Path(path).stem}"

    monkeypatch.setattr(io, "start_read", start_read)
    loaded = library.load_many(["a", "b", "c", "b"], model)
    assert opened == ["b", "c"]                      # "a" is cached; "b" is opened once
    assert loaded[0] is first and loaded[1] is loaded[3] and len(fake.calls) == 3
    assert fake.started == [None, "read of b", "read of c"]


def test_load_many_refuses_a_refused_entry_before_opening_anything(folder: Path, fake: FakeLoader) -> None:
    torch.save({"w": torch.ones(1)}, folder / "old.pt")
    library = LoraLibrary([folder])
    with pytest.raises(LoraFileError, match="old.pt"):
        library.load_many(["a", "old"], tree())
    assert fake.calls == []


def test_tensor_bytes_counts_nested_adapters_once() -> None:
    shared = torch.zeros(10)
    inner = types.SimpleNamespace(w=shared, meta=torch.empty(1000, device="meta"))
    outer = types.SimpleNamespace(base=inner, again=inner, scale=torch.zeros(2, dtype=torch.float16), tag="x")
    assert tensor_bytes((outer, [shared], {"k": shared})) == 10 * 4 + 2 * 2


@pytest.mark.slow
def test_real_loader_through_the_library(shared_fixtures: Path) -> None:
    reference = pytest.importorskip("lora_syntax.keymaps.reference")
    pytest.importorskip("lora_syntax.loader")
    library, model = LoraLibrary([shared_fixtures / "real-loras"]), reference.reference_tree("sd15")
    loaded = library.load("SD15_diffusers_attnproc_rank4", model)
    assert loaded.architecture == "sd15" and len(loaded.patches) == 128 and loaded.unmatched == ()
    assert library.load("sd15_diffusers_attnproc_rank4", model) is loaded
    assert 0.5 * loaded.path.stat().st_size < library.cache.nbytes < 4 * loaded.path.stat().st_size
    with pytest.raises(LoraFileError, match="cloneofsimo"):
        library.load("sd15_cloneofsimo_legacy_rank4", model)


def test_tensor_bytes_sees_slotted_dataclasses() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Slotted:
        up: torch.Tensor
        down: torch.Tensor

    assert tensor_bytes([Slotted(torch.zeros(3), torch.zeros(5, dtype=torch.float64))]) == 3 * 4 + 5 * 8
