"""lora_syntax.io: only safetensors is read; every bad file is a LoraFileError naming it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lora_syntax.errors import LoraFileError
from lora_syntax.io import load_state_dict, read_header, read_tensors

TENSORS = {
    "lora_unet_a.lora_down.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "lora_unet_a.lora_up.weight": torch.ones(4, 3, dtype=torch.float16),
    "lora_unet_a.alpha": torch.tensor(3.0),
}


def write(path: Path, tensors: dict | None = None, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(TENSORS if tensors is None else tensors, str(path), metadata=metadata)
    return path


def refused(path: Path, *words: str) -> LoraFileError:
    """Both readers refuse ``path`` with a LoraFileError naming it and containing ``words``."""
    for reader in (read_header, load_state_dict):
        with pytest.raises(LoraFileError) as caught:
            reader(path)
        message = str(caught.value)
        assert str(path) in message and caught.value.path == path
        for word in words:
            assert word in message, message
    return caught.value


def test_header_is_read_without_tensors(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.safetensors", metadata={"ss_output_name": "ink"})
    header = read_header(path)
    assert header.metadata == {"ss_output_name": "ink"}
    assert header.shapes == {"lora_unet_a.lora_down.weight": (3, 4), "lora_unet_a.lora_up.weight": (4, 3),
                             "lora_unet_a.alpha": ()}
    assert header.dtypes["lora_unet_a.lora_up.weight"] == "F16"


def test_state_dict_round_trips(tmp_path: Path) -> None:
    loaded = load_state_dict(write(tmp_path / "ok.safetensors"))
    assert loaded.keys() == TENSORS.keys()
    for key, tensor in TENSORS.items():
        assert torch.equal(loaded[key], tensor) and loaded[key].dtype == tensor.dtype
    assert read_tensors(tmp_path / "ok.safetensors", ["lora_unet_a.alpha"])["lora_unet_a.alpha"].item() == 3.0


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 40, "header-1", "half-data", "last-byte"])
def test_truncated_files_are_refused(tmp_path: Path, cut: int | str) -> None:
    data = write(tmp_path / "full.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    at = {"header-1": header_end - 1, "half-data": (header_end + len(data)) // 2, "last-byte": len(data) - 1}
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: at.get(cut, cut)])
    refused(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    refused(path, "empty", "0 bytes")


def test_file_without_tensors(tmp_path: Path) -> None:
    path = write(tmp_path / "none.safetensors", {})
    assert read_header(path).shapes == {}
    with pytest.raises(LoraFileError, match="holds no tensors") as caught:
        load_state_dict(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth", ".PT"])
def test_pickle_by_extension(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"old{suffix}"
    torch.save({"w": torch.ones(2)}, path)
    error = refused(path, "arbitrary code", "safetensors", "save_file")
    assert "old.safetensors" in str(error)  # the conversion hint names the output file


class _Exploit:
    """Unpickling this would create a marker file: proof that the file was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_renamed_to_safetensors_is_detected_by_content(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "renamed.safetensors"
    path.write_bytes(pickle.dumps({"w": _Exploit(marker)}, protocol=protocol))
    refused(path, "pickle", "arbitrary code")
    assert not marker.exists()


def test_torch_zip_checkpoint_renamed(tmp_path: Path) -> None:
    path = tmp_path / "zip.safetensors"
    torch.save({"w": torch.ones(2)}, path)
    error = refused(path, "PyTorch zip checkpoint", "arbitrary code")
    assert "zip.converted.safetensors" in str(error)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_tensors_name_the_tensor(tmp_path: Path, bad: float, dtype: torch.dtype) -> None:
    tensors = dict(TENSORS)
    tensors["lora_unet_b.lora_up.weight"] = torch.tensor([[0.5, bad]], dtype=dtype)
    path = write(tmp_path / "broken.safetensors", tensors)
    read_header(path)  # the header alone is fine
    with pytest.raises(LoraFileError) as caught:
        load_state_dict(path)
    message = str(caught.value)
    assert "lora_unet_b.lora_up.weight" in message and str(path) in message
    assert ("NaN" if bad != bad else "infinite") in message


def test_huge_but_finite_values_are_accepted(tmp_path: Path) -> None:
    # the whole-file norm overflows to inf here; the per-tensor check must still accept the file
    tensors = {**TENSORS, "lora_unet_b.lora_up.weight": torch.full((4, 4), 3e38)}
    path = write(tmp_path / "huge.safetensors", tensors)
    assert torch.equal(load_state_dict(path)["lora_unet_b.lora_up.weight"], tensors["lora_unet_b.lora_up.weight"])


def test_nan_in_one_dtype_of_a_mixed_file_is_found(tmp_path: Path) -> None:
    tensors = {**TENSORS, "x.alpha": torch.tensor(4.0, dtype=torch.float64),
               "lora_unet_b.lora_down.weight": torch.tensor([[1.0, float("nan")]], dtype=torch.bfloat16)}
    path = write(tmp_path / "mixed.safetensors", tensors)
    with pytest.raises(LoraFileError, match=r"NaN values in tensor 'lora_unet_b\.lora_down\.weight'"):
        load_state_dict(path)


def test_integer_tensors_are_not_checked_for_nan(tmp_path: Path) -> None:
    path = write(tmp_path / "ints.safetensors", {"steps": torch.tensor([1, 2], dtype=torch.int64)})
    assert load_state_dict(path)["steps"].tolist() == [1, 2]


def test_text_file_renamed(tmp_path: Path) -> None:
    path = tmp_path / "readme.safetensors"
    path.write_text("This is not a LoRA, just some text.\n")
    refused(path, "not a safetensors file")


def test_html_error_page_saved_as_lora(tmp_path: Path) -> None:
    path = tmp_path / "download.safetensors"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    refused(path, "not a safetensors file")


def test_corrupt_header_json(tmp_path: Path) -> None:
    body = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # unterminated JSON
    path = tmp_path / "json.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + bytes(8))
    refused(path, "corrupt")


def test_header_claims_more_data_than_the_file_has(tmp_path: Path) -> None:
    body = b'{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
    path = tmp_path / "short.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + bytes(16))
    refused(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    refused(tmp_path / "missing.safetensors", "does not exist")
    (tmp_path / "dir.safetensors").mkdir()
    refused(tmp_path / "dir.safetensors", "is a folder; give the path of one .safetensors file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.safetensors")
    path.chmod(0)
    refused(path, "cannot be read")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_exception(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    for reader in (read_header, load_state_dict):
        try:
            reader(path)
        except LoraFileError as error:
            assert str(path) in str(error)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0, max_value=10_000), value=st.integers(min_value=0, max_value=255))
def test_flipped_bytes_never_escape_as_another_exception(tmp_path: Path, position: int, value: int) -> None:
    data = bytearray(write(tmp_path / "src.safetensors").read_bytes())
    data[position % len(data)] = value
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(data))
    for reader in (read_header, load_state_dict):
        try:
            reader(path)
        except LoraFileError as error:
            assert str(path) in str(error)



@pytest.mark.parametrize("header_length", [0x9428, 0x0580])
def test_safetensors_whose_header_length_looks_like_a_pickle_opcode(tmp_path: Path, header_length: int) -> None:
    """Header length 0x9428 starts the file with b"(\\x94", 0x0580 with b"\\x80\\x05": still safetensors."""
    path = tmp_path / "lookalike.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": ""})
    base = int.from_bytes(path.read_bytes()[:8], "little")
    for pad in range(header_length - base - 8, header_length - base + 8):  # the header is 8-byte aligned
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        if int.from_bytes(path.read_bytes()[:8], "little") == header_length:
            break
    assert int.from_bytes(path.read_bytes()[:8], "little") == header_length
    assert torch.equal(load_state_dict(path)["w"], torch.zeros(2))


# -- one read, one fused check (issue 12, loading) ------------------------------------------------------------------
def test_read_lora_gives_metadata_and_the_exact_peak_in_one_read(tmp_path: Path) -> None:
    from lora_syntax.io import read_lora

    tensors = {**TENSORS, "lora_unet_b.lora_up.weight": torch.tensor([[0.5, -12.5]], dtype=torch.bfloat16),
               "steps": torch.tensor([1000], dtype=torch.int64)}   # integers are not part of the peak
    read = read_lora(write(tmp_path / "ok.safetensors", tensors, metadata={"ss_output_name": "ink"}))
    assert read.metadata == {"ss_output_name": "ink"}
    assert read.peak == 12.5   # max |value| over float32 (arange 0..11), float16 (1) and bfloat16 (-12.5) runs
    for key, tensor in tensors.items():
        assert torch.equal(read.tensors[key], tensor) and read.tensors[key].dtype == tensor.dtype


def test_mapped_tensors_are_private_copies_on_write(tmp_path: Path) -> None:
    from lora_syntax.io import read_lora

    path = write(tmp_path / "ok.safetensors")
    before = path.read_bytes()
    read_lora(path).tensors["lora_unet_a.lora_down.weight"].add_(1)   # a caller scaling a factor in place
    assert path.read_bytes() == before and torch.equal(load_state_dict(path)["lora_unet_a.lora_down.weight"],
                                                       TENSORS["lora_unet_a.lora_down.weight"])


def test_unmapped_dtypes_take_the_per_tensor_path_and_are_still_checked(tmp_path: Path) -> None:
    from lora_syntax.io import read_lora

    fp8 = getattr(torch, "float8_e4m3fn", None)
    if fp8 is None:
        pytest.skip("no float8 in this torch")
    tensors = {**TENSORS, "lora_unet_b.lora_up.weight": torch.tensor([[0.5, 2.0]]).to(fp8)}
    read = read_lora(write(tmp_path / "fp8.safetensors", tensors))
    assert read.peak == float("inf") and read.tensors["lora_unet_b.lora_up.weight"].float().tolist() == [[0.5, 2.0]]
    tensors["lora_unet_a.lora_down.weight"] = torch.tensor([[float("nan")]])
    with pytest.raises(LoraFileError, match=r"NaN values in tensor 'lora_unet_a\.lora_down\.weight'"):
        read_lora(write(tmp_path / "fp8nan.safetensors", tensors))


@pytest.mark.parametrize("body", [
    b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
    b'{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}',
    b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}',
    b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":1}}',
    b'{"a": 5}',
])
def test_inconsistent_headers_are_corrupt_files(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + bytes(8))
    refused(path, "truncated or corrupt")


def test_the_loader_reuses_the_readers_bound_instead_of_a_second_pass(tmp_path: Path, monkeypatch) -> None:
    """A usual file is read, checked and measured by one pass: no norm over its factors afterwards."""
    from lora_syntax import loader

    def no_second_pass(*args, **kwargs):
        raise AssertionError("a second pass over the factors")

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", no_second_pass)
    state = {"lora_unet_a.lora_down.weight": torch.full((2, 4), 0.5), "lora_unet_a.lora_up.weight": torch.ones(4, 2)}
    path = write(tmp_path / "small.safetensors", state)
    read = loader._read(path, None)[1].result()
    assert read.peak == 1.0 and loader.large_values(read.tensors, "small", read.peak) == ()
    big = {**state, "lora_unet_a.lora_up.weight": torch.full((4, 2), 2e4)}
    monkeypatch.undo()
    read = loader._read(write(tmp_path / "big.safetensors", big), None)[1].result()
    assert read.peak == 2e4 and "holds values up to 2e+04" in loader.large_values(read.tensors, "big", read.peak)[0]


def test_the_values_are_checked_on_another_thread_while_the_caller_goes_on(tmp_path: Path, monkeypatch) -> None:
    """``start_read`` returns the tensors before their check ends (the loader maps keys meanwhile)."""
    import threading

    from lora_syntax import io

    returned, seen = threading.Event(), []
    real_peak = io._peak

    def slow_peak(run):
        seen.append(returned.wait(timeout=10))   # True only if the caller got the read back first
        return real_peak(run)

    monkeypatch.setattr(io, "_peak", slow_peak)
    pending = io.start_read(write(tmp_path / "ok.safetensors"))
    returned.set()
    assert pending.result().peak == 11.0 and seen and all(seen)


def test_a_file_with_nan_values_is_refused_for_them_even_when_its_keys_do_not_map(tmp_path: Path) -> None:
    """Mapping errors give way to broken values, as when every value was checked before mapping."""
    from lora_syntax.keymaps.reference import reference_tree
    from lora_syntax.loader import load_lora

    tensors = {"lora_unet_nowhere.lora_down.weight": torch.tensor([[1.0, float("nan")]]),
               "lora_unet_nowhere.lora_up.weight": torch.ones(3, 1)}
    with pytest.raises(LoraFileError, match=r"NaN values in tensor 'lora_unet_nowhere\.lora_down\.weight'"):
        load_lora(write(tmp_path / "broken.safetensors", tensors), reference_tree("sd15"))


@pytest.mark.parametrize("piece_bytes", [4, 12, 20, 64, 1 << 20])
@pytest.mark.parametrize("broken", [None, 0, 2, 4])
def test_pieces_of_the_value_check_name_the_broken_tensor_and_keep_the_peak(tmp_path: Path, monkeypatch,
                                                                           piece_bytes: int, broken) -> None:
    """However a run is cut into pieces (across, inside or between tensors), the check names the tensor
    that holds a NaN, and a finite file's peak is the largest |value| of all."""
    from lora_syntax import io

    monkeypatch.setattr(io, "CHECK_PIECE_BYTES", piece_bytes)
    tensors = {f"lora_unet_m{i}.weight": torch.linspace(-i, i / 2, 3 + i) for i in range(5)}
    tensors["lora_unet_m1.empty"] = torch.zeros(0)
    if broken is not None:
        tensors[f"lora_unet_m{broken}.weight"][-1] = float("nan")
    path = write(tmp_path / "pieces.safetensors", tensors)
    if broken is None:
        assert io.read_lora(path).peak == 4.0
    else:
        with pytest.raises(LoraFileError, match=rf"NaN values in tensor 'lora_unet_m{broken}\.weight'"):
            io.read_lora(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_checks_values_with_threads_of_its_own(tmp_path: Path) -> None:
    """The value-check threads do not survive a fork (a host's worker processes): the child makes its own
    instead of queueing work for threads it does not have, which would wait forever."""
    from lora_syntax import io

    path = write(tmp_path / "ok.safetensors")
    assert io.read_lora(path).peak == 11.0          # the parent's threads exist now
    child = os.fork()
    if child == 0:                                  # pragma: no cover - runs in the child
        try:
            os._exit(0 if io.read_lora(path).peak == 11.0 else 1)
        finally:
            os._exit(2)
    import time

    deadline = time.monotonic() + 60
    while (done := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(child, 9)
        os.waitpid(child, 0)
        pytest.fail("the forked child's read never finished: it waited for the parent's check threads")
    assert os.waitstatus_to_exitcode(done[1]) == 0


@pytest.mark.parametrize(("cores", "torch_threads", "expected"), [(16, 16, 1), (16, 1, 4), (2, 1, 2), (16, 4, 4),
                                                                   (16, 8, 2), (1, 1, 1), (None, 4, 1)])
def test_value_check_threads_use_the_cores_torch_leaves_over(monkeypatch, cores, torch_threads, expected) -> None:
    from lora_syntax import io

    monkeypatch.setattr(io.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(io.torch, "get_num_threads", lambda: torch_threads)
    assert io.check_threads() == expected
