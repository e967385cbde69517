"""Diag-OFT and BOFT against LyCORIS' modules, and a second way: orthogonality and explicit matrices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_syntax.adapters import BoftAdapter, OftAdapter, build_adapter, sliced
from lora_syntax.adapters.oft import cayley
from lora_syntax.errors import LoraFileError, LoraShapeError

pytest.importorskip("lycoris")
from lycoris.functional import diag_oft as f_oft  # noqa: E402
from lycoris.modules.boft import ButterflyOFTModule  # noqa: E402
from lycoris.modules.diag_oft import DiagOFTModule  # noqa: E402

IN, K = 6, 3


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def rnd(*shape: int, seed: int = 0, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def layer(out: int, conv: bool) -> torch.nn.Module:
    torch.manual_seed(out + conv)
    return torch.nn.Conv2d(IN, out, K, bias=False) if conv else torch.nn.Linear(IN, out, bias=False)


def params_for(blocks, rescale, alpha) -> dict:
    p = {"oft_blocks": blocks, "alpha": torch.tensor(alpha)}
    return p if rescale is None else p | {"rescale": rescale}


CASES = [  # (module class, out rows, blocks shape)
    (DiagOFTModule, 12, (4, 3, 3)),
    (ButterflyOFTModule, 16, (4, 8, 2, 2)),
    (ButterflyOFTModule, 16, (3, 4, 4, 4)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.01])      # 0.01·out binds the norm constraint for these blocks
@pytest.mark.parametrize("rescaled", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_oft_matches_lycoris_merge_at_any_multiplier(dtype, conv, alpha, rescaled, case):
    module_cls, out, shape = CASES[case]
    org = layer(out, conv)
    blocks = rnd(*shape, seed=case, std=0.3).to(dtype)
    rescale = (rnd(out, *[1] * (org.weight.dim() - 1), seed=9).abs() + 0.5).to(dtype) if rescaled else None
    module = module_cls.make_module_from_state_dict("m", org, blocks.float(),
                                                    None if rescale is None else rescale.float(), torch.tensor(alpha))
    adapter = build_adapter(params_for(blocks, rescale, alpha), where="t")
    assert not adapter.additive and adapter.kind == ("oft" if module_cls is DiagOFTModule else "boft")
    for multiplier in (1.0, 0.5, -0.3):
        ref, _ = module.get_merged_weight(multiplier=multiplier)
        torch.testing.assert_close(adapter.patched(org.weight, multiplier), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter.delta(org.weight), module.get_diff_weight(1.0)[0], rtol=1e-5, atol=1e-5)


def test_diag_oft_matches_lycoris_functional():
    weight, blocks = rnd(12, IN, seed=1), rnd(4, 3, 3, seed=2, std=0.3)
    adapter = build_adapter({"oft_blocks": blocks}, where="t")
    ref = f_oft.diff_weight(weight, blocks, None, constraint=0)
    torch.testing.assert_close(adapter.delta(weight), ref, rtol=1e-5, atol=1e-5)


def test_cayley_rotations_are_orthogonal():
    r = cayley(rnd(4, 3, 3, seed=3), 0.0)
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3).expand(4, 3, 3), rtol=1e-5, atol=1e-5)


def test_diag_oft_rotates_each_block_of_layer_outputs():
    # kohya's OFT forward: y' = y·R per block of b outputs, i.e. W' = blockdiag(R)ᵀ W
    weight, x, blocks = rnd(12, IN, seed=4), rnd(5, IN, seed=5), rnd(4, 3, 3, seed=6, std=0.3)
    adapter = build_adapter({"oft_blocks": blocks}, where="t")
    r = cayley(blocks, 0.0)
    y = F.linear(x, weight).reshape(5, 4, 3)
    expected = torch.einsum("x k n, k n m -> x k m", y, r).reshape(5, 12)
    torch.testing.assert_close(F.linear(x, adapter.patched(weight, 1.0)), expected, rtol=1e-5, atol=1e-5)


def butterfly_matrix(r: torch.Tensor, rows: int) -> torch.Tensor:
    """The whole BOFT rotation built from explicit permutation and block-diagonal matrices."""
    stages, _, b, _ = r.shape
    total = torch.eye(rows)
    for i in range(stages):
        k = 2 ** i * (b // 2)
        order = [g * 2 * k + j + h * k for g in range(rows // (2 * k)) for j in range(k) for h in range(2)]
        p = torch.eye(rows)[order]                                  # (P·W) = W[order]
        total = p.T @ torch.block_diag(*r[i]) @ p @ total
    return total


@pytest.mark.parametrize("shape", [(4, 8, 2, 2), (3, 4, 4, 4)])
def test_boft_equals_explicit_butterfly_matrix_and_keeps_column_norms(shape):
    weight, blocks = rnd(16, IN, seed=7), rnd(*shape, seed=8, std=0.3)
    adapter = build_adapter({"oft_blocks": blocks}, where="t")
    m = butterfly_matrix(cayley(blocks, 0.0), 16)
    patched = adapter.patched(weight, 1.0)
    torch.testing.assert_close(patched, m @ weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patched.norm(dim=0), weight.norm(dim=0), rtol=1e-5, atol=1e-5)


def test_oft_selection_shape_errors_and_no_row_split():
    assert isinstance(build_adapter({"oft_blocks": rnd(4, 3, 3)}, where="t"), OftAdapter)
    boft = build_adapter({"oft_blocks": rnd(3, 4, 4, 4)}, where="t")
    assert type(boft) is BoftAdapter
    with pytest.raises(LoraShapeError, match="rotates 16 output rows"):
        boft.patched(rnd(12, IN), 1.0)
    with pytest.raises(LoraFileError, match="qkv.*cannot be split"):
        sliced(build_adapter({"oft_blocks": rnd(4, 3, 3)}, where="qkv"), 0, 4)
