"""keymaps.keyscan: the joined-keys scan answers exactly what a key-by-key match would."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_syntax.formats import flux_aitoolkit, flux_bfl, flux_diffusers, flux_kohya, flux_onetrainer, flux_xlabs
from lora_syntax.keymaps.detect import SIGNATURES, detect_architecture
from lora_syntax.keymaps.keyscan import any_key, joined

PATTERNS = [flux_aitoolkit.KEY_RE, flux_bfl.KEY_RE, flux_diffusers.TRANSFORMER_RE, flux_kohya.UNET_RE,
            flux_onetrainer.TRANSFORMER_RE, flux_xlabs.KEY_RE, re.compile(r"(^|[._])foo[._]\d+$"), re.compile(r"a\nb")]
PARTS = ["lora_unet_", "double_blocks", "single_blocks", "transformer.", "transformer_blocks", "single_transformer_blocks",
         ".", "_", "0", "12", "attn", ".lora_A.weight", ".alpha", "foo", "\n", "diffusion_model.", "processor.",
         "qkv_lora1.down.weight", "lora_transformer_", "img_in.", "a", "b"]
KEYS = st.lists(st.lists(st.sampled_from(PARTS), max_size=8).map("".join), max_size=12)


@settings(max_examples=300, deadline=None)
@given(keys=KEYS)
def test_any_key_equals_a_key_by_key_match(keys: list[str]) -> None:
    text = joined(keys)
    for pattern in PATTERNS:
        for anchored in (True, False):
            test = pattern.match if anchored else pattern.search
            assert any_key(pattern, keys, text, anchored=anchored) == any(test(k) for k in keys), (pattern, keys)


@settings(max_examples=300, deadline=None)
@given(keys=KEYS)
def test_signature_needles_never_hide_a_match(keys: list[str]) -> None:
    """Every key a signature's pattern finds holds one of its needles, so the substring shortcut is exact."""
    for signature in SIGNATURES:
        for key in keys:
            if signature.needles and re.search(signature.pattern, key):
                assert any(needle in key for needle in signature.needles), (signature, key)


def test_detection_through_the_shortcuts() -> None:
    shape = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)}
    assert detect_architecture(shape) == "flux"
    assert detect_architecture({"lora_unet_label_emb_0_0.lora_down.weight": (4, 2816)}) == "sdxl"
    assert detect_architecture({"transformer_blocks.3.attn.add_k_proj.lora_A.weight": (4, 3072)}) == "flux"
    assert detect_architecture({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
                                (4, 768)}) == "sd15"
