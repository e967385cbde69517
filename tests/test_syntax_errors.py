"""Each error class gives a LoraSyntaxError naming the tag and the column, with a caret under it."""

from __future__ import annotations

import pytest

from lora_syntax.errors import LoraSyntaxError
from lora_syntax.syntax import parse


def error_for(prompt: str) -> LoraSyntaxError:
    with pytest.raises(LoraSyntaxError) as caught:
        parse(prompt)
    return caught.value


def caret_column(error: LoraSyntaxError) -> int:
    """The 1-based column the caret line points at, read back from the message."""
    text_line, caret_line = str(error).splitlines()[-2:]
    assert set(caret_line.strip()) == {"^"}
    return caret_line.index("^") - 2 + 1  # both lines are indented by two spaces


# (prompt, expected words in the message, expected 1-based column)
CASES = [
    ("a <lora:ink:zz=1>", ["unknown key 'zz'", "expected one of: te, unet"], 13),
    ("a <lora:ink:tee=1>", ["unknown key 'tee'", "did you mean 'te'"], 13),
    ("a <lora:ink:te=1:te=2>", ["duplicate key 'te'"], 18),
    ("a <lora:ink:0.5:0.5:unet=1>", ["duplicate key 'unet'"], 21),
    ("a <lora::1>", ["empty name"], 9),
    ("a <lora:   >", ["empty name"], 12),
    ("a <lora:ink:1.2.3>", ["bad number", "unexpected '.3'"], 16),
    ("a <lora:ink:te=abc>", ["bad number 'abc'"], 16),
    ("a <lora:ink:te=1e999>", ["bad number '1e999'", "not finite"], 16),
    ("a <lora:ink:te=>", ["bad number", "expected"], 16),
    ("a <lora:ink:dyn=1.5>", ["bad number '1.5' for dyn"], 17),
    ("a <lora:ink:0.5@>", ["bad schedule"], 17),
    ("a <lora:ink:te=0.1@1,0.6>", ["bad schedule", "'0.6' has no '@STEP'"], 22),
    ("a <lora:ink:0.5@2.5>", ["bad schedule", "'@2.5'"], 17),
    ("a <lora:ink:0.5@150%>", ["bad schedule", "150%"], 17),
    ("a <lora:ink:te=1@6,0@2>", ["bad schedule", "forward"], 22),
    ("a <lora:ink:ramp(0@0,1@5)>", ["bad schedule", "unknown function 'ramp'"], 13),
    ("a <lora:ink:lerp(1)>", ["bad schedule", "lerp() needs two or more keyframes"], 13),
    ("a <lora:ink:1", ["unclosed tag", "'>'"], 3),
    ("a <lora:ink:1 <lora:b>", ["unclosed tag"], 3),
    ("a <lora:ink:module=tex>", ["unknown module 'tex'", "did you mean 'te'"], 20),
    ("a <lora:ink:lbw=OUTDD>", ["unknown lbw preset 'OUTDD'", "did you mean 'OUTD'"], 17),
    ("a <lora:ink:lbw=1,0,1>", ["bad lbw vector", "3 values", "17 (sd15)"], 17),
    ("a <lora:ink:1:1:1:1>", ["too many positional values"], 19),
    ("a <lora:ink:hgh>", ["unexpected word 'hgh'", "did you mean 'high'"], 13),
    ("a <lora:ink:te=#>", ["unexpected '#'"], 16),
]


@pytest.mark.parametrize("prompt,words,column", CASES)
def test_error_message_names_tag_column_and_points_caret(prompt: str, words: list[str], column: int) -> None:
    error = error_for(prompt)
    message = str(error)
    for word in words:
        assert word in message, message
    assert f"column {column}:" in message, message
    assert error.column == column
    assert caret_column(error) == column
    assert error.tag and error.tag in message
    assert error.text == prompt
    assert "Traceback" not in message and "Token(" not in message


def test_multiline_prompt_reports_line_and_column() -> None:
    error = error_for("first line\nsecond <lora:x:te=1:te=1>")
    assert "line 2, column 21" in str(error)
    assert error.column == len("first line\n") + 21
    assert "second <lora:x:te=1:te=1>" in str(error)


def test_long_prompt_is_clipped_around_the_caret() -> None:
    prompt = "word " * 100 + "<lora:x:te=oops>" + " word" * 100
    message = str(error_for(prompt))
    shown = message.splitlines()[-2]
    assert len(shown) < 130 and "…" in shown
    assert shown[message.splitlines()[-1].index("^"):].startswith("oops")


def test_skip_mode_drops_bad_tags_and_keeps_going() -> None:
    parsed = parse("a <lora:good:0.5>, <lora:bad:te=1:te=2>, b <lora:open", on_error="skip")
    assert [t.name for t in parsed.tags] == ["good"]
    assert parsed.prompt == "a, b"
    assert len(parsed.errors) == 2
    assert "duplicate key" in str(parsed.errors[0]) and "unclosed tag" in str(parsed.errors[1])


def test_raise_mode_raises_the_first_error() -> None:
    assert "duplicate" in str(error_for("<lora:x:te=1:te=1> <lora:y:foo=1>"))


def test_bad_on_error_argument() -> None:
    with pytest.raises(ValueError):
        parse("x", on_error="ignore")  # type: ignore[arg-type]
