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


BIG = "9" * 5000   # past the 4,300 digits Python's int() reads


@pytest.mark.parametrize("prompt,words,column", [
    ("a <lora:x:dyn=" + BIG + ">", ["bad number '999", "for dyn: a rank is at most 100,000"], 15),
    ("a <lora:x:1:1:" + BIG + ">", ["bad number '999", "for dyn: a rank is at most 100,000"], 15),
    ("a <lora:x:dyn=100001>", ["bad number '100001' for dyn: a rank is at most 100,000"], 15),
    ("a <lora:x:1@" + "0" * 5000 + "100001>", ["bad schedule", "step '@00000000000000000...' is past any"], 13),
    ("a <lora:x:1@" + BIG + "%>", ["bad schedule", "999...% is not between 0% and 100%"], 13),
    ("a <lora:x:te=" + BIG + ">", ["bad number '999", "is not a finite number"], 14),
])
def test_numbers_of_thousands_of_digits_get_the_usual_message_at_the_number(prompt: str, words: list[str],
                                                                             column: int) -> None:
    """Regression: dyn= and leading-zero steps of 5,000 digits said "internal ValueError" at column 1 (int()
    refuses strings past 4,300 digits)."""
    error = error_for(prompt)
    assert all(word in str(error) for word in words) and "internal" not in str(error), str(error)[:400]
    assert error.column == column and caret_column(error) == column


def test_leading_zeros_do_not_reach_int_and_keep_the_value() -> None:
    assert parse("<lora:x:1@" + "0" * 5000 + "1>").tags[0].strength.keyframes[0].at == 1.0
    assert parse("<lora:x:dyn=" + "0" * 5000 + "16>").tags[0].dyn == 16
    assert parse("<lora:x:dyn=100000>").tags[0].dyn == 100_000
    assert parse("<lora:x:1@0." + "0" * 5000 + "5>").tags[0].strength.keyframes[0].unit == "fraction"


LONG = "n" * 60_000


@pytest.mark.parametrize("prompt", [
    "<lora:" + LONG,                                   # unclosed: its text was quoted twice, unclipped
    "<lora:x:" + "1" * 5000 + ">", "<lora:x:1@" + "5" * 5000 + "%>", "<lora:x:dyn=" + BIG + ">",
    "<lora:x:1@1" + "0" * 5000 + ".5>", "<lora:x:1@2,0@" + "0" * 5000 + "1>", "<lora:x:te=" + LONG + ">",
    "<lora:x:" + LONG + "=1>", "<lora:x:" + LONG + ">", "<lora:x:module=" + LONG + ">", "<lora:x:lbw=" + LONG + ">",
    "<lora:x:lbw=1,2," + LONG + ">", "<lora:x:" + LONG + "(0@0,1@1)>", "<lora:x:1," + "5" * 5000 + ">",
    "<lora:x:1 " + "2" * 5000 + ">", "<lora:x:te=0.5," + "k" * 5000 + "=1>", "<lora:x:te=1@" + BIG + ".5>",
])
def test_messages_stay_short_whatever_the_length_of_the_tag(prompt: str) -> None:
    """Regression: a 60,000-character unclosed tag gave a 120,300-character message; a 5,000-digit weight 10,300."""
    error = error_for("a " + prompt)
    problem, caret = "\n".join(str(error).splitlines()[:-2]), "\n".join(str(error).splitlines()[-2:])
    assert len(problem) < 500 and len(caret) < 220, problem
    assert "internal" not in problem


def test_unclosed_long_tag_is_not_suggested_closed_with_a_clipped_copy() -> None:
    message = str(error_for("<lora:" + LONG))
    assert "no '>' after '<lora:nnn" in message and "...'; close it with '>' after its last value" in message
    assert "...>" not in message


def test_skip_mode_over_the_limits_cleans_a_long_prompt_in_linear_time() -> None:
    """Regression: every removed tag copied the clean text so far: 15.7 s for 25,600 tags (2.7 MB)."""
    import time
    count = 25_600
    started = time.perf_counter()
    parsed = parse(("a" * 97 + " <lora:x> ") * count, on_error="skip")
    assert time.perf_counter() - started < 1.0
    assert parsed.prompt == " ".join(["a" * 97] * count)
    assert not parsed.tags and "at most 65,536 are read" in str(parsed.errors[0])


@pytest.mark.parametrize("position", ["@1e1%", "@1e1", "@-0%", "@-0", "@+5%", "@-0.5", "@5e-1"])
def test_keyframe_positions_take_no_sign_or_exponent_in_any_unit(position: str) -> None:
    """Regression: '@1e1%' was 10% and '@-0%' 0% (written back '-0%') while '@1e1' and '@-0' were refused."""
    error = error_for(f"a <lora:x:1{position}>")
    assert f"'{position}' is not a step (1, 2...), a fraction of the run (0.0-1.0) or a percentage (50%)" in str(error)
    assert error.column == 13 and caret_column(error) == 13


@pytest.mark.parametrize("position", ["nan", "nan%", "inf%", "-inf", "Infinity%"])
def test_non_finite_keyframe_positions_say_not_a_finite_number(position: str) -> None:
    """Regression: '@nan%' said "nan% is not between 0% and 100%" and '@nan' "is not a step"; docs/syntax.md
    promises "'nan' is not a finite number" wherever a number goes."""
    error = error_for(f"a <lora:x:1@{position}>")
    assert f"'{position.rstrip('%')}' is not a finite number" in str(error), str(error)
    assert error.column == 13 and caret_column(error) == 13


def test_a_weight_times_its_lbw_multiplier_is_bounded_like_a_weight() -> None:
    """Regression: <lora:a:9999:lbw=9999,1,...> was accepted, a text-encoder weight of 99,980,001 (half
    precision overflows at 65,504: the reason for the ±10,000 limit)."""
    ones = ",1" * 16
    error = error_for("a <lora:a:9999:lbw=9999" + ones + ">")
    assert ("bad lbw value '9999' for BASE: times the text-encoder weight 9999 it gives 99,980,001.00, past the "
            "±10,000 a weight may reach") in str(error)
    assert error.column == 20 and caret_column(error) == 20
    error = error_for("a <lora:a:2:out=-5000:lbw=1,1,1,1,1,1,1,1,1,1,-3" + ones[:12] + ">")
    assert "bad lbw value '-3' for OUT05: times the out-block weight 5000 it gives 15,000.00" in str(error)
    assert error.column == 47 and caret_column(error) == 47
    assert parse("<lora:a:100:lbw=100" + ",100" * 16 + ">").tags      # 10,000 exactly is allowed
    assert parse("<lora:a:te=1:unet=9999:lbw=9999" + ones + ">").tags   # BASE multiplies te only
