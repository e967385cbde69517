"""The shipped demo kit: offline-loadable diffusers folder, real kohya LoRA files, under 25 MB, reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_syntax.demo import KIT_DIR, LORA_DIR, MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("sepia", "zorbstar", "night")
MB = 1024 * 1024


def _kit_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_kit_is_under_25_mb():
    assert _kit_bytes(KIT_DIR) < 25 * MB


def test_model_loads_offline_as_stable_diffusion(monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR), local_files_only=True, safety_checker=None)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert pipe.tokenizer("zorbstar").input_ids == [pipe.tokenizer.bos_token_id,
                                                     pipe.tokenizer.convert_tokens_to_ids("zorbstar</w>"),
                                                     pipe.tokenizer.eos_token_id]
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 64


@pytest.mark.parametrize("name", NAMES)
def test_lora_files_are_kohya_with_metadata_sidecar_and_preview(name):
    path = LORA_DIR / f"{name}.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta, keys = handle.metadata(), set(handle.keys())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert int(meta["ss_network_dim"]) in (4, 8)
    frequency = json.loads(meta["ss_tag_frequency"])
    assert len(frequency) == 1 and sum(next(iter(frequency.values())).values()) > 0
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    for stem in stems:
        assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= keys
        assert stem.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in stems
    sidecar = json.loads((LORA_DIR / f"{name}.json").read_text())
    assert sidecar["sd version"] == "SD1" and sidecar["preferred weight"] > 0
    assert (LORA_DIR / f"{name}.preview.png").stat().st_size > 500


def test_subject_lora_has_trigger_and_trains_text_encoder():
    with safe_open(str(LORA_DIR / "zorbstar.safetensors"), "pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert meta["modelspec.trigger_phrase"] == "zorbstar"
    assert json.loads(meta["ss_tag_frequency"])["10_zorbstar"]["zorbstar"] > 0
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert json.loads((LORA_DIR / "zorbstar.json").read_text())["activation text"] == "zorbstar"


def test_every_lora_key_names_a_linear_of_the_model():
    from lora_syntax.demo.lora_train import kohya_key
    from lora_syntax.demo.model import load_pipeline

    pipe = load_pipeline(MODEL_DIR)
    modules = {f"lora_unet_{n.replace('.', '_')}": m for n, m in pipe.unet.named_modules()}
    modules.update({kohya_key("lora_te_", pipe.text_encoder, n): m for n, m in pipe.text_encoder.named_modules()})
    for name in NAMES:
        with safe_open(str(LORA_DIR / f"{name}.safetensors"), "pt") as handle:
            for key in handle.keys():
                if key.endswith(".lora_down.weight"):
                    module = modules[key[: -len(".lora_down.weight")]]
                    assert isinstance(module, torch.nn.Linear)
                    assert handle.get_slice(key).get_shape()[1] == module.in_features


def test_library_reads_the_demo_loras():
    from lora_syntax.library import LoraLibrary

    library = LoraLibrary([LORA_DIR])
    assert sorted(e.name for e in library.entries()) == sorted(NAMES)
    assert "zorbstar" in library.info("zorbstar").trigger_words


def test_quick_training_regenerates_a_loadable_kit(tmp_path):
    start = time.time()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_demo.py"), "--quick", "--seed", "3",
                             "--out", str(tmp_path / "kit")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.time() - start < 180
    kit = tmp_path / "kit"
    assert (kit / "model" / "model_index.json").is_file()
    assert sorted(p.name for p in (kit / "loras").glob("*.safetensors")) == sorted(f"{n}.safetensors" for n in NAMES)
    assert json.loads((kit / "TRAINING.json").read_text())["seed"] == 3
    assert _kit_bytes(kit) < 25 * MB
