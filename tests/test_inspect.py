"""`python extension.py inspect FILE`: run as a user runs it, on files built here and on real LoRAs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_syntax.commands import inspect as inspect_command
from lora_syntax.errors import ArchitectureMismatchError

ROOT = Path(__file__).resolve().parents[1]
HAS_LOADER = importlib.util.find_spec("lora_syntax.loader") is not None
KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # SD1.5: context width 768


def sd15_file(folder: Path, *, bogus: bool = True) -> Path:
    tensors = {f"{KEY}.lora_down.weight": torch.randn(4, 768) * 0.01,
               f"{KEY}.lora_up.weight": torch.randn(320, 4) * 0.01, f"{KEY}.alpha": torch.tensor(2.0)}
    if bogus:
        tensors |= {"lora_unet_bogus_block.lora_down.weight": torch.zeros(4, 8),
                    "lora_unet_bogus_block.lora_up.weight": torch.zeros(8, 4)}
    path = folder / "inky.safetensors"
    save_file(tensors, str(path), metadata={"ss_output_name": "inky", "ss_tag_frequency":
                                            json.dumps({"5_inkwash": {"monochrome": 3}}),
                                            "ss_base_model_version": "sd_v1"})
    path.with_name("inky.json").write_text(json.dumps({"activation text": "ink wash", "preferred weight": 0.8}))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "extension.py"), "inspect", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def run_inprocess(path: Path, *extra: str) -> int:
    """The command in this process (its output goes to capsys); shares reference trees between tests."""
    parser = argparse.ArgumentParser()
    inspect_command.add_arguments(parser)
    return inspect_command.run(parser.parse_args([str(path), *extra]))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOADER, reason="lora_syntax.loader not available yet")
def test_json_report_of_a_built_file(tmp_path: Path) -> None:
    result = cli(str(sd15_file(tmp_path)), "--json")
    assert result.returncode == 1, result.stderr      # 1: some keys do not map
    report = json.loads(result.stdout)
    assert report["architecture"] == "sd15" and report["format"] == "kohya"
    assert report["adapter_types"] == ["lora"] and (report["rank"], report["alpha"]) == (4, 2.0)
    assert report["trigger_words"] == ["ink wash"] and report["trigger_source"] == "activation text"
    assert report["dataset_tags"] == {"monochrome": 3} and report["preferred_weight"] == 0.8
    assert report["matched"] == 3 and report["modules"] == 1
    assert report["unmatched"] == ["lora_unet_bogus_block.lora_down.weight", "lora_unet_bogus_block.lora_up.weight"]
    assert report["metadata"]["ss_output_name"] == "inky"


def test_wrong_arch_names_both_and_fails(tmp_path: Path) -> None:
    result = cli(str(sd15_file(tmp_path)), "--arch", "sdxl")
    assert result.returncode == 2 and result.stdout == ""
    assert "an SD1.5 LoRA" in result.stderr and "--arch sdxl (SDXL)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["pickle", "truncated", "empty", "text", "no tensors"])
def test_bad_files_are_an_error_not_a_traceback(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("old.pt" if kind == "pickle" else "bad.safetensors")
    if kind == "pickle":
        torch.save({"w": torch.ones(1)}, path)
    elif kind == "truncated":
        path.write_bytes(sd15_file(tmp_path).read_bytes()[:500])
    elif kind == "no tensors":  # a valid header with nothing in it: not an "--arch" problem
        save_file({}, str(path))
    else:
        path.write_text("" if kind == "empty" else "just text, no tensors")
    with pytest.raises(inspect_command.LoraFileError) as caught:
        run_inprocess(path)
    assert str(path) in str(caught.value)
    if kind == "pickle":  # once end to end: the CLI turns it into "error: ..." and status 2
        result = cli(str(path))
        assert result.returncode == 2 and "arbitrary code" in result.stderr and "Traceback" not in result.stderr


def test_unknown_architecture_asks_for_arch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 3), "lora_unet_x.lora_up.weight": torch.zeros(3, 2)},
              str(path))
    status = run_inprocess(path, "--json")
    report = json.loads(capsys.readouterr().out)
    assert status == 1 and report["architecture"] is None and report["matched"] is None
    assert "--arch" in report["mapping_error"]


def test_text_report_and_long_metadata(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_command, "map_keys", lambda path, arch, count, **_: {
        "matched": count, "unmatched": [], "modules": 1, "mapping_error": None})
    path = sd15_file(tmp_path, bogus=False)
    path.with_name("inky.preview.png").write_bytes(b"png")
    metadata = {"ss_base_model_version": "sd_v1", "ss_tag_frequency": json.dumps({"x": {f"t{i}": i for i in
                                                                                       range(100)}})}
    metadata |= {f"z{i:02}": "v" for i in range(30)}
    save_file({f"{KEY}.lora_down.weight": torch.zeros(4, 768), f"{KEY}.lora_up.weight": torch.zeros(320, 4)},
              str(path), metadata=metadata)
    status = run_inprocess(path)
    out = capsys.readouterr().out
    assert status == 0
    assert "architecture:     SD1.5 (detected)" in out and "trigger words:    ink wash (from activation text)\n" in out
    assert "dataset tags:     t99 99, t98 98, t97 97, t96 96, t95 95, t94 94, t93 93, t92 92, t91 91, t90 90\n" in out
    assert "preview:          " + str(path.with_name("inky.preview.png")) in out
    assert "ss_tag_frequency = <" in out and "... 7 more (see --json)" in out
    assert "2 of 2 keys map" in out


def test_metadata_warnings_name_the_file_and_quote_no_source(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_command, "map_keys", lambda path, arch, count, **_: {
        "matched": count, "unmatched": [], "modules": 1, "mapping_error": None})
    path = tmp_path / "broken meta.safetensors"
    save_file({f"{KEY}.lora_down.weight": torch.zeros(4, 768), f"{KEY}.lora_up.weight": torch.zeros(320, 4)},
              str(path), metadata={"ss_tag_frequency": "{not json"})
    path.with_suffix(".json").write_text("{oops")
    status = run_inprocess(path, "--json")
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert status == 0 and len(report["warnings"]) == 2
    assert all(str(path.with_suffix("")) in text for text in report["warnings"])
    lines = captured.err.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)
    assert "UserWarning" not in captured.err and "parse_tag_frequency(" not in captured.err


def test_arch_must_agree_with_detection(tmp_path: Path) -> None:
    with pytest.raises(ArchitectureMismatchError) as caught:
        inspect_command.choose_architecture(tmp_path / "x.safetensors", "flux", "sdxl")
    assert (caught.value.lora_architecture, caught.value.model_architecture) == ("flux", "sdxl")
    assert "a FLUX.1 LoRA" in str(caught.value)
    assert inspect_command.choose_architecture(tmp_path, None, "sdxl") == "sdxl"
    assert inspect_command.choose_architecture(tmp_path, "sd2", None) == "sd2"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOADER, reason="lora_syntax.loader not available yet")
def test_real_sd15_file_maps_completely(shared_fixtures: Path, capsys: pytest.CaptureFixture) -> None:
    path = shared_fixtures / "real-loras" / "sd15_diffusers_attnproc_rank4.safetensors"
    status = run_inprocess(path, "--arch", "sd15", "--json")  # in-process: the sd15 tree is built once
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report["mapping_error"]
    assert report["architecture"] == "sd15" and report["format"] == "diffusers-legacy"
    assert (report["matched"], report["modules"], report["unmatched"]) == (256, 128, [])
    assert report["adapter_types"] == ["lora"] and report["rank"] == 4


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOADER, reason="lora_syntax.loader not available yet")
def test_real_legacy_file_gets_a_clear_answer(shared_fixtures: Path, capsys: pytest.CaptureFixture) -> None:
    path = shared_fixtures / "real-loras" / "sd15_cloneofsimo_legacy_rank4.safetensors"
    status = run_inprocess(path, "--arch", "sd15", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "cloneofsimo" and report["rank"] == 4
    if status != 0:  # refused: the message must say what the file is
        assert "cloneofsimo" in report["mapping_error"]
    else:
        assert report["unmatched"] == []


@pytest.mark.parametrize("keys, expected", [
    (["unet:0:up", "unet:0:down"], "cloneofsimo/lora legacy file"),   # --arch cannot help it
    (["foo", "bar.weight"], "is it a LoRA file?"),                     # no key layout at all
    (["lora_unet_x.lora_down.weight"], "pass --arch"),                 # a layout, no architecture
])
def test_undetected_architecture_says_whether_arch_helps(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        keys: list[str], expected: str) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    assert run_inprocess(path, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] is None and expected in report["mapping_error"]
    assert {"architecture", "format", "adapter_types", "trigger_words", "matched", "unmatched"} <= set(report)


def demo_lora(name: str = "sepia") -> Path:
    from lora_syntax import demo

    return demo.LORA_DIR / f"{name}.safetensors"


def without_model_name(source: Path, target: Path) -> Path:
    """A copy of a demo LoRA that no longer names the demo model: what a pruned or custom model's LoRA is
    to the reference SD1.5 (same module names, other shapes)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(source), "pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "ss_sd_model_name"}
    save_file(load_file(str(source)), str(target), metadata=metadata)
    return target


@pytest.mark.slow
def test_demo_lora_maps_onto_the_demo_model_its_metadata_names(tmp_path: Path) -> None:
    result = cli(str(demo_lora()))
    assert result.returncode == 0 and result.stderr == ""
    assert ("mapping:          120 of 120 keys map onto 40 modules of the demo model (named by the file's "
            "ss_sd_model_name); 0 unmatched") in result.stdout
    assert "trigger words:    none\n" in result.stdout
    assert "dataset tags:     triangle 263, white 255" in result.stdout


@pytest.mark.slow
def test_other_shapes_than_the_reference_are_one_line_with_counts(tmp_path: Path) -> None:
    path = without_model_name(demo_lora(), tmp_path / "pruned.safetensors")
    result = cli(str(path))
    assert result.returncode == 1 and result.stderr == ""
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("mapping:")]
    assert line == ("mapping:          shapes do not match the reference SD1.5: 120 of 120 keys name its modules, "
                    "but 40 of those 40 modules have other shapes (first: unet.down_blocks.0.attentions.0."
                    "transformer_blocks.0.attn1.to_k, model (320, 320), file lora_down.weight (4, 32), "
                    "lora_up.weight (32, 4)). It was made for a model of another size (custom, pruned or resized): "
                    "pass --model DIR to inspect it against that model.")
    from lora_syntax import demo

    given = cli(str(path), "--model", str(demo.MODEL_DIR), "--json")
    report = json.loads(given.stdout)
    assert given.returncode == 0 and (report["matched"], report["modules"], report["mapping_error"]) == (120, 40, None)


def test_model_must_be_a_model_folder(tmp_path: Path) -> None:
    result = cli(str(demo_lora()), "--model", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: --model '{tmp_path}' is not a diffusers model folder (it has no model_index.json).\n"


def test_refused_format_is_said_once_without_the_metadata_listing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "legacy.safetensors"
    save_file({"unet:0:up": torch.zeros(2, 2), "unet:0:down": torch.zeros(2, 2)}, str(path),
              metadata={f"unet:{i}:rank": "4" for i in range(40)})
    assert run_inprocess(path) == 1
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.count("cloneofsimo/lora legacy file") == 1
    assert "metadata:         40 keys (see --json)" in captured.out and "unet:0:rank" not in captured.out
    assert len(captured.out.splitlines()) == 13


def test_model_of_another_family_is_refused_by_name(tmp_path: Path) -> None:
    import shutil

    from lora_syntax import demo

    folder = tmp_path / "xl-model"
    shutil.copytree(demo.MODEL_DIR, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    result = cli(str(demo_lora()), "--model", str(folder))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert f"sepia.safetensors' is an SD1.5 LoRA; the model in '{folder}' is SDXL." in result.stderr
