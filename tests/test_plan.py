"""The plan resolves the documented defaults, schedules, block weights and restrictions to numbers."""

from __future__ import annotations

import pytest

from lora_syntax import blocks
from lora_syntax.errors import LoraSyntaxError
from lora_syntax.plan import STACK_WARN_LEVEL, build_plan
from lora_syntax.syntax import parse


def lora(prompt: str, steps: int = 10, architecture: str | None = None):
    plan = build_plan(prompt, steps, architecture=architecture)
    assert len(plan.loras) == 1
    return plan.loras[0]


def te(p, step: int = 1) -> float:
    return p.weight("text_encoder", None, step)


def unet(p, block: str | None = None, step: int = 1, component: str = "unet") -> float:
    return p.weight(component, block, step)


@pytest.mark.parametrize("prompt,te_w,unet_w", [
    ("<lora:x>", 1.0, 1.0),
    ("<lora:x:0.7>", 0.7, 0.7),
    ("<lora:x:te=0.4>", 0.4, 0.4),          # unet defaults to te when no positional strength
    ("<lora:x:1:te=0>", 0.0, 1.0),          # a UNet-only LoRA
    ("<lora:x:0.8:0.5>", 0.8, 0.5),         # A1111 TE:UNET
    ("<lora:x:unet=0.3>", 1.0, 0.3),
    ("<lora:x:-0.5>", -0.5, -0.5),
    ("<lora:x:0>", 0.0, 0.0),
])
def test_default_rules(prompt: str, te_w: float, unet_w: float) -> None:
    p = lora(prompt)
    assert (te(p), te(p), unet(p), unet(p, "IN04"), unet(p, "M00"), unet(p, "OUT11")) == (
        te_w, te_w, unet_w, unet_w, unet_w, unet_w)
    assert p.weight("text_encoder_2", None, 3) == te_w
    assert unet(p, "D03", component="transformer") == unet_w


def test_in_mid_out_override_their_groups_only() -> None:
    p = lora("<lora:x:0.9:in=0.2:mid=0.3:out=0.4>")
    assert (unet(p, "IN00"), unet(p, "M00"), unet(p, "OUT05"), unet(p, None), te(p)) == (0.2, 0.3, 0.4, 0.9, 0.9)
    assert (unet(p, "EMBED"), unet(p, "D18"), unet(p, "S00"), unet(p, "FINAL")) == (0.2, 0.2, 0.3, 0.4)


def test_dyn_from_positional_and_key() -> None:
    assert lora("<lora:x:1:1:16>").dyn == 16
    assert lora("<lora:x:dyn=4>").dyn == 4
    assert lora("<lora:x>").dyn is None


def test_switch_schedule_holds_until_next_keyframe() -> None:
    p = lora("<lora:x:te=0.1@1,0.6@6>", steps=20)
    assert p.weights("text_encoder", None) == (0.1,) * 5 + (0.6,) * 15
    assert p.weights("unet", "IN04") == (0.1,) * 5 + (0.6,) * 15  # unet follows te
    assert p.change_points == (6,)


def test_before_first_keyframe_is_zero_and_at0_is_start() -> None:
    assert lora("<lora:x:0.5@4>", 6).weights("unet", None) == (0, 0, 0, 0.5, 0.5, 0.5)
    assert lora("<lora:x:1@0,0@3>", 4).weights("unet", None) == (1, 1, 0, 0)


@pytest.mark.parametrize("at,steps,first", [("0.5", 20, 11), ("0.0", 20, 1), ("0.25", 10, 3), ("50%", 20, 11),
                                             ("25%", 10, 3), ("0.3", 10, 4), ("1.0", 10, 10), ("99%", 10, 10),
                                             ("100%", 10, 10), ("100%", 1, 1)])
def test_fractions_and_percentages_start_at_floor_f_steps_plus_one(at: str, steps: int, first: int) -> None:
    values = lora(f"<lora:x:1@{at}>", steps).weights("text_encoder", None)
    assert values == tuple(0.0 if s < first else 1.0 for s in range(1, steps + 1))


def test_step_beyond_the_run_never_applies() -> None:
    assert lora("<lora:x:1@0,0@30>", 10).weights("unet", None) == (1.0,) * 10


def test_lerp_interpolates_linearly_between_keyframes() -> None:
    p = lora("<lora:x:unet=lerp(0@1,1@5)>", 7)
    assert p.weights("unet", "M00") == (0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    assert te(p) == 1.0
    assert p.change_points == (2, 3, 4, 5)
    assert lora("<lora:x:lerp(1@3,0@5)>", 6).weights("unet", None) == (0.0, 0.0, 1.0, 0.5, 0.0, 0.0)


def test_loractl_tag_plans_with_switch_semantics() -> None:
    p = lora("<lora:detail:0.5@0,1@0.5:hr=1>", 10)
    assert p.weights("unet", None) == (0.5,) * 5 + (1.0,) * 5


def test_lbw_sd15_17_vector_and_base() -> None:
    vector = [0.5, 1, 1, 1, 1, 1, 1, 0.2, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # BASE,IN01..,M00,OUT03..OUT11
    p = lora("<lora:x:0.8:lbw=" + ",".join(map(str, vector)) + ">", architecture="sd15")
    assert te(p) == pytest.approx(0.4)
    assert unet(p, "M00") == pytest.approx(0.16)
    assert (unet(p, "OUT03"), unet(p, "OUT11"), unet(p, "IN01")) == (0.0, 0.8, 0.8)
    assert (unet(p, "IN00"), unet(p, "OUT00")) == (0.8, 0.8)  # blocks a short vector omits keep 1


def test_lbw_is_matched_by_length_without_architecture() -> None:
    sdxl = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2]  # BASE,IN04,IN05,IN07,IN08,M00,OUT00..OUT05
    p = lora("<lora:x:lbw=" + ",".join(map(str, sdxl)) + ">")
    assert (unet(p, "IN04"), unet(p, "M00"), unet(p, "OUT05"), unet(p, "IN00")) == (0.0, 1.0, 2.0, 1.0)
    flux = [1] + [0] * 19 + [0.5] * 38
    p = lora("<lora:x:lbw=" + ",".join(map(str, flux)) + ">")
    assert (unet(p, "D07"), unet(p, "S30"), te(p)) == (0.0, 0.5, 1.0)


def test_lbw_of_the_wrong_length_for_the_architecture_warns_and_is_ignored() -> None:
    plan = build_plan("<lora:x:lbw=" + ",".join(["0"] * 12) + ">", 5, architecture="sd15")
    assert any("fits no sd15 form" in w for w in plan.warnings)
    assert plan.loras[0].weight("unet", "IN04", 1) == 1.0


def test_sd15_presets_reproduce_lora_block_weight_vectors() -> None:
    expected = {"INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
                "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0", "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
                "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0", "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
                "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1", "NONE": ",".join(["0"] * 17),
                "ALL": ",".join(["1"] * 17)}
    for preset, vector in expected.items():
        mults = blocks.preset_multipliers(preset, "sd15")
        got = ",".join(f"{mults[b]:g}" for b in blocks.LBW_BLOCKS["sd15"])
        assert got == vector, preset


def test_presets_per_architecture() -> None:
    p = lora("<lora:x:lbw=OUTD>", architecture="sd15")
    assert (te(p), unet(p, "IN04"), unet(p, "OUT04"), unet(p, "OUT09")) == (1.0, 0.0, 1.0, 0.0)
    p = lora("<lora:x:lbw=INS>", architecture="sdxl")
    assert (unet(p, "IN02"), unet(p, "IN07"), unet(p, "M00"), te(p)) == (1.0, 0.0, 0.0, 1.0)
    p = lora("<lora:x:lbw=MIDD>", architecture="flux")
    assert (unet(p, "D03"), unet(p, "D12"), unet(p, "S05"), unet(p, "S30"), unet(p, "FINAL")) == (0, 1, 1, 1, 0)
    p = lora("<lora:x:0.6:lbw=ALL0.5>", architecture="sdxl")
    assert (te(p), unet(p, "OUT08")) == (0.3, 0.3)
    assert lora("<lora:x:lbw=NONE>").is_zero


def test_module_restricts_components() -> None:
    p = lora("<lora:x:0.7:module=te>")
    assert (te(p), p.weight("text_encoder_2", None, 1), unet(p, "IN04")) == (0.7, 0.7, 0.0)
    assert not p.is_zero and p.modules == frozenset({"text_encoder", "text_encoder_2", "text_encoder_3"})
    p = lora("<lora:x:0.7:module=transformer,text_encoder_2>")
    assert (unet(p, "D01", component="transformer"), unet(p, "D01", component="transformer_2")) == (0.7, 0.0)
    assert (te(p), p.weight("text_encoder_2", None, 1)) == (0.0, 0.7)
    p = lora("<lora:x:module=unet>")
    assert (te(p), unet(p), unet(p, component="transformer_2")) == (0.0, 1.0, 1.0)


def test_high_low_pick_one_transformer() -> None:
    p = lora("<lora:x:0.5:high>")
    assert (unet(p, component="transformer"), unet(p, component="transformer_2"), te(p)) == (0.5, 0.0, 0.5)
    p = lora("<lora:x:0.5:low>")
    assert (unet(p, component="transformer"), unet(p, component="transformer_2")) == (0.0, 0.5)


def test_is_zero() -> None:
    assert lora("<lora:x:0>").is_zero
    assert lora("<lora:x:te=0:unet=0>").is_zero
    assert not lora("<lora:x:1:te=0>").is_zero
    assert not lora("<lora:x:0@1,1@5>").is_zero
    assert lora("<lora:x:1@50>", 10).is_zero  # starts after the run
    assert lora("<lora:x:0:module=te:te=0>").is_zero


def test_plan_change_points_are_the_union() -> None:
    plan = build_plan("<lora:a:te=0.1@1,0.6@6> <lora:b:1@0.5> <lora:c:0.5>", 20)
    assert plan.change_points == (6, 11)
    assert plan.prompt == ""
    assert [l.change_points for l in plan.loras] == [(6,), (11,), ()]


def test_warnings_duplicate_name_and_stack_level() -> None:
    plan = build_plan("<lora:ink:0.5> <lora:INK:0.2>", 10)
    assert any("is used by 2 tags" in w for w in plan.warnings)
    assert not build_plan("<lora:a:0.7> <lora:b:0.7>", 10).warnings
    plan = build_plan("<lora:a:0.8> <lora:b:0.8>", 10)
    assert any(f"above {STACK_WARN_LEVEL}: text encoders 1.60 at step 1; denoiser in blocks 1.60 at step 1" in w
               for w in plan.warnings)
    plan = build_plan("<lora:a:1> <lora:b:te=0:unet=0.9@7>", 10)
    assert plan.warnings == (f"total LoRA strength above {STACK_WARN_LEVEL}: denoiser in blocks 1.90 at step 7; "
                             "denoiser mid blocks 1.90 at step 7; denoiser out blocks 1.90 at step 7. Stacked "
                             "LoRAs compound each other's artefacts: lower some weights",)
    plan = build_plan("<lora:a:1:lbw=OUTS> <lora:b:1:lbw=INS>", 10, architecture="sd15")
    assert len(plan.warnings) == 1 and "text encoders 2.00" in plan.warnings[0]
    assert "denoiser" not in plan.warnings[0]


def test_weight_lookup_is_cached_and_checks_the_step() -> None:
    p = lora("<lora:x:te=0.1@1,0.6@6>")
    assert p.weights("unet", "IN04") is p.weights("unet", "IN04")
    with pytest.raises(ValueError):
        p.weight("unet", None, 11)


def test_build_plan_takes_parsed_prompt_and_checks_arguments() -> None:
    parsed = parse("a <lora:x:0.5>")
    assert build_plan(parsed, 4) == build_plan("a <lora:x:0.5>", 4)
    with pytest.raises(ValueError):
        build_plan(parsed, 0)
    with pytest.raises(ValueError):
        build_plan(parsed, 4, architecture="sd3")


def test_block_groups_and_lbw_forms() -> None:
    assert [blocks.block_group(b) for b in ("BASE", "IN00", "M00", "OUT11", "EMBED", "D18", "S37", "FINAL")] == [
        "te", "in", "mid", "out", "in", "in", "mid", "out"]
    assert {k: len(v) for k, v in blocks.LBW_BLOCKS.items()} == {
        "sd15": 17, "sd15-full": 26, "sd2": 17, "sd2-full": 26, "sdxl": 12, "sdxl-full": 20, "flux": 58}
    assert blocks.LBW_BLOCKS["sdxl"] == ("BASE", "IN04", "IN05", "IN07", "IN08", "M00",
                                         "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")
    with pytest.raises(ValueError):
        blocks.block_group("XX1")


def test_unknown_block_id_falls_back_to_the_unet_weight() -> None:
    p = lora("<lora:x:0.5:in=0.2>", 3)
    assert p.weights("unet", "NOT_A_BLOCK") == (0.5, 0.5, 0.5)
    assert p.weights("unet", "BASE") == (0.5, 0.5, 0.5)


def test_plans_of_equal_tags_share_their_weight_cache() -> None:
    a = build_plan("x <lora:shared:te=0.2@3>", 9).loras[0]
    b = build_plan("y, <lora:shared:te=0.2@3> z", 9).loras[0]
    assert a == b and a.tag.span != b.tag.span
    assert a.weights("unet", "OUT02") is b.weights("unet", "OUT02")


def test_full_run_fraction_is_the_last_step_and_a_ramp_reaches_it() -> None:
    """Regression: 100% / 1.0 started at step floor(steps) + 1, past the end, so it never applied."""
    assert lora("<lora:x:1@100%>", 10).weights("unet", None) == (0.0,) * 9 + (1.0,)
    assert lora("<lora:x:0@0,1@1.0>", 4).weights("unet", None) == (0.0, 0.0, 0.0, 1.0)
    ramp = build_plan("<lora:x:lerp(0@0,1@100%)>", 10)
    assert ramp.loras[0].weights("unet", None)[-1] == 1.0
    assert ramp.loras[0].weights("unet", None)[0] == 0.0
    assert ramp.warnings == ()


def test_step_keyframe_past_the_end_warns_naming_the_tag() -> None:
    """Regression: <lora:x:1@11> over 10 steps did nothing, silently."""
    plan = build_plan("a <lora:x:1@11>", 10)
    assert plan.warnings == ("<lora:x:1@11>: strength keyframe @11 is after the last step (10): it never "
                             "applies; use a step from 1 to 10 or a fraction (1.0 = the last step)",)
    te_plan = build_plan("<lora:y:te=0@1,1@30>", 20)
    assert any(w.startswith("<lora:y:te=0@1,1@30>: te= keyframe @30 is after the last step (20)")
               for w in te_plan.warnings)
    assert build_plan("<lora:x:1@10>", 10).warnings == ()


def test_mixed_unit_backward_keyframe_warns_naming_the_tag() -> None:
    """Regression: in 1@50%,0@5 (10 steps) the 0@5 vanished. Same-unit order is a syntax error; mixed units
    resolve only with the step count, so the plan warns (and applies the keyframes in step order)."""
    plan = build_plan("<lora:x:1@50%,0@5>", 10)
    assert plan.loras[0].weights("unet", None) == (0.0,) * 5 + (1.0,) * 5
    assert plan.warnings == ("<lora:x:1@50%,0@5>: strength keyframe 0@5 resolves to step 5 with 10 steps, not "
                             "after the previous keyframe 1@50% (step 6): keyframes apply in step order, so it "
                             "comes before that one; write keyframes in step order",)
    same = build_plan("<lora:x:unet=1@0.5,0@6>", 10)  # both on step 6: the one written last wins
    assert same.loras[0].weights("unet", None) == (0.0,) * 10
    assert any("unet= keyframe 0@6 resolves to step 6 with 10 steps, not after the previous keyframe 1@0.5 "
               "(step 6): both start there and the one written last wins" in w for w in same.warnings)
    assert build_plan("<lora:x:1@5,0@60%>", 10).warnings == ()  # forward over this run: nothing to say
    with pytest.raises(LoraSyntaxError, match="keyframes must go forward, '@3' does not come after"):
        parse("<lora:x:1@5,0@3>")


def test_one_strong_lora_is_not_called_a_stack() -> None:
    """Regression: a single <lora:x:1:2:3> got "Stacked LoRAs compound each other's artefacts"."""
    plan = build_plan("<lora:x:1:2:3>", 10)
    assert plan.warnings == ("<lora:x:1:2:3>: LoRA strength above 1.5: denoiser in blocks 2.00 at step 1; "
                             "denoiser mid blocks 2.00 at step 1; denoiser out blocks 2.00 at step 1. One LoRA "
                             "this strong tends to overcook the image (burnt colours, artefacts): lower its "
                             "weight",)
    alone = build_plan("<lora:x:2> <lora:y:0.5:module=te>", 10)  # y adds to te only, x alone is over on unet
    assert "Stacked LoRAs" in alone.warnings[0] and "text encoders 2.50" in alone.warnings[0]
    quiet = build_plan("<lora:x:0.1> <lora:y:te=0:unet=1.7>", 10)
    assert quiet.warnings[0].startswith("total LoRA strength above 1.5: denoiser in blocks 1.80")


def test_lbw_that_zeroes_a_group_makes_its_schedule_weigh_nothing() -> None:
    """Regression: a block group multiplied by 0 everywhere still counted for is_zero and change points, so a
    LoRA that does nothing over the run was loaded and fused; lbw=NONE gave 1.0 to modules without a block id."""
    p = lora("<lora:x:0@0.429:mid=0.5@28%:lbw=INS>", 14, "sd15")
    assert p.is_zero and p.change_points == ()
    assert all(w == 0.0 for block in blocks.ARCH_BLOCKS["sd15"] for w in p.weights("unet", block))
    p = lora("<lora:x:1:mid=0.5@5:lbw=INS>", 14, "sd15")
    assert not p.is_zero and p.change_points == ()   # the mid change is multiplied by 0
    p = lora("<lora:x:1:lbw=NONE>", 10, "sd15")
    assert p.is_zero and p.weights("unet", None) == (0.0,) * 10 and p.weights("text_encoder", None) == (0.0,) * 10
    assert lora("<lora:x:1:lbw=INS>", 10, "sd15").weights("unet", None) == (1.0,) * 10   # a live group: the unet weight


@pytest.mark.parametrize("prompt,warned", [
    ("<lora:a:1:high> <lora:b:1:low>", "text encoders 2.00"),        # both apply their text encoder parts
    ("<lora:a:2:high> <lora:b:1:low>", "denoiser in blocks 2.00"),   # 2.0 on transformer alone
    ("<lora:a:1:module=text_encoder> <lora:b:1:module=text_encoder_2>", None),
    ("<lora:a:1:module=transformer> <lora:b:1:module=transformer_2>", None),
    ("<lora:a:1:high> <lora:b:1>", "denoiser in blocks 2.00"),       # b applies to transformer too
])
def test_tags_on_separate_components_do_not_add_up_in_the_strength_warning(prompt: str, warned: str | None) -> None:
    """Regression: the stack warning added each block group over every denoiser, so the per-stage tags the
    docs recommend for two-transformer models warned "denoiser in blocks 2.00" with 1.0 on each."""
    plan = build_plan(prompt, 20)
    stack = [w for w in plan.warnings if "strength above" in w]
    if warned is None:
        assert not stack, plan.warnings
    else:
        assert len(stack) == 1 and warned in stack[0], plan.warnings
    if prompt.startswith("<lora:a:1:high> <lora:b:1:low>"):
        assert "denoiser" not in stack[0]


def test_one_file_per_stage_is_not_a_duplicate_unless_it_adds_up_somewhere() -> None:
    """The same file on separate components is how a two-stage model takes one LoRA: no "applied once with
    their weights added", which stays for tags that do share a component (high/low share the text encoders)."""
    separate = build_plan("<lora:w:1:module=transformer> <lora:w:0.5:module=transformer_2>", 20)
    assert not any("used by 2 tags" in w for w in separate.warnings), separate.warnings
    shared = build_plan("<lora:w:1:high> <lora:w:0.5:low>", 20)
    assert any("used by 2 tags" in w for w in shared.warnings)
    assert shared.loras[0].weights("text_encoder", None)[0] + shared.loras[1].weights("text_encoder", None)[0] == 1.5


def test_lerp_keyframe_past_the_end_is_said_to_cut_the_ramp_not_to_never_apply() -> None:
    """Regression: lerp(0@1,1@20) over 10 steps warned that @20 "never applies"; it sets the ramp's slope."""
    plan = build_plan("<lora:x:lerp(0@1,1@20,0@30)>", 10)
    cut, never = plan.warnings
    assert "keyframe @20 is after the last step (10): the ramp towards it is cut there and reaches 0.474" in cut
    assert "write its keyframe @10 or @100%" in cut
    assert "keyframe @30 is after the last step (10): it never applies" in never
    assert plan.loras[0].weights("unet")[-1] == pytest.approx(9 / 19)
    switch = build_plan("<lora:x:0@1,1@20>", 10)
    assert any("@20 is after the last step (10): it never applies" in w for w in switch.warnings)


@pytest.mark.parametrize("prompt", ["<lora:x:1:high> <lora:x:0.5:low:te=0>",
                                    "<lora:x:1:high:te=0> <lora:x:0.5:low:te=0>",
                                    "<lora:x:1:te=0> <lora:x:1:module=te>", "<lora:x:1> <lora:x:0>"])
def test_a_component_a_tag_weighs_nothing_on_is_not_shared_by_a_duplicate(prompt: str) -> None:
    """Regression: the high/low form docs/syntax.md recommends (te=0 on one tag, so the text encoders count once)
    still warned "used by 2 tags ... weights added": components at weight 0 everywhere were counted as shared."""
    plan = build_plan(prompt, 20)
    assert not any("used by 2 tags" in w for w in plan.warnings), plan.warnings


def test_a_duplicate_that_adds_up_on_one_component_still_warns() -> None:
    plan = build_plan("<lora:x:1:high:te=0> <lora:x:0.5:low> <lora:x:0.2:module=text_encoder_2>", 20)
    assert any("LoRA 'x' is used by 3 tags" in w for w in plan.warnings), plan.warnings


def test_a_weight_on_a_component_module_leaves_out_is_said_to_have_no_effect() -> None:
    """Regression: <lora:x:1:module=unet:te=0.5> ignored te= silently."""
    assert build_plan("<lora:x:1:module=unet:te=0.5>", 20).warnings == (
        "<lora:x:1:module=unet:te=0.5>: te= has no effect: module=unet leaves out every text encoder; remove te= "
        "or add te to module=",)
    assert build_plan("<lora:x:1:module=text_encoder:unet=0.5:in=1>", 20).warnings == (
        "<lora:x:1:module=text_encoder:unet=0.5:in=1>: unet=, in= have no effect: module=text_encoder leaves out "
        "the denoiser; remove them or add unet to module=",)
    assert not build_plan("<lora:x:1:module=unet:te=0>", 20).warnings           # te=0 says what module= does
    assert not build_plan("<lora:x:1:module=te,transformer:te=0.5>", 20).warnings
