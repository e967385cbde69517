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
