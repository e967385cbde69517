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

    # The interpreter keeps bf16 values as their uint16 bits and multiplies those bits in ``tl.dot``;
    # the matrix units multiply the numbers. Widen bf16 operands (exactly) to fp32 first.
    builder = interpreter.InterpreterBuilder
    dot = builder.create_dot

    def widened(handle):
        if handle.dtype.scalar != interpreter.tl.bfloat16:
            return handle
        bits = handle.data.astype(interpreter.np.uint32) << 16
        return interpreter.TensorHandle(bits.view(interpreter.np.float32), interpreter.tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return dot(self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot

    # ... and narrows fp32 to bf16 by dropping the low bits, where the GPU's conversion rounds to nearest
    # even (as torch does). Round the same way (the kernels here hold no NaN).
    np = interpreter.np
    trunc = builder.create_fp_trunc

    def create_fp_trunc(self, src, dst_type):
        if src.dtype.scalar != interpreter.tl.float32 or dst_type.scalar != interpreter.tl.bfloat16:
            return trunc(self, src, dst_type)
        bits = src.data.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return interpreter.TensorHandle(rounded, interpreter.tl.bfloat16)

    builder.create_fp_trunc = create_fp_trunc
