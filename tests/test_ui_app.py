"""The standalone app's Generator without a browser: skipped tags, PNG infotext, steps, status times."""

from __future__ import annotations

import pytest
from PIL import Image

from lora_syntax import demo
from lora_syntax.errors import LoraError
from ui.app import STEPS_RANGE, Generator, check_steps, skipped_tags

pytestmark = pytest.mark.skipif(not (demo.MODEL_DIR / "model_index.json").is_file(), reason="demo kit not built")


@pytest.fixture(scope="module")
def generator() -> Generator:
    return Generator(demo.MODEL_DIR, [demo.LORA_DIR])


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []

    def __call__(self, value: object, desc: str = "") -> None:
        self.calls.append((value, desc))


def test_first_run_says_loading_model_and_reports_the_total_time() -> None:
    generator = Generator(demo.MODEL_DIR, [demo.LORA_DIR])   # its own: the first run loads the model
    progress = Progress()
    path, status, text = generator.generate("a blue circle <lora:sepia:1>", "", 2, 0, 32, 32, progress)
    assert progress.calls[0] == (0, "loading model") and progress.calls[-1] == ((2, 2), "step 2/2")
    assert status.startswith("Done in ") and "(sampling " in status and ", loading the model " in status
    total = float(status.split("Done in ")[1].split(" s")[0])
    sampling = float(status.split("(sampling ")[1].split(" s")[0])
    assert total >= sampling
    again = generator.generate("a blue circle", "", 2, 0, 32, 32, Progress())[1]
    assert "loading the model" not in again     # loaded once, said once


def test_png_carries_the_same_infotext_as_generate(generator) -> None:
    from lora_syntax.metadata import short_hash

    path, status, text = generator.generate("a blue circle <lora:sepia:0.5>", "blurry", 2, 3, 32, 32)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.text["parameters"] == text
    lines = text.splitlines()
    assert lines[:2] == ["a blue circle <lora:sepia:0.5>", "Negative prompt: blurry"]
    assert lines[2].startswith("Steps: 2, Sampler: DDIM, CFG scale: 7, Seed: 3, Size: 32x32, Model: model, ")
    assert f"Lora hashes: \"sepia: {short_hash(demo.LORA_DIR / 'sepia.safetensors')}\"" in lines[2]
    assert 'LoRA weights: "<lora:sepia:te=0.5:unet=0.5>"' in lines[2]


def test_malformed_tag_is_skipped_the_rest_applied_and_the_caret_kept(generator) -> None:
    from lora_syntax.syntax import parse

    prompt = "a blue circle <lora:sepia:1> <lora:night:te=0.5:bogus=1>"
    (error,) = parse(prompt, on_error="skip").errors
    path, status, text = generator.generate(prompt, "", 2, 0, 32, 32)
    assert "LoRAs: sepia" in status and "night" not in status.split("**Skipped")[0]
    assert status.endswith(f"**Skipped 1 malformed tag** (the other tags were applied):\n```text\n{error}\n```")
    assert "\n" in str(error) and "^" in str(error)     # the caret line, on its own line in the code block
    assert 'LoRA weights: "<lora:sepia:te=1:unet=1>"' in text and "night" not in text.splitlines()[-1]


def test_skipped_tags_markdown_for_several_errors() -> None:
    assert skipped_tags([]) == ""
    assert skipped_tags(["a\n ^", "b ```"]).startswith("\n\n**Skipped 2 malformed tags**")
    assert "```text\na\n ^\n\nb ` ` `\n```" in skipped_tags(["a\n ^", "b ```"])


@pytest.mark.parametrize("typed", [0, 151, 500, 2.5, "abc", None, float("inf")])
def test_steps_outside_the_box_range_are_a_message(generator, typed) -> None:
    with pytest.raises(LoraError, match=rf"Steps must be a whole number from {STEPS_RANGE[0]} to {STEPS_RANGE[1]}"):
        generator.generate("a cat", "", typed, 0, 32, 32)
    assert check_steps(150.0) == 150 and check_steps("7") == 7


@pytest.mark.parametrize("argv,message", [(["ui", "--port", "99999"], "--port 99999: a port is a number from 0 to 65535"),
                                          (["ui", "--model", "/nonexistent/model"], "--model /nonexistent/model: no diffusers model")])
def test_ui_refuses_bad_arguments_before_serving(argv, message, capsys) -> None:
    import extension

    assert extension.main(argv) == 2
    assert message in capsys.readouterr().err
