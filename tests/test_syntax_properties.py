"""Property tests: any text gives a ParsedPrompt or a LoraSyntaxError; format_tag round-trips plans."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_syntax.errors import LoraSyntaxError
from lora_syntax.plan import build_plan
from lora_syntax.syntax import format_tag, parse

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TAGGY = "<>:=,@%.()- 0123456789eE+loraycteunmidhglwbsxALNOUTDI_/é\t\n"


def only_syntax_errors(prompt: str) -> None:
    try:
        parsed = parse(prompt)
    except LoraSyntaxError as error:
        assert error.column >= 1 and "^" in str(error)
    else:
        build_plan(parsed, 7)
    skipped = parse(prompt, on_error="skip")  # skip mode never raises
    build_plan(skipped, 3)
    assert all(isinstance(e, LoraSyntaxError) for e in skipped.errors)


@FAST
@given(st.text())
def test_arbitrary_text_never_raises_anything_else(prompt: str) -> None:
    only_syntax_errors(prompt)


@FAST
@given(st.text(alphabet=TAGGY, max_size=40))
def test_tag_like_text_never_raises_anything_else(body: str) -> None:
    only_syntax_errors("<lora:" + body)
    only_syntax_errors("a <lyco:x:" + body + "> b")


number = st.one_of(
    st.integers(-3, 3).map(str),
    st.floats(-4, 4, allow_nan=False, allow_infinity=False).map(lambda v: repr(round(v, 3))),
    st.sampled_from(["0", "-0.5", "1e-1", ".5", "+2"]),
)
at = st.one_of(st.integers(0, 60).map(str), st.floats(0, 1).map(lambda f: f"{f:.3f}"),
               st.integers(0, 100).map(lambda p: f"{p}%"))


@st.composite
def schedule(draw) -> str:
    kind = draw(st.sampled_from(["const", "switch", "lerp"]))
    if kind == "const":
        return draw(number)
    count = draw(st.integers(1 if kind == "switch" else 2, 4))
    steps = sorted(set(draw(st.lists(st.integers(0, 60), min_size=count, max_size=count))))
    pairs = ",".join(f"{draw(number)}@{s}" for s in steps)
    if kind == "lerp" and len(steps) >= 2:
        return f"lerp({pairs})"
    return pairs if kind != "lerp" else f"{draw(number)}@{draw(at)}"


@st.composite
def tag_text(draw) -> str:
    name = draw(st.sampled_from(["ink", "styles/ink wash v1.2", "水墨", "a-b.c"]))
    parts = [name]
    positional = draw(st.integers(0, 3))
    if positional >= 1:
        parts.append(draw(schedule()))
    if positional >= 2:
        parts.append(draw(schedule()))
    if positional >= 3:
        parts.append(str(draw(st.integers(1, 64))))
    keys = draw(st.lists(st.sampled_from(["te", "in", "mid", "out", "hr", "module", "lbw", "stage"]),
                         unique=True, max_size=5))
    for key in keys:
        if key == "module":
            parts.append("module=" + ",".join(draw(st.lists(
                st.sampled_from(["te", "unet", "text_encoder_2", "transformer", "transformer_2"]),
                min_size=1, max_size=3))))
        elif key == "lbw":
            parts.append("lbw=" + draw(st.one_of(
                st.sampled_from(["OUTD", "ins", "ALL0.5", "NONE", "MIDD"]),
                st.sampled_from([12, 17, 20, 26, 58]).flatmap(
                    lambda n: st.lists(number, min_size=n, max_size=n)).map(",".join))))
        elif key == "stage":
            parts.append(draw(st.sampled_from(["high", "low"])))
        else:
            parts.append(f"{key}={draw(schedule())}")
    return f"<{draw(st.sampled_from(['lora', 'lyco']))}:" + ":".join(parts) + ">"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tag_text(), st.integers(1, 60), st.sampled_from([None, "sd15", "sdxl", "flux"]))
def test_format_then_parse_gives_an_equal_plan(text: str, steps: int, architecture: str | None) -> None:
    tag = parse(text).tags[0]
    canonical = format_tag(tag)
    again = parse(canonical).tags[0]
    assert format_tag(again) == canonical
    first = build_plan(parse(text), steps, architecture=architecture).loras[0]
    second = build_plan(parse(canonical), steps, architecture=architecture).loras[0]
    assert first == second
    for component, block in (("text_encoder", None), ("unet", "IN04"), ("unet", "M00"), ("transformer", "S03"),
                             ("transformer_2", "OUT08"), ("unet", None)):
        assert first.weights(component, block) == second.weights(component, block)
    assert first.change_points == second.change_points and first.is_zero == second.is_zero


@FAST
@given(st.one_of(tag_text(), st.text(alphabet=TAGGY, max_size=40).map(lambda body: "<lora:" + body + ">")))
def test_accelerated_parser_agrees_with_lark(text: str) -> None:
    """lark-cython (when installed) gives pure Lark's result, and fails exactly where Lark fails."""
    from lark.exceptions import LarkError

    from lora_syntax.syntax import grammar

    if grammar.FAST_PARSER is None:
        pytest.skip("lark-cython is not installed (or did not pass the self-check)")
    try:
        expected = grammar.PARSER.parse(text)
    except LarkError:
        with pytest.raises(Exception):
            grammar.FAST_PARSER.parse(text)
    else:
        assert grammar.FAST_PARSER.parse(text) == expected
