"""Running the fused Triton kernel on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``)."""

from __future__ import annotations


def patch_interpreter() -> None:
    """Triton 3.6's interpreter turns a scalar argument into a one-element array and takes ``int()`` of
    it in ``range(0, n, step)``, which numpy >= 2.4 refuses; read the element instead."""
    try:
        import triton.runtime.interpreter as interpreter
    except ImportError:
        return
    patch = interpreter._patch_lang_tensor

    def patched(tensor, scope) -> None:
        patch(tensor, scope)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])

    interpreter._patch_lang_tensor = patched
