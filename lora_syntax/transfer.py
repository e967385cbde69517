"""Copies from host tensors into device tensors, in few host-to-device transfers.

A LoRA read by :func:`io.read_lora` is one private map of its file: its thousand factors are views of one
storage. Copied one by one to an accelerator, each pays a synchronous pageable transfer (and, when the
dtypes differ, a conversion on the CPU first): about 0.45 s for three SDXL LoRAs on an H200's host. Moved
as spans of that storage's bytes instead, they make a few large transfers, and each factor is then
converted and placed by a copy on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Unused bytes between two factors that a span still carries (a gap is cheaper to move than a new
# transfer is to start), and the most bytes one span holds on the device at a time.
SPAN_GAP = 1 << 20
SPAN_BYTES = 256 << 20
# Span starts are rounded down to this many bytes of their storage, so that every factor's offset in the
# moved span is a multiple of its element size (a view of the bytes as the factor's dtype is then valid).
SPAN_ALIGNMENT = 16


def _byte_range(tensor: torch.Tensor) -> tuple[int, int]:
    start = tensor.storage_offset() * tensor.element_size()
    return start, start + tensor.numel() * tensor.element_size()


def _spans(sources: list[torch.Tensor]) -> list[tuple[int, int, list[int]]]:
    """``(start, end, indices)`` byte spans of one storage covering ``sources`` (in storage order)."""
    order = sorted(range(len(sources)), key=lambda i: _byte_range(sources[i])[0])
    spans: list[tuple[int, int, list[int]]] = []
    for i in order:
        start, end = _byte_range(sources[i])
        if spans and start - spans[-1][1] <= SPAN_GAP and max(end, spans[-1][1]) - spans[-1][0] <= SPAN_BYTES:
            first, last, members = spans[-1]
            spans[-1] = (first, max(last, end), members + [i])
        else:
            spans.append((start - start % SPAN_ALIGNMENT, end, [i]))
    return spans


def copy_into(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> int:
    """``destination.copy_(source)`` for each pair, the destinations on ``device``; returns the number of
    copies that crossed from the host (spans and single sources). Contiguous host sources that share a
    storage travel as spans of its bytes, at most :data:`SPAN_BYTES` on the device at a time (on the CPU a
    span is a view: nothing is copied twice); any other source is copied as it is."""
    by_storage: dict[int, list[int]] = {}
    transfers = 0
    for index, (destination, source) in enumerate(pairs):
        if source.device.type == "cpu" and source.is_contiguous() and source.numel():
            by_storage.setdefault(source.untyped_storage().data_ptr(), []).append(index)
        else:
            destination.copy_(source)
            transfers += source.device.type == "cpu" and device.type != "cpu"
    for indices in by_storage.values():
        sources = [pairs[i][1] for i in indices]
        storage = sources[0].untyped_storage()
        for start, end, members in _spans(sources):
            host = torch.empty(0, dtype=torch.uint8).set_(storage, start, (end - start,), (1,))
            moved = host.to(device)
            transfers += device.type != "cpu"
            for member in members:
                source = sources[member]
                first, last = _byte_range(source)
                view = moved[first - start:last - start].view(source.dtype).view(source.shape)
                pairs[indices[member]][0].copy_(view)
            del moved
    return transfers
