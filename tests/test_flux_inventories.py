"""Real FLUX.1 key inventories (../shared/fixtures) map with zero unmatched keys onto full-size FLUX.1-dev.

Each inventory becomes a safetensors file of exactly its keys and shapes (small random values); the
file is grouped onto the reference tree built on ``meta`` and every target's delta shape is checked
from the factor shapes (fused modules: the targets' rows tile the fused output exactly).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_syntax.errors import ArchitectureMismatchError, LoraShapeError
from lora_syntax.formats import pick_dialect
from lora_syntax.loader import load_lora
from lora_syntax.keymaps.detect import detect_architecture
from lora_syntax.keymaps.reference import reference_tree
from tests.helpers_flux import (EXPECTED_DIALECT, FLUX_INVENTORIES, by_source, delta_shape, lokr_fitting,
                                needed_shape, read_inventory, synthesise)

DTYPES = {"flux_lora_diffusers_format": torch.float16, "flux_lora_xlabs_format": torch.float16,
          "flux_lora_diffusers_no_proj_mlp_format": torch.float16}


@pytest.fixture(scope="module")
def flux_tree():
    return reference_tree("flux")


def _grouped(path, flux_tree, *, through_loader=True):
    """The file read back, mapped by the project's loader (adapters built, shapes checked on meta; the
    file's NaN scan is io's to test and costs ~10^8 reads here), and grouped for factor-level checks."""
    state_dict = load_file(str(path))
    dialect = pick_dialect(state_dict.keys(), name=path.name)
    grouped = dialect.group(state_dict, flux_tree)
    if through_loader:
        loaded = load_lora(state_dict, flux_tree, name=path.stem)
        assert (loaded.architecture, loaded.format, loaded.unmatched) == ("flux", dialect.name, ())
        assert len(loaded.patches) == len(grouped.modules)
    return state_dict, dialect, grouped


def _check_shapes(flux_tree, groups):
    for keys, targets in by_source(groups).items():
        shape = delta_shape(targets[0].params)
        assert shape == needed_shape(flux_tree, targets), keys
        if len(targets) > 1:  # fused: rows tile [0, fused rows) in order, each the target's height
            edges = [t.rows for t in targets]
            assert edges[0][0] == 0 and edges[-1][1] == shape[0], keys
            assert all(a[1] == b[0] for a, b in zip(edges, edges[1:])), keys
            for target in targets:
                info = flux_tree.get(target.target.component, target.target.module)
                assert target.rows[1] - target.rows[0] == info.weight_shape[0]
        else:
            assert targets[0].rows is None
        scale = targets[0].params.get("dora_scale")
        if scale is not None:  # OneTrainer: one magnitude per input column
            assert tuple(scale.shape) == (1, shape[1]), keys


@pytest.mark.parametrize("name", FLUX_INVENTORIES)
def test_inventory_maps_with_zero_unmatched(shared_fixtures, flux_tree, tmp_path, name):
    shapes = read_inventory(shared_fixtures, name)
    assert detect_architecture(shapes) == "flux"
    path = tmp_path / f"{name}.safetensors"
    save_file(synthesise(shapes, DTYPES.get(name, torch.bfloat16)), str(path))
    # The shared LoKr inventory's factor shapes are synthetic and do not fit (the loader says so):
    # its shapes are checked by the next test, with real factor shapes.
    state_dict, dialect, grouped = _grouped(path, flux_tree, through_loader=name != "flux_lokr_bfl_format")
    assert dialect.name == EXPECTED_DIALECT[name]
    assert grouped.unmatched == []
    used = [key for keys in by_source(grouped.modules) for key in keys]
    assert sorted(used) == sorted(state_dict), "every key is used exactly once"
    targets = [(g.target.component, g.target.module) for g in grouped.modules]
    assert len(targets) == len(set(targets)), "no module is targeted twice by one file"
    assert all(g.target.block for g in grouped.modules)
    if name != "flux_lokr_bfl_format":
        _check_shapes(flux_tree, grouped.modules)
    else:
        with pytest.raises(LoraShapeError, match="to_out.0"):
            load_lora(state_dict, flux_tree, name=name)


def test_lokr_inventory_fits_once_factor_shapes_are_real(shared_fixtures, flux_tree, tmp_path):
    """The BFL LoKr inventory's factor shapes are synthetic; with w2 sized to fit, the deltas fit exactly."""
    shapes = read_inventory(shared_fixtures, "flux_lokr_bfl_format")
    groups = pick_dialect(shapes).group({k: torch.empty(s, device="meta") for k, s in shapes.items()},
                                        flux_tree).modules
    fixed = lokr_fitting(shapes, flux_tree, groups)
    path = tmp_path / "lokr.safetensors"
    save_file(synthesise(fixed, torch.bfloat16), str(path))
    _, _, grouped = _grouped(path, flux_tree)
    assert grouped.unmatched == []
    _check_shapes(flux_tree, grouped.modules)
    qkv = [g for g in grouped.modules if "img_attn.qkv" in g.source_keys[0]]
    assert [g.target.module for g in qkv] == [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"]
    assert [g.rows for g in qkv] == [(0, 3072), (3072, 6144), (6144, 9216)]


EXPECTED_COUNTS = {  # inventory -> (target modules, of which with row splits)
    "flux_lora_kohya_format": (19 * 14 + 38 * 6, 19 * 6 + 38 * 4),
    "flux_lora_kohya_with_te1_format": (19 * 14 + 38 * 6 + 72, 19 * 6 + 38 * 4),
    "flux_lora_aitoolkit_format": (19 * 12 + 38 * 5, 19 * 6 + 38 * 4),
    "flux_lora_xlabs_format": (3 * 8, 3 * 6),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_fused_modules_split_onto_every_diffusers_target(shared_fixtures, flux_tree, name):
    shapes = read_inventory(shared_fixtures, name)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    groups = pick_dialect(meta).group(meta, flux_tree).modules
    assert (len(groups), sum(g.rows is not None for g in groups)) == EXPECTED_COUNTS[name]
    single = sorted(g.target.module for g in groups if g.target.module.startswith("single_transformer_blocks.5."))
    if "xlabs" not in name:
        assert "single_transformer_blocks.5.proj_mlp" in single


@pytest.mark.parametrize("other", ["sdxl", "sd15"])
@pytest.mark.parametrize("name", ["flux_lora_kohya_with_te1_format", "flux_lora_xlabs_format",
                                  "flux_dora_onetrainer_format", "flux_lora_diffusers_format"])
def test_flux_lora_is_refused_by_other_architectures(shared_fixtures, name, other):
    shapes = read_inventory(shared_fixtures, name)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with pytest.raises(ArchitectureMismatchError) as caught:
        load_lora(meta, reference_tree(other), name=name)
    shown = {"sdxl": "SDXL", "sd15": "SD1.5"}[other]
    assert "FLUX.1" in str(caught.value) and shown in str(caught.value)
    assert (caught.value.lora_architecture, caught.value.model_architecture) == ("flux", other)
