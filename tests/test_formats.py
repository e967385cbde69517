"""Key dialects: what each recognises, how keys group per module, and which one the registry picks."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lora_syntax.errors import LoraFileError
from lora_syntax.formats import DIALECTS, pick_dialect
from lora_syntax.formats.base import Grouped
from lora_syntax.formats.kohya import KohyaDialect, split_key
from lora_syntax.formats.legacy import AttnProcessorDialect, CloneofsimoDialect
from lora_syntax.formats.peft import PeftDialect, apply_adapter_metadata, parse_key
from lora_syntax.keymaps.reference import reference_tree

Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.mark.parametrize("key,expected", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
     ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_down.weight")),
    ("lora_te2_text_model_encoder_layers_3_self_attn_q_proj.lokr_w1",
     ("lora_te2_text_model_encoder_layers_3_self_attn_q_proj", "lokr_w1")),
    ("lycoris_output_blocks_2_1_proj_out.dora_scale", ("lycoris_output_blocks_2_1_proj_out", "dora_scale")),
    ("lora_unet_x.something_else", None),
    ("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", None),
])
def test_kohya_split_key(key: str, expected) -> None:
    assert split_key(key) == expected


@pytest.mark.parametrize("key,expected", [
    (f"unet.{Q}.lora_A.weight", ("unet", Q, "lora_down.weight")),
    (f"{Q}.lora_B.weight", (None, Q, "lora_up.weight")),
    (f"unet.{Q}.lora.down.weight", ("unet", Q, "lora_down.weight")),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight",
     ("text_encoder", "text_model.encoder.layers.0.mlp.fc1", "lora_up.weight")),
    (f"unet.base_model.model.{Q}.lora_magnitude_vector", ("unet", Q, "dora_scale")),
    (f"unet.{Q}.alpha", ("unet", Q, "alpha")),
    ("lora_unet_x.alpha", None),
])
def test_peft_parse_key(key: str, expected) -> None:
    assert parse_key(key) == expected


def test_peft_groups_bare_and_transformers4_text_keys() -> None:
    tree = reference_tree("sd15")
    sd = {f"{Q}.lora_A.weight": torch.zeros(4, 640), f"{Q}.lora_B.weight": torch.zeros(640, 4),
          "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": torch.zeros(4, 768),
          "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": torch.zeros(3072, 4),
          "unet.nowhere.lora_A.weight": torch.zeros(1)}
    grouped = PeftDialect().group(sd, tree)
    targets = {(m.target.component, m.target.module) for m in grouped.modules}
    assert ("unet", Q) in targets and len(targets) == 2
    te = next(m for m in grouped.modules if m.target.component == "text_encoder")
    assert te.target.module in tree.modules["text_encoder"] and set(te.params) == {"lora_down.weight", "lora_up.weight"}
    assert grouped.unmatched == ["unet.nowhere.lora_A.weight"]


def test_kohya_groups_params_per_module_with_source_keys() -> None:
    tree = reference_tree("sdxl")
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    sd = {f"{name}.lora_down.weight": torch.zeros(4, 640), f"{name}.lora_up.weight": torch.zeros(640, 4),
          f"{name}.alpha": torch.tensor(1.0)}
    grouped = KohyaDialect().group(sd, tree)
    (module,) = grouped.modules
    assert module.target.module == Q and module.rows is None
    assert module.source_keys == tuple(sorted(sd)) and set(module.params) == {"lora_down.weight", "lora_up.weight", "alpha"}


def test_attention_processor_maps_unet_and_clip_projections() -> None:
    tree = reference_tree("sd15")
    te = "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.down.weight"
    sd = {f"mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight": torch.zeros(1280, 4),
          te: torch.zeros(4, 768)}
    grouped = AttnProcessorDialect().group(sd, tree)
    modules = {m.target.module: set(m.params) for m in grouped.modules}
    assert modules["mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0"] == {"lora_up.weight"}
    out_proj = next(m for m in modules if m.endswith("layers.0.self_attn.out_proj"))
    assert modules[out_proj] == {"lora_down.weight"}


def test_cloneofsimo_is_recognised_and_refused() -> None:
    keys = ["unet:0:up", "unet:0:down", "text_encoder:3:up"]
    assert pick_dialect(keys).name == "cloneofsimo"
    with pytest.raises(LoraFileError, match="unet:0:up"):
        CloneofsimoDialect().group({k: torch.zeros(1) for k in keys}, reference_tree("sd15"))


def test_adapter_metadata_alpha_and_pattern() -> None:
    tree = reference_tree("sd15")
    k = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
    sd = {f"unet.{m}.{p}": torch.zeros(1) for m in (Q, k) for p in ("lora_A.weight", "lora_B.weight")}
    grouped = PeftDialect().group(sd, tree)
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4,
                                                 "unet.alpha_pattern": {"attn1.to_k": 2}})}
    alphas = {m.target.module: float(m.params["alpha"]) for m in apply_adapter_metadata(grouped, meta).modules}
    assert alphas == {Q: 8.0, k: 2.0}
    assert apply_adapter_metadata(grouped, {}) is grouped
    assert isinstance(apply_adapter_metadata(grouped, {"lora_adapter_metadata": "not json"}), Grouped)


def test_registry_picks_highest_score_and_later_on_ties() -> None:
    assert [d.name for d in DIALECTS[:4]] == ["kohya", "peft", "diffusers-legacy", "cloneofsimo"]
    mixed = ["lora_unet_a.lora_up.weight", "lora_unet_a.lora_down.weight", f"unet.{Q}.lora_A.weight"]
    assert pick_dialect(mixed).name == "kohya"
    with pytest.raises(LoraFileError, match="'my lora': no known LoRA key layout"):
        pick_dialect(["foo.bar"], name="my lora")


def test_every_inventory_picks_its_family(shared_fixtures) -> None:
    for path in sorted((shared_fixtures / "key-inventories").glob("*.json")):
        keys = list(json.loads(path.read_text(encoding="utf-8"))["keys"])
        name = pick_dialect(keys).name
        assert (name.startswith("flux") if path.name.startswith("flux") else name == "kohya"), (path.name, name)
        assert re.match(r"^[a-z0-9-]+$", name)
