"""Every accepted tag form parses into the expected typed fields, and the prompt is tidied."""

from __future__ import annotations

import pytest

from lora_syntax.errors import LoraSyntaxError
from lora_syntax.syntax import BlockWeights, Keyframe, Schedule, format_tag, parse


def one(prompt: str):
    parsed = parse(prompt)
    assert len(parsed.tags) == 1, parsed
    return parsed.tags[0]


def const(value: float) -> Schedule:
    return Schedule.constant(value)


def test_bare_name_has_no_weights() -> None:
    tag = one("<lora:ink>")
    assert (tag.name, tag.kind, tag.strength, tag.te, tag.unet) == ("ink", "lora", None, None, None)
    assert tag.text == "<lora:ink>" and tag.span == (0, 10)


def test_strength_and_a1111_positional_forms() -> None:
    assert one("<lora:ink:0.8>").strength == const(0.8)
    tag = one("<lora:ink:0.8:0.5>")
    assert (tag.strength, tag.unet, tag.dyn) == (const(0.8), const(0.5), None)
    tag = one("<lora:ink:1:0.5:16>")
    assert (tag.strength, tag.unet, tag.dyn) == (const(1.0), const(0.5), 16)


def test_lyco_alias_and_case() -> None:
    tag = one("<lyco:ink:0.7>")
    assert (tag.kind, tag.name, tag.strength) == ("lyco", "ink", const(0.7))
    assert one("<LoRA:ink>").name == "ink"


@pytest.mark.parametrize("key,field", [("te", "te"), ("unet", "unet"), ("in", "in_"), ("mid", "mid"),
                                       ("out", "out"), ("hr", "hr"), ("hrte", "hrte"), ("hrunet", "hrunet")])
def test_named_weight_keys(key: str, field: str) -> None:
    assert getattr(one(f"<lora:ink:{key}=0.25>"), field) == const(0.25)


def test_dyn_module_stage_lbw() -> None:
    tag = one("<lora:ink:dyn=8:module=te,transformer_2:low:lbw=OUTD>")
    assert tag.dyn == 8
    assert tag.modules == ("te", "transformer_2")
    assert tag.stage == "low"
    assert tag.lbw == BlockWeights(preset="OUTD")
    assert one("<lora:ink:high>").stage == "high"
    assert one("<lora:ink:lbw=all0.5>").lbw == BlockWeights(preset="ALL0.5")
    vector = ",".join(["1"] + ["0"] * 16)
    assert one(f"<lora:ink:lbw={vector}>").lbw == BlockWeights(values=(1.0,) + (0.0,) * 16)


def test_names_with_spaces_dots_unicode_folders() -> None:
    for name in ("styles/ink wash v1.2", "é-lève_ü.v2", "水墨画", "sub\\folder\\x", "a=b"):
        assert one(f"a <lora:{name}:0.5> b").name == name


def test_spaces_around_separators_are_tolerated() -> None:
    tag = one("<lora: styles/ink wash v1.2 : 0.5 : te = 0.1 @ 1 , 0.6 @ 6 : module = te , unet >")
    assert tag.name == "styles/ink wash v1.2"
    assert tag.strength == const(0.5)
    assert tag.te == Schedule((Keyframe(0.1, 1.0, "step"), Keyframe(0.6, 6.0, "step")))
    assert tag.modules == ("te", "unet")


def test_negative_zero_and_exponent_numbers() -> None:
    assert one("<lora:ink:-0.5>").strength == const(-0.5)
    assert one("<lora:ink:0>").strength == const(0.0)
    assert one("<lora:ink:te=1e-1:unet=+.5>").te == const(0.1)
    assert one("<lora:ink:unet=+.5>").unet == const(0.5)


def test_schedule_units() -> None:
    tag = one("<lora:ink:te=0.1@1,0.6@6:unet=0@0,1@0.5:in=1@50%>")
    assert tag.te.keyframes == (Keyframe(0.1, 1.0, "step"), Keyframe(0.6, 6.0, "step"))
    assert tag.unet.keyframes == (Keyframe(0.0, 0.0, "step"), Keyframe(1.0, 0.5, "fraction"))
    assert tag.in_.keyframes == (Keyframe(1.0, 50.0, "percent"),)
    assert tag.te.interpolation == "switch"


def test_lerp_form() -> None:
    tag = one("<lora:ink:lerp(0@0,1@10)>")
    assert tag.strength == Schedule((Keyframe(0.0, 0.0), Keyframe(1.0, 10.0)), "lerp")


def test_loractl_tags_parse() -> None:
    tag = one("<lora:detail:0.5@0,1@0.5:hr=1:hrte=0.5:hrunet=0.2@0.2,1@1.0>")
    assert tag.strength.keyframes == (Keyframe(0.5, 0.0), Keyframe(1.0, 0.5, "fraction"))
    assert (tag.hr, tag.hrte) == (const(1.0), const(0.5))
    assert tag.hrunet.keyframes[-1] == Keyframe(1.0, 1.0, "fraction")


def test_clean_prompt_tidies_whitespace_and_commas() -> None:
    assert parse("a cat, <lora:x:1>, night").prompt == "a cat, night"
    assert parse("<lora:x>, a cat").prompt == "a cat"
    assert parse("a cat, <lora:x>").prompt == "a cat"
    assert parse("a  <lora:x> <lyco:y>  cat").prompt == "a cat"
    assert parse("a<lora:x>cat").prompt == "acat"
    assert parse("a cat <hypernet:h:1> <lora:x>").prompt == "a cat <hypernet:h:1>"
    assert parse("line one <lora:x>\nline two").prompt == "line one\nline two"
    assert parse("no tags,  here ").prompt == "no tags,  here "


def test_spans_point_into_the_prompt() -> None:
    prompt = "a <lora:x:1> b <lyco:y> c"
    for tag in parse(prompt).tags:
        assert prompt[tag.span[0]:tag.span[1]] == tag.text


def test_same_tag_twice_gets_its_own_span() -> None:
    tags = parse("<lora:x:1> and <lora:x:1>").tags
    assert [t.span for t in tags] == [(0, 10), (15, 25)]


@pytest.mark.parametrize("text", [
    "<lora:ink>", "<lora:ink:0.8>", "<lora:ink:1:unet=0.5:dyn=8>", "<lyco:a b/c:te=0.1@1,0.6@6>",
    "<lora:x:unet=lerp(0@0,1@10):in=1@0.25:out=1@50%>", "<lora:x:module=te,unet:lbw=OUTD:high>",
])
def test_format_tag_is_canonical_and_stable(text: str) -> None:
    tag = one(text)
    formatted = format_tag(tag)
    assert format_tag(one(formatted)) == formatted
    assert one(formatted).content_key() == tag.content_key()


def test_dyn_zero_means_the_full_rank() -> None:
    """Regression: <lora:x:1:2:0> was refused ("dyn >= 1"). The LyCORIS extension documents dyn 0 as "no
    DyLoRA truncation"; A1111 passes int(0) on and slices the rank to nothing, which no one means."""
    assert one("<lora:x:1:2:0>").dyn is None
    assert one("<lora:x:dyn=0>").dyn is None
    assert one("<lora:x:dyn=16>").dyn == 16
    with pytest.raises(LoraSyntaxError, match=r"bad number '-1' for dyn: expected a whole number of dimensions "
                                              r"\(0 = the full rank\), e.g. dyn=16") as caught:
        parse("<lora:x:dyn=-1>")
    assert caught.value.column == 13
    with pytest.raises(LoraSyntaxError, match="duplicate key 'dyn'"):
        parse("<lora:x:1:1:0:dyn=4>")


def test_a_negative_zero_position_is_written_without_its_sign() -> None:
    """The syntax takes no sign in a keyframe position ('@-0%' is refused); a Keyframe built in code with -0.0
    still formats as a tag the parser reads back."""
    from dataclasses import replace
    tag = parse("<lora:x:1@0%,0@0.5>").tags[0]
    frames = (Keyframe(1.0, -0.0, "percent"), Keyframe(0.0, 0.5, "fraction"))
    assert format_tag(replace(tag, strength=Schedule(frames))) == "<lora:x:1@0%,0@0.5>" == format_tag(tag)
    assert format_tag(replace(tag, strength=Schedule((Keyframe(1.0, -0.0, "fraction"),)))) == "<lora:x:1@0.0>"
