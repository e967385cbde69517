"""Factors read from one file cross to a device as a few spans of the file's bytes (``transfer.copy_into``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_syntax import transfer
from lora_syntax.io import read_lora

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device"))]


def file_tensors(tmp_path) -> dict[str, torch.Tensor]:
    """A file whose tensors are views of one map: runs of fp16, bf16 and fp32, odd element counts."""
    g = torch.Generator().manual_seed(5)
    state = {}
    for i in range(24):
        dtype = (torch.float16, torch.bfloat16, torch.float32)[i // 8]
        state[f"t{i:02}"] = torch.randn(3 + i, 5 + i % 3, generator=g).to(dtype)
    save_file(state, str(tmp_path / "f.safetensors"))
    read = read_lora(tmp_path / "f.safetensors").tensors
    assert len({t.untyped_storage().data_ptr() for t in read.values()}) <= 3   # views, not copies
    return read


def pairs_into(tensors: dict[str, torch.Tensor], device: str) -> tuple[list, torch.Tensor]:
    """fp32 destinations as the engine lays factors out: every other one a column block of a wider tensor."""
    pairs, wide = [], []
    for i, tensor in enumerate(tensors.values()):
        if i % 2:
            holder = torch.zeros(tensor.shape[0], tensor.shape[1] + 4, device=device)
            wide.append(holder)
            pairs.append((holder[:, 2:2 + tensor.shape[1]], tensor))
        else:
            pairs.append((torch.zeros(tensor.shape, device=device), tensor))
    return pairs, wide


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("span_bytes", [64, 1 << 28])
def test_a_files_tensors_land_converted_and_exact_in_few_transfers(tmp_path, monkeypatch, device, span_bytes):
    monkeypatch.setattr(transfer, "SPAN_BYTES", span_bytes)
    tensors = file_tensors(tmp_path)
    pairs, wide = pairs_into(tensors, device)
    transfers = transfer.copy_into(pairs, torch.device(device))
    for destination, source in pairs:
        assert torch.equal(destination.cpu(), source.float())
    for holder in wide:                                      # nothing written beside the column blocks
        assert not holder[:, :2].any() and not holder[:, -2:].any()
    if device == "cuda":
        assert transfers == 3 if span_bytes > 1 << 20 else transfers > 3   # one span per dtype run, or bounded


def test_spans_skip_large_gaps_start_aligned_and_stay_bounded(monkeypatch):
    monkeypatch.setattr(transfer, "SPAN_GAP", 100)
    monkeypatch.setattr(transfer, "SPAN_BYTES", 1000)
    storage = torch.zeros(4000, dtype=torch.float16)
    parts = [storage[5:55], storage[60:160], storage[1000:1100], storage[1100:1500], storage[1500:1550]]
    spans = transfer._spans([transfer._byte_range(part) for part in parts])
    assert [members for _, _, members in spans] == [[0, 1], [2, 3], [4]]
    assert [(start % transfer.SPAN_ALIGNMENT, end) for start, end, _ in spans] == [(0, 320), (0, 3000), (0, 3100)]
    assert all(end - start <= 1000 + transfer.SPAN_ALIGNMENT for start, end, _ in spans)


def test_sources_of_other_kinds_are_copied_as_they_are():
    base = torch.arange(12.0).view(3, 4)
    pairs = [(torch.zeros(4, 3), base.t()), (torch.zeros(0), torch.zeros(0))]      # not contiguous; empty
    transfer.copy_into(pairs, torch.device("cpu"))
    assert torch.equal(pairs[0][0], base.t())


@pytest.mark.parametrize("device", DEVICES)
def test_the_engine_fuses_factors_moved_from_a_file_like_those_prepared_in_place(tmp_path, monkeypatch, device):
    """The accelerator layout (factors moved from the file's map in spans) against the CPU's: same weights."""
    from lora_syntax import factors
    from lora_syntax.adapters.lora import LoraAdapter
    from lora_syntax.patcher import ModuleStack, Patcher, Term
    from lora_syntax.targets import ModuleTarget

    torch.manual_seed(0)
    net = torch.nn.ModuleList(torch.nn.Linear(24, 16, bias=False) for _ in range(5)).to(device, torch.float16)
    g = torch.Generator().manual_seed(2)
    state = {f"{i}.{j}.{part}": torch.randn(*shape, generator=g).half() * 0.1
             for i in range(5) for j in range(2) for part, shape in (("up", (16, 4)), ("down", (4, 24)))}
    save_file(state, str(tmp_path / "l.safetensors"))
    read = read_lora(tmp_path / "l.safetensors").tensors
    stacks = [ModuleStack(ModuleTarget("net", str(i)), tuple(
        Term(f"l{j}", LoraAdapter(up=read[f"{i}.{j}.up"], down=read[f"{i}.{j}.down"], alpha=2.0), (0.7, -0.3 * j))
        for j in range(2))) for i in range(5)]
    fused = {}
    for layout in ("in place", "moved"):
        if layout == "moved":
            monkeypatch.setattr(factors, "HOST_DEVICES", ("meta",))
        patcher = Patcher({"net": net}, grouped=False)
        patcher.load(stacks)
        for step in (1, 2):
            patcher.apply(step)
            fused[layout, step] = [layer.weight.detach().clone() for layer in net]
        patcher.restore(keep_factors=False)
    for step in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(fused["in place", step], fused["moved", step]))
