"""Tiny real diffusers pipelines with random weights, built offline from small configs.

They have the real module layout of SD1.5, SDXL and FLUX.1 pipelines (same class names, same module
paths, same block structure) at a few channels wide, so tests can load LoRAs with diffusers itself,
patch them and run ``pipe(prompt, num_inference_steps=2)`` on a CPU in about a second.

Pipelines are memoised per ``(arch, seed)``; :func:`tiny_pipeline` hands back a deep copy, so a test
may patch or move it freely. Trees of these models must be labelled with the architecture explicitly
(``tree_from_pipeline(pipe, "sd15")``): the tiny UNet's widths say nothing about the family.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

ARCHITECTURES = ("sd15", "sdxl", "flux")

# Words the tiny tokenizers know as whole tokens; other text falls back to single characters.
DEFAULT_WORDS = ("a", "photo", "of", "cat", "dog", "in", "the", "style", "ink", "wash", "painting",
                 "red", "blue", "house", "tree", "portrait", "landscape", "with", "and")

CLIP_HIDDEN = 32
T5_HIDDEN = 32


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: the printable stand-in for each of the 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_clip_tokenizer(words: Sequence[str] = DEFAULT_WORDS, model_max_length: int = 77):
    """A CLIP BPE tokenizer whose vocabulary is the byte alphabet plus ``words`` as whole tokens.

    Written to a temporary folder as ``vocab.json``/``merges.txt`` and loaded with
    ``CLIPTokenizer.from_pretrained``, so no hub access is needed.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    for char in _byte_alphabet():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[str] = []
    for word in dict.fromkeys(w.lower() for w in words if w):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            current = current + piece
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(current, len(vocab))
    folder = Path(tempfile.mkdtemp(prefix="lora_syntax_clip_tok_"))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)


def build_t5_tokenizer(words: Sequence[str] = DEFAULT_WORDS, model_max_length: int = 512):
    """A word-level fast tokenizer standing in for T5's (``<pad>``=0, ``</s>``=1, ``<unk>``=2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=model_max_length)


def _clip_config(tokenizer, *, projection: bool = False):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_HIDDEN, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act="gelu" if projection else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=CLIP_HIDDEN)


def tiny_unet(arch: str = "sd15"):
    """An SD1.5-like (``"sd15"``) or SDXL-like (``"sdxl"``) UNet2DConditionModel, a few channels wide.

    Layouts mirror the real ones: SD1.5 has cross-attention down blocks then a plain last one,
    layers_per_block 2; SDXL a plain first block, ``transformer_layers_per_block`` > 1 and the
    ``text_time`` added embedding.
    """
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
                  norm_num_groups=8)
    if arch == "sd15":
        return UNet2DConditionModel(**common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=CLIP_HIDDEN, attention_head_dim=8)
    if arch == "sdxl":
        return UNet2DConditionModel(**common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=2 * CLIP_HIDDEN, attention_head_dim=(2, 4),
                                    use_linear_projection=True, transformer_layers_per_block=(1, 2),
                                    addition_embed_type="text_time", addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=6 * 8 + CLIP_HIDDEN)
    raise ValueError(f"tiny_unet: unknown architecture {arch!r}; expected 'sd15' or 'sdxl'")


def tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    if latent_channels == 4:
        return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             layers_per_block=1, norm_num_groups=4, sample_size=32)
    return AutoencoderKL(block_out_channels=(4,), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         layers_per_block=1, norm_num_groups=1, sample_size=32, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def tiny_flux_transformer():
    """A FluxTransformer2DModel with 2 double and 2 single blocks, 32 wide."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_HIDDEN,
                                  pooled_projection_dim=CLIP_HIDDEN, axes_dims_rope=(4, 4, 8))


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _build_sd15():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = build_clip_tokenizer()
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(_clip_config(tokenizer)),
                                   tokenizer=tokenizer, unet=tiny_unet("sd15"), scheduler=_sd_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _build_sdxl():
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection=True)),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=tiny_unet("sdxl"), scheduler=_sd_scheduler(),
        force_zeros_for_empty_prompt=True)


def _build_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=T5_HIDDEN, d_kv=8, d_ff=37, num_layers=2,
                                 num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0, is_encoder_decoder=False))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(latent_channels=1),
                        text_encoder=CLIPTextModel(_clip_config(tokenizer, projection=True)), tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer_2, transformer=tiny_flux_transformer())


_BUILDERS = {"sd15": _build_sd15, "sdxl": _build_sdxl, "flux": _build_flux}


@functools.lru_cache(maxsize=8)
def _cached_pipeline(arch: str, seed: int):
    torch.manual_seed(seed)
    pipe = _BUILDERS[arch]()
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe


def tiny_pipeline(arch: str, seed: int = 0):
    """A fresh deep copy of the tiny ``arch`` pipeline (``"sd15"``, ``"sdxl"``, ``"flux"``) with weights from ``seed``.

    Run it with a small image, e.g. ``pipe("a cat", num_inference_steps=2, height=32, width=32,
    output_type="pt")`` (FLUX: also ``max_sequence_length=16``).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"tiny_pipeline: unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return copy.deepcopy(_cached_pipeline(arch, seed))
