"""Our glue inside Forge's real A1111 ``modules`` (processing, extra networks, callbacks, the CFG denoiser and the
k-diffusion sampling loops, prompt_parser), over a tiny model with the host's module names: at every denoiser
call the model holds exactly the plan's weights for that step, the conds follow a text-encoder change point,
every weight comes back bit for bit. The driver (tests/host_a1111_driver.py) runs in Forge's own venv."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT.parent / "shared" / "hosts" / "forge-dfdcbab.tar.xz"

pytestmark = [pytest.mark.host, pytest.mark.slow]


def forge_folder() -> Path:
    """Forge extracted with its venv (tools/setup_host.sh, cached); skips when the snapshot is absent."""
    if not SNAPSHOT.is_file():
        pytest.skip(f"Forge snapshot absent ({SNAPSHOT}); the A1111/Forge host tests need ../shared/hosts")
    done = subprocess.run(["bash", str(ROOT / "tools" / "setup_host.sh"), "forge"], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        pytest.fail(f"tools/setup_host.sh forge failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    forge = forge_folder()
    out = tmp_path_factory.mktemp("a1111") / "runs.json"
    start = time.perf_counter()
    done = subprocess.run([str(forge / "venv" / "bin" / "python"), str(ROOT / "tests" / "host_a1111_driver.py"),
                           str(out)], cwd=forge, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    data["seconds"] = time.perf_counter() - start
    data["log"] = done.stdout + done.stderr
    return {r["name"]: r for r in data["results"]} | {"_": data}


def ms(run):
    return [c["m"] for c in run["calls"]]


def test_forge_lark_runs_our_grammar(runs):
    assert runs["_"]["lark"] == "1.1.2"          # Forge's pin; every run below parsed its tags with it


def test_each_denoiser_call_sees_the_weights_of_its_step(runs):
    euler = runs["euler"]                       # <lora:ink:unet=0.5@1,1@3:te=0@1,1@3>, 6 steps
    assert ms(euler) == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert [c["te_m"] for c in euler["calls"]] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert max(max(c["resid"], c["te_resid"]) for c in euler["calls"]) < 1e-6   # exactly W0 + m * delta
    assert euler["report"]["passes"] == [6] and euler["report"]["status"] == "done"


def test_each_batch_starts_at_step_one_before_its_conds(runs):
    batches = runs["batches"]                   # two batches, the host's cond cache missing for the second
    assert ms(batches) == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0] * 2
    assert [c["te_m"] for c in batches["calls"]] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0] * 2
    assert max(c["cond_err"] for c in batches["calls"]) < 1e-5
    assert batches["restored"]


def test_second_order_sampler_two_calls_per_step(runs):
    heun = runs["heun"]                         # <lora:ink:0.5@1,1@3>, 4 steps: Heun calls 2 per step, 1 at the end
    assert [c["call"] for c in heun["calls"]] == list(range(7))
    assert ms(heun) == [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]


def test_img2img_counts_its_own_steps(runs):
    img = runs["img2img"]                       # 8 steps at denoising 0.5: int(0.5 * 8) + 1 = 5; 1@0.5 -> step 3
    assert img["report"]["passes"] == [5]
    assert ms(img) == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_hires_pass_has_its_own_count_and_schedule(runs):
    hires = runs["hires"]                       # 0.25@1,1@50%: first pass 4 steps (1 from step 3), hires 3 (from 2)
    assert hires["report"]["passes"] == [4, 3]
    assert ms(hires) == [0.25, 0.25, 1.0, 1.0, 0.25, 1.0, 1.0]


def test_conds_follow_the_text_encoder_change_point_and_prompt_editing(runs):
    euler = runs["euler"]
    assert euler["texts"] == ["a cat photo"] * 5 + ["a dog photo"]    # the host's own [cat:dog:4] schedule
    assert euler["cat_vs_dog"] > 1e-2 and euler["te0_vs_te1"] > 1e-2  # the conds tell them apart
    assert max(c["cond_err"] for c in euler["calls"]) < 1e-5
    assert euler["report"]["change_points"] == [3]
    assert [r["step"] for r in euler["report"]["engine"]["change_points"]] == [3]


def test_host_cond_cache_is_not_poisoned(runs):
    again = runs["euler-again"]                 # same prompt: the host's cache serves steps 1-2 with step-1 conds
    assert max(c["cond_err"] for c in again["calls"]) < 1e-5
    assert ms(again) == ms(runs["euler"])


def test_bitwise_restore_on_every_exit(runs):
    for name in ("euler", "euler-again", "batches", "heun", "img2img", "hires", "exception", "interrupt", "state-dict", "bad-tag"):
        assert runs[name]["restored"], name
    assert runs["exception"]["result"] == "boom in the sampler"
    assert runs["exception"]["report"]["status"] == "failed"
    assert len(runs["interrupt"]["calls"]) == 3 and runs["interrupt"]["report"]["status"] == "interrupted"


def test_state_dict_load_mid_run_restores_first(runs):
    run = runs["state-dict"]                    # load at the third call: our weights are gone from then on
    assert ms(run) == [0.5, 0.5, 1.0, 0.0, 0.0]
    assert run["report"]["errors"] == ["the model's weights were reloaded during this generation; its LoRA tags "
                                       "are not applied to the remaining steps."]


def test_bad_tag_is_a_message_not_a_traceback(runs):
    bad = runs["bad-tag"]
    assert bad["comments"] == ["lora-syntax: LoRA tag error: LoRA tag '<lora:ink:0.5@@1>' at column 15: bad schedule: "
                               "unexpected '@1'; expected a number\n  <lora:ink:0.5@@1>\n                ^"]
    assert bad["infotext"]["LoRA errors"] == ("LoRA tag error: LoRA tag '<lora:ink:0.5@@1>' at column 15: bad schedule: "
                                              "unexpected '@1'; expected a number")
    assert ms(bad) == [0.0, 0.0, 0.0]
    assert "Traceback" not in runs["_"]["log"]


def test_infotext_keeps_lora_hashes_and_adds_our_weights(runs):
    info = runs["euler"]["infotext"]
    assert info["LoRA weights"] == "<lora:ink:te=0@1,1@3:unet=0.5@1,1@3>"   # the host's infotext writer quotes it
    assert info["Lora hashes"].startswith("ink: ") and len(info["Lora hashes"]) == len("ink: ") + 12


def test_setting_hands_tags_back_to_the_builtin(runs):
    assert runs["setting-off"]["registry"] == "ExtraNetworkLora"
    assert runs["setting-on"]["registry"] == "LoraSyntaxNetwork"


def test_paste_back_restores_the_tags(runs):
    assert runs["paste"]["prompt"] == "a cat, <lora:ink:te=0@1,1@3:unet=0.5@1,1@3>"


def test_install_py_leaves_the_host_pins_alone(runs):
    assert runs["install"]["missing"] == []      # Forge's lark 1.1.2, safetensors... are used as they are


def test_unknown_lora_is_named_and_the_others_apply(runs):
    unknown = runs["unknown"]
    assert ms(unknown) == [1.0, 1.0, 1.0] and unknown["restored"]
    assert len(unknown["comments"]) == 1 and unknown["comments"][0].startswith("lora-syntax: <lora:nosuch:1>: ")
    assert "nosuch" in unknown["comments"][0]
