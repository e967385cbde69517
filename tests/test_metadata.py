"""lora_syntax.metadata: trigger words by order of trust, sidecars, previews, A1111 user metadata."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_syntax.errors import LoraFileError
from lora_syntax.metadata import (architecture_from_metadata, guess_adapter_types, guess_format, parse_tag_frequency,
                                  read_info, save_user_metadata)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwAB"
                       "BAEAwS2OUAAAAABJRU5ErkJggg==")
KOHYA = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(8, 320),
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 8),
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(8, 768),
    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 8),
    "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0),
}


def write(folder: Path, name: str = "ink", metadata: dict | None = None, tensors: dict | None = None) -> Path:
    path = folder / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(KOHYA if tensors is None else tensors, str(path), metadata=metadata)
    return path


def sidecar(path: Path, suffix: str, data: object) -> None:
    path.with_name(path.stem + suffix).write_text(data if isinstance(data, str) else json.dumps(data))


TAGS = {"10_inkwash": {"monochrome": 5, "ink": 9, "1girl": 2}, "3_brush strokes": {"monochrome": 4, "sky": 1}}


def test_trigger_words_come_from_the_first_source_that_has_any(tmp_path: Path) -> None:
    path = write(tmp_path, metadata={"modelspec.trigger_phrase": "spec word, Civ One", "ss_tag_frequency":
                                     json.dumps(TAGS)})
    user = {"activation text": "a1111 word, second", "preferred weight": 0.7, "negative text": "blurry",
            "notes": "use at 0.7", "description": "Ink style", "sd version": "SD1", "trainedWords": ["helper word"]}
    sidecar(path, ".json", user)
    sidecar(path, ".civitai.info", {"trainedWords": ["civ one, civ two", "CIV ONE"]})
    info = read_info(path)
    assert (info.trigger_words, info.trigger_source) == (("a1111 word", "second"), "activation text")
    assert info.activation_text == "a1111 word, second"
    assert info.preferred_weight == 0.7 and info.negative_text == "blurry" and info.notes == "use at 0.7"
    assert info.description == "Ink style" and info.sd_version == "SD1"
    assert info.tag_frequency == {"monochrome": 9, "ink": 9, "1girl": 2, "sky": 1}  # dataset tags, not triggers
    # peel the sources off one by one: each next one takes over, deduplicated ignoring case
    sidecar(path, ".json", {**user, "activation text": ""})
    assert (read_info(path).trigger_words, read_info(path).trigger_source) == (("civ one", "civ two"),
                                                                                "Civitai trainedWords")
    (tmp_path / "ink.civitai.info").unlink()
    assert (read_info(path).trigger_words, read_info(path).trigger_source) == (("helper word",),
                                                                                "NAME.json trainedWords")
    (tmp_path / "ink.json").unlink()
    assert (read_info(path).trigger_words, read_info(path).trigger_source) == (("spec word", "Civ One"),
                                                                                "trigger phrase")


@pytest.mark.parametrize(("folders", "stem", "output_name", "expected"), [
    ({"10_sepia": {"triangle": 263}}, "sepia", "sepia", ()),           # the demo's: its own name, no trigger
    ({"10_Sepia_Style": {"a": 1}}, "sepia-style", None, ()),          # the same name, spelt another way
    ({"10_sepia": {"a": 1}}, "copy", "sepia", ()),                     # named after its ss_output_name
    ({"10": {"a": 1}, "5_": {"b": 1}}, "ink", None, ()),               # bare repeat counts
    ({"10_inkwash": {"a": 1}, "3_brush strokes": {"b": 1}}, "ink", None, ("inkwash", "brush strokes")),
    ({"10_zxc": {"a": 1}, "10_ink": {"b": 1}}, "ink", None, ("zxc",)),
])
def test_dataset_folder_names_are_trigger_words_unless_they_name_the_lora(tmp_path, folders, stem, output_name,
                                                                          expected) -> None:
    metadata = {"ss_tag_frequency": json.dumps(folders), "modelspec.trigger_phrase": ""}
    if output_name:
        metadata["ss_output_name"] = output_name
    info = read_info(write(tmp_path, stem, metadata=metadata))
    assert info.trigger_words == expected
    assert info.trigger_source == ("dataset folder name" if expected else "")


def test_demo_loras_trigger_words(tmp_path: Path) -> None:
    from lora_syntax import demo

    found = {name: read_info(demo.LORA_DIR / f"{name}.safetensors") for name in ("sepia", "night", "zorbstar")}
    assert {name: info.trigger_words for name, info in found.items()} == {
        "sepia": (), "night": (), "zorbstar": ("zorbstar",)}
    assert found["zorbstar"].trigger_source == "activation text"
    assert "triangle" in found["sepia"].tag_frequency


def test_civitai_helper_json_alone(tmp_path: Path) -> None:
    path = write(tmp_path)
    sidecar(path, ".json", {"trainedWords": ["zxc style"], "sha256": "abc"})
    info = read_info(path)
    assert info.trigger_words == ("zxc style",) and info.preferred_weight is None and info.activation_text == ""


def test_a1111_zero_preferred_weight_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path)
    sidecar(path, ".json", {"preferred weight": 0})
    assert read_info(path).preferred_weight is None


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", "\xff\xfe garbage"])
def test_malformed_sidecars_warn_and_are_ignored(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, metadata={"modelspec.trigger_phrase": "kept"})
    sidecar(path, ".json", bad)
    sidecar(path, ".civitai.info", bad)
    with pytest.warns(UserWarning, match="ignoring"):
        info = read_info(path)
    assert info.trigger_words == ("kept",)


def test_tag_frequency_parsing() -> None:
    raw = json.dumps({"5_ink": {"a": 1}, "ink": {"a": 2}, "1_2_x": {"b": 3}, "12_": {"c": 1}, "n": "oops"})
    folders, counts = parse_tag_frequency(raw)
    assert folders == ["ink", "ink", "2_x", "n"]
    assert counts == {"a": 3, "b": 3, "c": 1}
    assert parse_tag_frequency(None) == ([], {})
    with pytest.warns(UserWarning, match="ss_tag_frequency"):
        assert parse_tag_frequency("{broken") == ([], {})


def test_caption_tags_are_never_trigger_words(tmp_path: Path) -> None:
    tags = {"1_set": {f"tag{i:02}": 100 - i for i in range(30)}}
    info = read_info(write(tmp_path, metadata={"ss_tag_frequency": json.dumps(tags)}))
    assert info.trigger_words == ("set",)
    assert len(info.tag_frequency) == 30


@pytest.mark.parametrize("present, expected", [
    (["ink.png", "ink.preview.png"], "ink.preview.png"),
    (["ink.png", "ink.jpg"], "ink.png"),
    (["ink.preview.jpeg", "ink.webp"], "ink.preview.jpeg"),
    (["ink.webp"], "ink.webp"),
    (["other.png"], None),
])
def test_preview_files(tmp_path: Path, present: list[str], expected: str | None) -> None:
    path = write(tmp_path, metadata={"modelspec.thumbnail": "data:image/png;base64,"
                                     + base64.b64encode(PNG).decode()} if expected is None else None)
    for name in present:
        (tmp_path / name).write_bytes(PNG)
    preview = read_info(path).preview
    if expected is None:  # falls back to the modelspec thumbnail, decoded into a cache file
        assert preview is not None and preview.read_bytes() == PNG and preview.suffix == ".png"
    else:
        assert preview == tmp_path / expected


def test_modelspec_thumbnail_goes_to_the_given_cache_dir(tmp_path: Path) -> None:
    url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8fakejpeg").decode()
    path = write(tmp_path / "loras", metadata={"modelspec.thumbnail": url})
    preview = read_info(path, thumbnail_dir=tmp_path / "thumbs").preview
    assert preview is not None and preview.parent == tmp_path / "thumbs" and preview.suffix == ".jpg"
    assert preview.read_bytes() == b"\xff\xd8fakejpeg"
    assert read_info(write(tmp_path, "bad", {"modelspec.thumbnail": "http://x/y.png"})).preview is None


def test_rank_alpha_format_trainer_from_kohya_file(tmp_path: Path) -> None:
    info = read_info(write(tmp_path, metadata={"ss_network_dim": "8", "ss_sd_model_name": "v1-5-pruned.ckpt"}))
    assert (info.rank, info.alpha, info.format, info.adapter_types) == (8, 4.0, "kohya", ("lora",))
    assert info.trainer == "kohya-ss/sd-scripts" and info.base_model == "v1-5-pruned.ckpt"
    assert read_info(write(tmp_path, "b", {"ss_network_alpha": "16"})).alpha == 16.0


@pytest.mark.parametrize("keys, dialect", [
    (["lora_unet_x.lora_down.weight", "lora_te1_y.lora_up.weight"], "kohya"),
    (["unet.down_blocks.0.attn.to_q.lora_A.weight", "unet.down_blocks.0.attn.to_q.lora_B.weight"], "peft"),
    (["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"], "diffusers-legacy"),
    (["double_blocks.0.processor.proj_lora1.down.weight"], "flux-xlabs"),
    (["unet:0:up", "unet:0:down"], "cloneofsimo"),
    (["something.else"], "unknown"),
])
def test_format_guess(keys: list[str], dialect: str) -> None:
    assert guess_format(keys) == dialect


def test_adapter_type_guess() -> None:
    keys = ["lora_unet_a.hada_w1_a", "lora_unet_b.lokr_w1", "lora_unet_c.lora_down.weight", "lora_unet_c.dora_scale",
            "lora_unet_d.diff", "lora_unet_e.w_norm", "lora_unet_f.a1.weight", "lora_unet_g.oft_blocks"]
    assert guess_adapter_types(keys) == ("dora", "full", "glora", "loha", "lokr", "lora", "norm", "oft")


@pytest.mark.parametrize("metadata, arch", [
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"ss_base_model_version": "sd_v1"}, "sd15"),
    ({"ss_base_model_version": "sd_v2_768_v"}, "sd2"),
    ({"ss_v2": "True"}, "sd2"),
    ({"modelspec.architecture": "stable-diffusion-v1/lora"}, "sd15"),
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "sdxl"),
    ({"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ({"ss_base_model_version": "flux1"}, "flux"),
    ({}, None),
])
def test_architecture_from_metadata(metadata: dict, arch: str | None) -> None:
    assert architecture_from_metadata(metadata) == arch
    assert architecture_from_metadata({}, "SDXL") == "sdxl"


def test_save_user_metadata_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path)
    sidecar(path, ".json", {"sha256": "abc123", "activation text": "old", "notes": "keep me"})
    target = save_user_metadata(path, activation_text="ink wash, monochrome", preferred_weight=0.6,
                                negative_text="color", extra={"my key": 1})
    stored = json.loads(target.read_text())
    assert stored == {"sha256": "abc123", "activation text": "ink wash, monochrome", "notes": "keep me",
                      "preferred weight": 0.6, "negative text": "color", "my key": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ink.json", "ink.safetensors"]  # no temp file left
    info = read_info(path)
    assert info.trigger_words[:2] == ("ink wash", "monochrome") and info.preferred_weight == 0.6
    assert info.notes == "keep me"


def test_save_user_metadata_creates_the_sidecar(tmp_path: Path) -> None:
    path = write(tmp_path, "styles/new")
    target = save_user_metadata(path, activation_text="x", notes="n", description="d", sd_version="SDXL")
    assert target == tmp_path / "styles" / "new.json"
    assert json.loads(target.read_text()) == {"activation text": "x", "notes": "n", "description": "d",
                                              "sd version": "SDXL"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["new.json", "new.safetensors"]


def test_save_user_metadata_refuses_to_overwrite_a_malformed_sidecar(tmp_path: Path) -> None:
    path = write(tmp_path)
    sidecar(path, ".json", "{oops")
    with pytest.raises(LoraFileError, match="not valid JSON"):
        save_user_metadata(path, notes="x")
    assert (tmp_path / "ink.json").read_text() == "{oops"


@pytest.mark.parametrize("name, dialect", [("sd15_diffusers_attnproc_rank4", "diffusers-legacy"),
                                           ("sd15_cloneofsimo_legacy_rank4", "cloneofsimo")])
def test_real_files(shared_fixtures: Path, name: str, dialect: str) -> None:
    info = read_info(shared_fixtures / "real-loras" / f"{name}.safetensors")
    assert (info.format, info.rank, info.adapter_types) == (dialect, 4, ("lora",))
    assert info.trigger_words == () and info.preview is None


def test_tag_frequency_with_nan_or_infinite_counts_skips_them() -> None:
    """JSON allows NaN/Infinity; a broken trainer's counts must not crash read_info."""
    folders, counts = parse_tag_frequency('{"10_ink": {"ink": 3, "wash": Infinity, "dry": NaN, "wet": -Infinity}}')
    assert folders == ["ink"] and counts == {"ink": 3}


# -- issue 13 item 5: which components a file has keys for, from the header's key names ----------------------------
TOUCH_EXAMPLES = [  # one key per dialect and component prefix -> its kind (None: the name does not say)
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "te"),
    ("lora_te2_text_model_encoder_layers_3_self_attn_q_proj.lokr_w1", "te"),
    ("lycoris_te1_text_model_encoder_layers_0_mlp_fc1.hada_w1_a", "te"),
    ("lora_unet_down_blocks_0_attentions_0_proj_in.alpha", "unet"),
    ("lycoris_input_blocks_4_1_proj_out.dora_scale", "unet"),
    ("lycoris_time_embed_0.lora_up.weight", "unet"),
    ("lora_transformer_single_transformer_blocks_3_attn_to_q.lora_up.weight", "unet"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", "te"),
    ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight", "te"),
    ("unet.mid_block.attentions.0.proj_out.lora.down.weight", "unet"),
    ("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "unet"),
    ("text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.lora_up.weight", "te"),
    ("diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1", "unet"),
    ("double_blocks.0.processor.qkv_lora1.down.weight", "unet"),
    ("down_blocks.1.attentions.0.proj_in.lora_A.weight", None),          # bare PEFT: could be either
]


@pytest.mark.parametrize(("key", "kind"), TOUCH_EXAMPLES)
def test_each_dialects_component_prefix_gives_the_kind_of_component(key, kind) -> None:
    from lora_syntax.formats.touches import key_kind

    assert key_kind(key) == kind


def test_info_says_which_kinds_of_component_the_file_touches(tmp_path: Path) -> None:
    unet_only = {k: v for k, v in KOHYA.items() if k.startswith("lora_unet_")}
    assert read_info(write(tmp_path, "both")).touches == ("te", "unet")
    assert read_info(write(tmp_path, "unet", tensors=unet_only)).touches == ("unet",)
    bare = {**unet_only, "down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(8, 320)}
    assert read_info(write(tmp_path, "bare", tensors=bare)).touches is None      # unknown: counts everywhere


def test_demo_loras_touch_what_their_keys_name() -> None:
    from lora_syntax.demo import LORA_DIR

    touches = {name: read_info(LORA_DIR / f"{name}.safetensors").touches for name in ("sepia", "night", "zorbstar")}
    assert touches == {"sepia": ("unet",), "night": ("unet",), "zorbstar": ("te", "unet")}
