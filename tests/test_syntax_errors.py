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
    # a key written with ':' instead of '=' is told so, not "did you mean 'te'?" about 'te' itself
    ("a <lora:ink:te:0.5>", ["'te' needs its value after '='", "write te=0.5"], 13),
    ("a <lora:ink:LBW:INS>", ["'LBW' needs its value after '='", "write lbw=INS"], 13),
    # pairs separated by ',' instead of ':' (pointing at the comma), and a decimal comma
    ("a <lora:ink:te=0.5,unet=0.3>", ["'unet=' comes after a ','", "separate key=value pairs with ':'"], 19),
    ("a <lora:ink:0,8>", ["'0,8' has a decimal comma; write 0.8"], 13),
    ("a <lora:ink:te=1,5>", ["'1,5' has a decimal comma; write 1.5"], 16),
    # a step no run reaches (and whose digits int() would refuse past 4,300)
    ("a <lora:ink:1@100001>", ["bad schedule", "is past any sampling run (at most 100,000)"], 15),
    # a grammar error inside module= or lbw= is labelled for that key, not "bad schedule"/"bad number"
    ("a <lora:ink:module=te,>", ["bad module list", "write component names separated by ','"], 23),
    ("a <lora:ink:module=,te>", ["bad module list"], 20),
    ("a <lora:ink:lbw=>", ["bad lbw value", "a preset (lbw=INS)"], 17),
]


@pytest.mark.parametrize("prompt,words,column", [
    ("a <lora:ink:1@" + "9" * 5000 + ">", ["bad schedule", "step '@99999999999999999...' is past any sampling run"], 15),
    ("a <lora:ink:" + "lerp(" * 3000 + "0@0" + ")" * 3000 + ">", ["too many nested '('", "lerp(0@0,1@10)"], 17),
])
def test_pathological_tags_get_a_message_not_an_internal_error(prompt: str, words: list[str], column: int) -> None:
    """Regression: a 5,000-digit step and 3,000 nested lerp( said "internal ValueError/RecursionError"."""
    error = error_for(prompt)
    assert all(word in str(error) for word in words) and "internal" not in str(error), str(error)[:300]
    assert error.column == column and caret_column(error) == column


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


def caret_display_column(error: LoraSyntaxError) -> int:
    """The 1-based screen column the caret is drawn at (tabs to the next multiple of 8, wide characters 2)."""
    import unicodedata
    caret_line = str(error).splitlines()[-1]
    column = 0
    for char in caret_line[:caret_line.index("^")]:
        column = (column // 8 + 1) * 8 if char == "\t" else column + 1
    return column - 2 + 1


def display_column(line: str, index: int) -> int:
    """The 1-based screen column where ``line[index]`` is drawn, as a terminal draws it."""
    import unicodedata
    column = 0
    for char in "  " + line[:index]:
        if char == "\t":
            column = (column // 8 + 1) * 8
        elif unicodedata.combining(char):
            continue
        else:
            column += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return column - 2 + 1


@pytest.mark.parametrize("prompt", ["猫の絵 <lora:墨絵:tee=1>", "ｆｕｌｌ <lora:x:tee=1>", "a 🐱 <lora:x:tee=1>",
                                    "cafe\u0301 <lora:x:tee=1>", "a\t<lora:x:tee=1>", "\t\tb <lora:x:tee=1>"])
def test_caret_sits_under_the_error_on_screen_after_wide_or_zero_width_characters(prompt: str) -> None:
    """Regression: the caret was padded one space per character, so it drew left of the error after CJK,
    full-width or emoji characters, and right of it after a combining accent; after a tab it was off too."""
    error = error_for(prompt)
    assert error.column == prompt.index("tee") + 1   # the column number counts characters
    assert caret_display_column(error) == display_column(prompt, prompt.index("tee"))


def test_long_prompt_without_tags_comes_back_unchanged() -> None:
    """Regression: the 65,536-character limit is for prompts with LoRA tags; a longer prompt without any was
    an error naming its first character as a tag, and the negative prompt got a false "tags removed"."""
    from lora_syntax.plan import build_plan
    from lora_syntax.syntax.parser import MAX_PROMPT_CHARS, strip_negative
    prompt = "a cat, " * (MAX_PROMPT_CHARS // 7 + 10)
    assert parse(prompt).prompt == prompt and not parse(prompt, on_error="skip").errors
    assert build_plan(prompt, 20).prompt == prompt
    assert strip_negative(prompt) == (prompt, None)
    assert f"{len(prompt) + 10:,} characters" in str(error_for(prompt + "<lora:x:1>"))   # with a tag: still refused


@pytest.mark.parametrize("prompt,clean,tag", [
    ("a photo <lora:x:0.5, masterpiece, best quality", "a photo, masterpiece, best quality", "<lora:x:0.5"),
    ("a <lora:x:te=0.1@1,0.6@6, masterpiece", "a, masterpiece", "<lora:x:te=0.1@1,0.6@6"),
    ("a <lora:x:lerp(0@0, 1@10)", "a", "<lora:x:lerp(0@0, 1@10)"),
    ("a <lora:x:0.5\nsecond line", "a\nsecond line", "<lora:x:0.5"),
    ("<lora:x:0.5 <lora:y:1>, z", "z", "<lora:x:0.5"),
])
def test_unclosed_tag_in_skip_mode_removes_its_own_text_only(prompt: str, clean: str, tag: str) -> None:
    """Regression: an unclosed tag ran to the next '<' or the end, so the web UI dropped the rest of the
    prompt with it; it now ends at a line break or at a comma followed by a word (the next phrase)."""
    parsed = parse(prompt, on_error="skip")
    assert parsed.prompt == clean
    (error,) = parsed.errors
    assert error.tag == tag
    assert f"close it with '>' after its last value ('{tag}>')" in str(error)


@pytest.mark.parametrize("prompt,clean", [("a <lora:x>,", "a"), ("a <lora:x>, <lora:y>,", "a"),
                                          ("a cat, <lora:x:1>,", "a cat"), ("a <lora:x> ,  ", "a")])
def test_comma_dangling_at_the_end_is_dropped(prompt: str, clean: str) -> None:
    assert parse(prompt).prompt == clean


def test_percent_keyframe_is_quoted_with_its_percent_sign():
    assert "'@1%' does not come after" in str(error_for("<lora:x:1@2%,0@1%>"))
