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
    ("a <lora:ink:bogus=1>", ["unknown key 'bogus'; expected one of: te, unet"], 13),   # nothing close: the list
    ("a <lora:ink:te=1:te=2>", ["duplicate key 'te'"], 18),
    ("a <lora:ink:0.5:0.5:unet=1>", ["duplicate key 'unet'"], 21),
    ("a <lora::1>", ["empty name"], 9),
    ("a <lora:   >", ["empty name"], 12),
    ("a <lora:ink:1.2.3>", ["bad number", "unexpected '.3'"], 16),
    ("a <lora:ink:te=abc>", ["bad number 'abc'"], 16),
    ("a <lora:ink:te=1e999>", ["bad number '1e999' for te: '1e999' is not a finite number"], 16),
    # nan/inf/infinity in any case and any weight position: the same message as 1e999 (not "unexpected word")
    ("a <lora:ink:nan>", ["bad number 'nan' for strength: 'nan' is not a finite number"], 13),
    ("a <lora:ink:inf>", ["bad number 'inf' for strength: 'inf' is not a finite number"], 13),
    ("a <lora:ink:1:-Infinity>", ["bad number '-Infinity' for unet: '-Infinity' is not a finite number"], 15),
    ("a <lora:ink:te=NaN>", ["bad number 'NaN' for te: 'NaN' is not a finite number"], 16),
    ("a <lora:ink:out=+INF>", ["bad number '+INF' for out: '+INF' is not a finite number"], 17),
    ("a <lora:ink:te=1@1,inf@5>", ["bad number 'inf' for te: 'inf' is not a finite number"], 20),
    ("a <lora:ink:lerp(0@0,nan@5)>", ["bad number 'nan' for strength: 'nan' is not a finite number"], 22),
    ("a <lora:ink:lbw=nan>", ["bad number 'nan' for lbw: 'nan' is not a finite number"], 17),
    # high/low are bare words: high= is refused with the form to write, not as an unknown key
    ("a <lora:ink:high=1:low=0>", ["'high' is not a key: high/low are bare words", "e.g. <lora:x:1:high>"], 13),
    ("a <lora:ink:1:LOW=0.5>", ["'LOW' is not a key: high/low are bare words", "e.g. <lora:x:1:low>"], 15),
    ("a <lora:ink:zzz>", ["unexpected word 'zzz': expected a weight (0.8), key=value with a key of te, unet",
                          "or the bare word high or low"], 13),
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


def test_non_finite_words_are_never_read_as_keys() -> None:
    """Regression: 'nan' was "unexpected word ... keys need '='", 'inf' was "did you mean 'in'?"."""
    for word in ("nan", "NAN", "inf", "Inf", "infinity", "-INFINITY"):
        message = str(error_for(f"<lora:x:{word}>"))
        assert f"'{word}' is not a finite number" in message, message
        assert "did you mean" not in message and "keys need" not in message
    assert "did you mean 'in'" in str(error_for("<lora:x:info>"))  # a real word is still a word


def test_high_key_message_is_consistent_with_the_key_list() -> None:
    """Regression: 'high=' said "unknown key 'high'" while another message listed high among the keys."""
    error = error_for("<lora:x:high=1:low=0>")
    assert "unknown key" not in str(error)
    assert error.column == 9 and caret_column(error) == 9
    unknown = str(error_for("<lora:x:tee=1>"))
    assert "high" not in unknown  # the key list names keys only
