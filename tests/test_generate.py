"""``generate`` end to end: a tiny pipeline saved with ``save_pretrained``, loaded offline, PNG + infotext."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from PIL import Image

from helpers_engine import lora_state_dict, write_lora
from lora_syntax.commands import generate
from lora_syntax.testing.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def model_and_loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    pipe = tiny_pipeline("sd15")
    pipe.save_pretrained(str(root / "model"))
    write_lora(root / "loras", "ink", lora_state_dict(pipe, seed=3, scale=0.5))
    return root / "model", root / "loras"


def parse(*argv):
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    return parser.parse_args(list(argv))


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_generate_command_writes_png_with_infotext_and_timings(model_and_loras, tmp_path, capsys):
    model, loras = model_and_loras
    out = tmp_path / "img.png"
    args = parse("a cat <lora:ink:1@1,0.5@2>", "--model", str(model), "--lora-dir", str(loras), "--steps", "3",
                 "--seed", "7", "--out", str(out), "--negative", "dog, <lora:ink:0.3>", "--arch", "sd15",
                 "--device", "cpu")
    assert generate.run(args) == 0
    text = Image.open(out).text["parameters"]
    lines = text.splitlines()
    assert lines[0] == "a cat <lora:ink:1@1,0.5@2>" and lines[1] == "Negative prompt: dog"
    assert "Steps: 3" in lines[2] and "Seed: 7" in lines[2] and "Size: 32x32" in lines[2]
    assert lines[2].endswith('LoRA weights: "<lora:ink:te=1@1,0.5@2:unet=1@1,0.5@2>"')   # plans back (issue 14.11)
    captured = capsys.readouterr()
    # issue 14.13: a tag in the negative prompt is removed, not fed to the tokenizer, and the run says so
    assert ("warning: LoRA tags in the negative prompt are not applied (a LoRA changes the model, not one prompt); "
            "removed from it: '<lora:ink:0.3>'") in captured.err
    printed = captured.out
    for label in ("load model", "apply", "re-weight @2", "restore"):
        assert label in printed


def test_lora_effect_is_measurable_and_zero_equals_base(model_and_loras, tmp_path):
    model, loras = model_and_loras
    pipe = generate.load_pipeline(model, device="cpu")
    images = {}
    for key, prompt in {"base": "a cat", "zero": "a cat <lora:ink:0>", "ink": "a cat <lora:ink:1>"}.items():
        args = parse(prompt, "--steps", "2", "--arch", "sd15")
        rendered = generate.render(pipe, args, [loras])
        buffer = io.BytesIO()
        rendered.image.save(buffer, format="PNG")
        images[key] = np.asarray(rendered.image).astype(int)
    assert np.array_equal(images["base"], images["zero"])
    assert np.abs(images["ink"] - images["base"]).mean() > 1.0


def test_describe_schedule():
    assert generate.describe((0.8, 0.8)) == "0.8"
    assert generate.describe((1.0, 1.0, 0.25, 0.5)) == "1@1,0.25@3,0.5@4"


def addnet_hash(path) -> str:
    """A1111's hash of a safetensors LoRA, written out here independently: sha256 of the bytes after the
    8-byte length and the JSON header."""
    import hashlib

    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


def test_infotext_names_the_sampler_and_the_lora_hashes_like_a1111(model_and_loras, tmp_path, capsys):
    model, loras = model_and_loras
    out = tmp_path / "img.png"
    args = parse("a cat <lora:ink:0.5>", "--model", str(model), "--lora-dir", str(loras), "--steps", "2",
                 "--out", str(out), "--arch", "sd15", "--device", "cpu")
    assert generate.run(args) == 0
    fields = Image.open(out).text["parameters"].splitlines()[-1]
    scheduler = type(generate.load_pipeline(model, device="cpu").scheduler).__name__
    assert f"Sampler: {generate.SAMPLER_NAMES[scheduler]}," in fields
    assert f"Lora hashes: \"ink: {addnet_hash(loras / 'ink.safetensors')[:12]}\"," in fields
    captured = capsys.readouterr()
    assert "Loading pipeline components" not in captured.err and "torchvision" not in captured.err


@pytest.mark.parametrize(("scheduler", "config", "expected"), [
    ("DDIMScheduler", {}, "DDIM"), ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    ("MyNewScheduler", {}, "MyNew")])
def test_sampler_names(scheduler, config, expected):
    stand_in = type(scheduler, (), {"config": config})()
    assert generate.sampler_name(stand_in) == expected


def test_short_hash_prefers_a_wellformed_sshs_model_hash(tmp_path):
    from lora_syntax.metadata import short_hash
    from safetensors.torch import save_file
    import torch

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(3)}, str(path), metadata={"sshs_model_hash": "AB" * 32})
    assert short_hash(path) == "ab" * 6
    save_file({"a": torch.ones(3)}, str(path), metadata={"sshs_model_hash": "<img src=x>"})
    assert short_hash(path) == addnet_hash(path)[:12]
    save_file({"a": torch.ones(3)}, str(path), metadata={"other": "metadata changes nothing"})
    assert short_hash(path) == addnet_hash(path)[:12]


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_jpeg_and_webp_carry_the_infotext_in_exif(suffix, tmp_path):
    text = 'a cat\nSteps: 3, Lora hashes: "ink: 0123456789ab"'
    out = tmp_path / f"img{suffix}"
    generate.save_image(Image.new("RGB", (8, 8)), out, text)
    comment = Image.open(out).getexif().get_ifd(generate.EXIF_IFD)[generate.USER_COMMENT]
    assert comment[:8] == b"UNICODE\0" and comment[8:].decode("utf-16-be") == text


def test_out_with_another_suffix_is_refused_before_loading(tmp_path, monkeypatch):
    from lora_syntax.errors import LoraError

    monkeypatch.setattr(generate, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(LoraError, match=r"--out .*x\.gif: cannot write the generation parameters into a '\.gif' file"):
        generate.run(parse("a cat", "--out", str(tmp_path / "x.gif")))


@pytest.mark.parametrize("options,message", [
    (["--out", "{tmp}/folder.png"], r"--out .*folder\.png: that is a folder"),
    (["--out", "{tmp}/file/x.png"], r"'.*file' is a file, not a folder"),
    (["--steps", "0"], r"--steps 0: need at least 1 sampling step"),
    (["--steps", "-3"], r"--steps -3: need at least 1"),
    (["--cfg", "inf"], r"--cfg inf: not a finite number"),
    (["--cfg", "nan"], r"--cfg nan: not a finite number"),
    (["--width", "33", "--height", "32"], r"--width 33: image sides are multiples of 8"),
    (["--height", "-8"], r"--height -8: image sides are multiples of 8"),
])
def test_bad_options_are_refused_before_loading_with_a_message(options, message, tmp_path, monkeypatch):
    """Regression: an unwritable --out failed with a traceback after the whole render (the image lost);
    bad steps, a non-finite CFG and bad sizes failed with tracebacks from diffusers or the plan."""
    from lora_syntax.errors import LoraError

    (tmp_path / "folder.png").mkdir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(generate, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    argv = ["a cat", "--out", str(tmp_path / "ok.png"), *(o.format(tmp=tmp_path) for o in options)]
    with pytest.raises(LoraError, match=message):
        generate.run(parse(*argv))
    assert not (tmp_path / "ok.png").exists()   # the check leaves no empty file behind


@pytest.mark.parametrize("options,message", [
    (["--device", "bogus"], r"--device bogus: not a torch device"),
    (["--model", "{tmp}"], r"--model .*: not a diffusers model folder \(it has no model_index\.json\)"),
    (["--model", "{tmp}/page.safetensors"], r"--model .*page\.safetensors: not a readable safetensors checkpoint"),
])
def test_bad_model_or_device_is_a_message_not_a_traceback(options, message, tmp_path, capsys):
    import extension

    (tmp_path / "page.safetensors").write_text("<html>not a model</html>")
    argv = ["generate", "a cat", "--steps", "1", "--out", str(tmp_path / "x.png"), *(o.format(tmp=tmp_path) for o in options)]
    assert extension.main(argv) == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_cuda_device_without_cuda_is_a_message(tmp_path, capsys):
    import torch

    import extension
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert extension.main(["generate", "a", "--device", "cuda", "--out", str(tmp_path / "x.png")]) == 2
    assert "--device cuda: this torch has no CUDA device" in capsys.readouterr().err


def test_width_or_height_alone_keeps_the_other_side_of_the_model(model_and_loras, tmp_path, capsys):
    """Regression: diffusers drops both sides when one is None, so --width alone rendered the default size."""
    model, loras = model_and_loras
    out = tmp_path / "w.png"
    default = generate.default_size(generate.load_pipeline(model, device="cpu"))
    assert generate.run(parse("a cat", "--model", str(model), "--lora-dir", str(loras), "--steps", "1",
                              "--out", str(out), "--width", str(default[0] * 2))) == 0
    assert Image.open(out).size == (default[0] * 2, default[1])
    assert f"Size: {default[0] * 2}x{default[1]}" in Image.open(out).text["parameters"]


def test_console_warnings_are_one_line_without_source():
    """Library warnings (a duplicate alias...) print as the commands' own "warning: ..." lines."""
    import extension

    assert extension._console_warning(UserWarning("alias clash"), UserWarning, "/x/stack.py", 109) == \
        "warning: alias clash\n"


def test_api_generate_refuses_the_pipelines_step_argument():
    from lora_syntax.errors import LoraApplyError, LoraError
    from lora_syntax.hosts.diffusers import activate
    from lora_syntax.hosts.diffusers import generate as api_generate

    pipe = tiny_pipeline("sd15")
    with pytest.raises(LoraApplyError, match=r"takes steps=N, not num_inference_steps=N"):
        api_generate(pipe, "a cat", num_inference_steps=3)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(LoraError, match="steps must be a whole number of sampling steps"):
            with activate(pipe, "a cat", steps=steps):
                pass


def test_architecture_that_contradicts_the_pipeline_is_refused():
    """Regression: --arch flux on an SD1.5 pipeline mapped its LoRAs with FLUX block ids, silently."""
    from lora_syntax.errors import LoraError
    from lora_syntax.keymaps.build import tree_from_pipeline

    pipe = tiny_pipeline("sd15")   # a non-standard width: SD1.5 or SD2
    for wrong in ("flux", "sdxl"):
        with pytest.raises(LoraError, match=rf"architecture '{wrong}' was given, but this StableDiffusionPipeline is sd15 or sd2"):
            tree_from_pipeline(pipe, wrong)
    assert tree_from_pipeline(pipe, "sd2").architecture == "sd2"
    with pytest.raises(LoraError, match="StableDiffusionXLPipeline is sdxl"):
        tree_from_pipeline(tiny_pipeline("sdxl"), "sd15")
