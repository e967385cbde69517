"""Owning the originals: each patched parameter's original tensor kept aside, fused values in a buffer.

The patcher never writes into a model's own weight tensors. A touched parameter is switched to an
engine-owned buffer (``param.data = buffer``) that receives every fused weight set; restoring switches the
original back, so it is bit-exact by construction and costs no copy. Where the device lacks room for
buffers, the original is copied to the CPU and fused values are written in place (copy mode).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class OwnedTensor:
    """One parameter (weight or bias) the patcher has taken over: its original tensor and where fused values go.

    Swap mode: ``original`` is the module's own tensor, left untouched; fused values are written into
    ``buffer``, which is installed as the parameter's data. Copy mode (no room for a buffer on the device):
    ``original`` is a CPU copy and fused values are written into the parameter itself.
    """

    __slots__ = ("param", "original", "buffer", "_original_at", "_buffer_at")

    def __init__(self, param: torch.Tensor, room_on_device: bool, buffer: torch.Tensor | None = None) -> None:
        self.param = param
        data = param.detach()
        if room_on_device:
            if buffer is None:
                buffer = torch.empty_like(data, memory_format=torch.contiguous_format)
            self.original, self.buffer = data, buffer
        else:
            self.original, self.buffer = data.to("cpu", copy=True), None
        # where the parameter's data starts when it shows the original or the buffer: both tensors are
        # held here, so no other tensor can start there (a restore of 700 modules compares integers)
        self._original_at = data.data_ptr() if self.buffer is not None else -1
        self._buffer_at = self.buffer.data_ptr() if self.buffer is not None else -1

    @property
    def target(self) -> torch.Tensor:
        """The tensor fused values are written into."""
        if self.buffer is not None and self.param.data_ptr() not in (self._buffer_at, self._original_at):
            self.buffer, self._buffer_at = None, -1   # the host replaced the parameter's data (module.to)
        return self.buffer if self.buffer is not None else self.param.data

    @property
    def extra_bytes(self) -> int:
        held = self.buffer if self.buffer is not None else self.original
        return held.numel() * held.element_size()

    def install(self) -> None:
        """Make the parameter show the fused values (swap mode: point it at the buffer)."""
        if self.buffer is not None and self.param.data_ptr() != self._buffer_at:
            self.param.data = self.buffer

    def restore(self) -> None:
        """Give the parameter its original values back, bit for bit (call under ``torch.no_grad``)."""
        at = self.param.data_ptr()
        if at == self._original_at:
            return
        if at == self._buffer_at:
            self.param.data = self.original   # swap back: no copy, nothing rounded
        else:                                   # copy mode, or the host moved the parameter since
            self.param.data.copy_(self.original)


# Element alignment of the buffers cut from one allocation (128 bytes and more: vector access, the kernel).
BUFFER_ALIGNMENT = 64


def buffers(weights: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """A fused-weight buffer for each weight, in order: on an accelerator, views of one allocation per
    device and dtype (one ``cudaMalloc`` instead of one per module on a first apply); on the CPU, one
    tensor each (glibc returns a freed buffer's pages at once)."""
    cut: dict[int, torch.Tensor] = {}
    by_kind: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, w in enumerate(weights):
        if w.device.type not in ("cpu", "meta"):
            by_kind.setdefault((w.device, w.dtype), []).append(i)
    for (device, dtype), indices in by_kind.items():
        sizes = [-(-weights[i].numel() // BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT for i in indices]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        offset = 0
        for i, size in zip(indices, sizes):
            cut[i] = flat[offset:offset + weights[i].numel()].view(weights[i].shape)
            offset += size
    for i, w in enumerate(weights):
        yield cut[i] if i in cut else torch.empty_like(w, memory_format=torch.contiguous_format)
