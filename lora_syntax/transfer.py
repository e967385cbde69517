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


def _spans(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """``(start, end, indices)`` byte spans of one storage covering the byte ``ranges`` (in storage order)."""
    spans: list[tuple[int, int, list[int]]] = []
    for i in sorted(range(len(ranges)), key=lambda i: ranges[i][0]):
        start, end = ranges[i]
        if spans and start - spans[-1][1] <= SPAN_GAP and max(end, spans[-1][1]) - spans[-1][0] <= SPAN_BYTES:
            spans[-1][2].append(i)
            spans[-1] = (spans[-1][0], max(spans[-1][1], end), spans[-1][2])
        else:
            spans.append((start - start % SPAN_ALIGNMENT, end, [i]))
    return spans


def _copy_all(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """Every ``destination.copy_(source)`` in one call (the per-tensor loop runs in C++)."""
    if not destinations:
        return
    foreach_copy = getattr(torch, "_foreach_copy_", None)
    if foreach_copy is not None:
        try:
            foreach_copy(destinations, sources)
            return
        except (RuntimeError, TypeError):   # an older torch's restrictions (dtypes, devices): one by one
            pass
    for destination, source in zip(destinations, sources):
        destination.copy_(source)


def copy_into(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> int:
    """``destination.copy_(source)`` for each pair, the destinations on ``device``; returns the number of
    copies that crossed from the host (spans and single sources). Contiguous host sources that share a
    storage travel as spans of its bytes, at most :data:`SPAN_BYTES` on the device at a time (on the CPU a
    span is a view: nothing is copied twice); any other source, or one alone in its span, is copied as it is."""
    by_storage: dict[int, tuple[torch.UntypedStorage, list[int]]] = {}
    alone: list[int] = []
    for index, (_, source) in enumerate(pairs):
        if source.device.type == "cpu" and source.is_contiguous() and source.numel():
            storage = source.untyped_storage()
            by_storage.setdefault(storage.data_ptr(), (storage, []))[1].append(index)
        else:
            alone.append(index)
    transfers = 0
    for storage, indices in by_storage.values():
        if len(indices) == 1:
            alone.append(indices[0])
            continue
        sources = [pairs[i][1] for i in indices]
        ranges = [_byte_range(source) for source in sources]
        for start, end, members in _spans(ranges):
            if len(members) == 1:
                alone.append(indices[members[0]])
                continue
            moved = torch.empty(0, dtype=torch.uint8).set_(storage, start, (end - start,), (1,)).to(device)
            transfers += device.type != "cpu"
            typed: dict[torch.dtype, torch.Tensor] = {}   # the span's bytes read as each dtype, once
            views = []
            for member in members:
                source = sources[member]
                size = source.element_size()
                if source.dtype not in typed:
                    typed[source.dtype] = moved[:(end - start) // size * size].view(source.dtype)
                views.append(typed[source.dtype].as_strided(source.shape, source.stride(),
                                                            (ranges[member][0] - start) // size))
            _copy_all([pairs[indices[member]][0] for member in members], views)
            del moved, typed, views
    if device.type != "cpu":
        transfers += sum(pairs[i][1].device.type == "cpu" for i in alone)
    _copy_all([pairs[i][0] for i in alone], [pairs[i][1] for i in alone])
    return transfers
