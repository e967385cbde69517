"""What a LoRA file says about itself: architecture, rank/alpha, trainer, trigger words, preview.

Trigger words come from the first of these sources that has any (:data:`TRIGGER_SOURCES`): the user's
A1111 "activation text" (``NAME.json``) > the publisher's words: Civitai ``NAME.civitai.info`` ``trainedWords``,
``NAME.json`` ``trainedWords``, the file's ``modelspec.trigger_phrase`` > kohya dataset folder names from
``ss_tag_frequency`` (``10_zxc`` -> ``zxc``), except a folder named like the LoRA itself (file name or
``ss_output_name``) or a bare repeat count: those name the data set, not a word the LoRA learned > none.
Caption tags in ``ss_tag_frequency`` are *dataset tags* (``LoraInfo.tag_frequency``), never trigger words.
Sidecars that are not valid JSON are ignored with a warning.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LoraFileError
from .io import INVALID, Roots, SafetensorsHeader, is_inside, parse_json, read_header, read_tensors

PREVIEW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
TOP_CAPTION_TAGS = 10  # the most frequent dataset tags, where a summary is shown
TRIGGER_SOURCES = ("activation text", "Civitai trainedWords", "NAME.json trainedWords", "trigger phrase",
                   "dataset folder name")
A1111_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
_SHORT_TEXT = 80   # characters of an unreadable metadata value shown as is
# A1111's "Preferred weight" slider runs from 0 to 2; 0 means "not set" (the weight in the tag is then 1).
PREFERRED_WEIGHT_RANGE = (0.0, 2.0)
_REPEAT_PREFIX = re.compile(r"^\d+_")
_ARCH_HINTS = (("flux", "flux"), ("xl", "sdxl"), ("sd_v2", "sd2"), ("v2", "sd2"), ("sd2", "sd2"),
               ("sd_v1", "sd15"), ("v1", "sd15"), ("sd1", "sd15"))


@dataclass(frozen=True)
class LoraInfo:
    """Facts about one LoRA file, from its header, its metadata and its sidecar files."""

    path: Path
    architecture: str | None = None
    format: str = "unknown"
    adapter_types: tuple[str, ...] = ()
    rank: int | None = None
    alpha: float | None = None
    trainer: str | None = None
    base_model: str | None = None
    trigger_words: tuple[str, ...] = ()
    trigger_source: str = ""      # which of TRIGGER_SOURCES the words came from; "" when there are none
    preferred_weight: float | None = None
    negative_text: str = ""
    notes: str = ""
    activation_text: str = ""
    description: str = ""
    sd_version: str = ""
    preview: Path | None = None
    tag_frequency: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    tensor_count: int = 0
    touches: tuple[str, ...] | None = None  # "te"/"unet": what the keys are for (formats.touches); None: unknown


def sidecar(path: Path, suffix: str) -> Path:
    """``styles/ink.safetensors`` + ``.civitai.info`` -> ``styles/ink.civitai.info``."""
    return path.with_name(path.stem + suffix)


def read_json_sidecar(path: Path, roots: Roots = None) -> dict[str, Any]:
    """A sidecar's JSON object; ``{}`` when absent, with a warning when malformed or (``roots`` given)
    when it leads outside the LoRA folders."""
    if roots is not None and os.path.lexists(path) and not is_inside(path, roots):
        warnings.warn(f"ignoring LoRA sidecar '{path}': it leads outside the LoRA folders", stacklevel=2)
        return {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        warnings.warn(f"ignoring unreadable LoRA sidecar '{path}': {error}", stacklevel=2)
        return {}
    data = parse_json(text, what=f"LoRA sidecar '{path}'")
    if data is INVALID:
        return {}
    if not isinstance(data, dict):
        warnings.warn(f"ignoring LoRA sidecar '{path}': expected a JSON object", stacklevel=2)
        return {}
    return data


def split_words(text: object) -> list[str]:
    """Comma-separated phrases of a trigger text (or list of texts), stripped, empties dropped."""
    items = text if isinstance(text, (list, tuple)) else [text]
    return [word.strip() for item in items if isinstance(item, str) for word in item.split(",") if word.strip()]


def dedupe(words: Iterable[str]) -> tuple[str, ...]:
    """First occurrence wins; comparison ignores case and surrounding space."""
    seen: set[str] = set()
    kept = []
    for word in words:
        key = word.strip().casefold()
        if key and key not in seen:
            seen.add(key)
            kept.append(word.strip())
    return tuple(kept)


def parse_tag_frequency(raw: str | None, source: str = "the file") -> tuple[list[str], dict[str, int]]:
    """``ss_tag_frequency`` -> (dataset folder names without ``N_``, caption tag -> total count)."""
    if not raw:
        return [], {}
    data = parse_json(raw, what=f"the ss_tag_frequency metadata of {source}")
    if not isinstance(data, dict):
        return [], {}
    folders, counts = [], Counter()
    for folder, tags in data.items():
        name = _REPEAT_PREFIX.sub("", str(folder)).strip()
        if name:
            folders.append(name)
        if isinstance(tags, dict):
            for tag, count in tags.items():
                number = _float(count) if isinstance(count, (int, float)) else None  # NaN/Infinity are JSON too
                if number is not None and str(tag).strip():
                    counts[str(tag).strip()] += int(number)
    return folders, dict(counts)


def top_tags(counts: Mapping[str, int], limit: int = TOP_CAPTION_TAGS) -> list[str]:
    """Most frequent tags first, ties by name so the order is stable."""
    return [tag for tag, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]


def find_preview(path: Path, roots: Roots = None) -> Path | None:
    """``NAME.preview.png``, ``NAME.png``, then the same for jpg, jpeg and webp; one leading outside
    ``roots`` (a symlink out of the LoRA folders) is skipped with a warning."""
    for extension in PREVIEW_EXTENSIONS:
        for candidate in (sidecar(path, ".preview" + extension), sidecar(path, extension)):
            if candidate.is_file():
                if roots is not None and not is_inside(candidate, roots):
                    warnings.warn(f"ignoring preview '{candidate}': it leads outside the LoRA folders",
                                  stacklevel=2)
                    continue
                return candidate
    return None


def decode_data_url(url: str) -> tuple[bytes, str] | None:
    """``data:image/png;base64,...`` -> (bytes, ".png"); ``None`` when not a base64 image data URL."""
    match = re.match(r"^data:image/([a-zA-Z0-9.+-]+);base64,(.*)$", url.strip(), re.DOTALL)
    if not match:
        return None
    try:
        data = base64.b64decode(match.group(2), validate=False)
    except (binascii.Error, ValueError):
        return None
    extension = {"jpeg": ".jpg", "svg+xml": ".svg"}.get(match.group(1).lower(), "." + match.group(1).lower())
    return (data, extension) if data else None


def thumbnail_file(url: str, cache_dir: Path | None = None) -> Path | None:
    """Write a ``modelspec.thumbnail`` data URL to a content-named cache file and return its path."""
    decoded = decode_data_url(url)
    if decoded is None:
        return None
    data, extension = decoded
    folder = cache_dir or Path(tempfile.gettempdir()) / "lora-syntax-thumbnails"
    target = folder / (hashlib.sha256(data).hexdigest()[:32] + extension)
    if not target.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, data)
        except OSError as error:
            warnings.warn(f"cannot cache LoRA thumbnail in '{folder}': {error}", stacklevel=2)
            return None
    return target


def detect_format(keys: Iterable[str]) -> str:
    """The key dialect the loader would pick (:func:`lora_syntax.formats.pick_dialect`), from names alone."""
    keys = list(keys)
    try:
        from .formats import pick_dialect
    except ImportError:
        return guess_format(keys)
    try:
        return pick_dialect(keys).name
    except LoraFileError:
        return "unknown"


def touched_kinds(keys: Iterable[str]) -> tuple[str, ...] | None:
    """``("te",)``, ``("unet",)`` or both: what the file's keys are for, by name (:mod:`lora_syntax.formats.touches`)."""
    try:
        from .formats.touches import touched_kinds as from_names
    except ImportError:
        return None
    return from_names(keys)


def guess_format(keys: Iterable[str]) -> str:
    """A rough dialect guess from key names, used when the formats package is unavailable."""
    keys = list(keys)

    def share(test) -> float:
        return sum(1 for key in keys if test(key)) / max(len(keys), 1)

    rules = (
        ("cloneofsimo", lambda k: re.match(r"^(unet|text_encoder):\d+:(up|down)$", k) is not None),
        ("flux-xlabs", lambda k: k.startswith(("double_blocks.", "single_blocks.")) and "_lora" in k),
        ("kohya", lambda k: k.startswith(("lora_unet_", "lora_te", "lora_transformer_", "lycoris_"))),
        ("peft", lambda k: ".lora_A." in k or ".lora_B." in k or k.endswith(("lora_A.weight", "lora_B.weight"))),
        ("diffusers-legacy", lambda k: "_lora.down." in k or "_lora.up." in k or ".lora.down." in k
         or ".lora.up." in k or ".lora_linear_layer." in k),
    )
    best = max(rules, key=lambda rule: share(rule[1]))
    return best[0] if share(best[1]) > 0 else "unknown"


_ADAPTER_SIGNATURES = (
    ("loha", ("hada_w1_a",)), ("lokr", ("lokr_w1", "lokr_w1_a")), ("dora", ("dora_scale",)),
    ("full", (".diff",)), ("norm", ("w_norm",)), ("glora", (".a1.weight",)), ("oft", ("oft_blocks", "oft_diag")),
    ("boft", ("boft_",)), ("lora", ("lora_down", "lora_up", "lora_A", "lora_B", ".down.weight",
                                    "_lora.down", "lora1.down", ":down")),
)


def guess_adapter_types(keys: Iterable[str]) -> tuple[str, ...]:
    """Adapter types whose parameter names occur among ``keys`` (``(IA)^3``'s lone ``weight`` included)."""
    found = set()
    for key in keys:
        for kind, markers in _ADAPTER_SIGNATURES:
            if any(marker in key for marker in markers):
                found.add(kind)
                break
        else:
            if key.endswith(".on_input") or (key.startswith("lora_") and key.endswith(".weight")
                                              and key.count(".") == 1):
                found.add("ia3")
    return tuple(sorted(found))


def guess_rank(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The most common rank among down/A matrices."""
    ranks = Counter(shape[0] for key, shape in shapes.items()
                    if shape and ("lora_down" in key or "lora_A" in key or key.endswith((".down.weight", ":down"))))
    return ranks.most_common(1)[0][0] if ranks else None


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def guess_alpha(path: Path, header: SafetensorsHeader, roots: Roots = None) -> float | None:
    """``ss_network_alpha``, else the most common ``alpha`` tensor value (scalars read lazily)."""
    alpha = _float(header.metadata.get("ss_network_alpha"))
    if alpha is not None:
        return alpha
    keys = [key for key, shape in header.shapes.items() if key.endswith("alpha") and len(shape) <= 1][:4096]
    if not keys:
        return None
    try:
        found = (_float(t.float().reshape(-1)[0]) for t in read_tensors(path, keys, roots=roots).values() if t.numel())
        values = Counter(round(value, 6) for value in found if value is not None)
    except LoraFileError:
        return None
    return values.most_common(1)[0][0] if values else None


def guess_trainer(metadata: Mapping[str, str], source: str = "the file") -> str | None:
    """Which tool wrote the file, from the metadata it leaves behind."""
    software = metadata.get("software")
    if software:
        if not software.lstrip().startswith(("{", "[")):
            return software   # a plain name, not JSON
        parsed = parse_json(software, what=f"the software metadata of {source}")
        if isinstance(parsed, dict) and parsed.get("name"):
            return str(parsed["name"])
        if parsed is INVALID:
            return software[:_SHORT_TEXT]
    if any(key.startswith("ss_") for key in metadata):
        return "kohya-ss/sd-scripts"
    if "ot_branch" in metadata or "ot_revision" in metadata:
        return "OneTrainer"
    return None


def architecture_from_metadata(metadata: Mapping[str, str], sd_version: str = "") -> str | None:
    """``ss_base_model_version``, ``modelspec.architecture`` or the A1111 "sd version" as an arch name."""
    if metadata.get("ss_v2", "").lower() == "true":
        return "sd2"
    for hint in (metadata.get("ss_base_model_version"), metadata.get("modelspec.architecture"), sd_version):
        text = (hint or "").lower().replace("-", "_").replace(" ", "_")
        if not text or text == "unknown":
            continue
        text = text.replace("stable_diffusion_", "sd_").replace("xl_v1", "xl")
        for marker, arch in _ARCH_HINTS:
            if marker in text:
                return arch
    return None


def detect(header: SafetensorsHeader, sd_version: str = "") -> str | None:
    """Architecture from keys and shapes (the formats area's detector), metadata as the fallback."""
    try:
        from .keymaps.detect import detect_architecture
    except ImportError:
        detect_architecture = None
    if detect_architecture is not None:
        try:
            found = detect_architecture(header.shapes, header.metadata)
        except LoraFileError:
            found = None
        if found:
            return found
    return architecture_from_metadata(header.metadata, sd_version)


def _user_texts(user: Mapping[str, Any]) -> dict[str, Any]:
    def text(key: str) -> str:
        value = user.get(key)
        return value.strip() if isinstance(value, str) else ""

    weight = _float(user.get("preferred weight"))
    return {"activation_text": text("activation text"), "negative_text": text("negative text"),
            "notes": text("notes"), "description": text("description"), "sd_version": text("sd version"),
            "preferred_weight": weight if weight else None}  # A1111 stores 0 for "not set"


def _plain_name(text: str) -> str:
    """``My_Style-v2`` and ``my style v2`` compare equal: case, ``_``, ``-`` and spaces ignored."""
    return re.sub(r"[\s_\-]+", " ", text).strip().casefold()


def trigger_words(path: Path, header: SafetensorsHeader, user: Mapping[str, Any],
                  tag_folders: list[str], roots: Roots = None) -> tuple[tuple[str, ...], str]:
    """(words, source): the words of the first source in :data:`TRIGGER_SOURCES` that has any, deduplicated
    (see the module docstring); ``((), "")`` when none does."""
    civitai = read_json_sidecar(sidecar(path, ".civitai.info"), roots)
    own = {_plain_name(path.stem), _plain_name(str(header.metadata.get("ss_output_name") or ""))}
    folders = [name for name in tag_folders if _plain_name(name) not in own and not name.strip().isdigit()]
    found = zip(TRIGGER_SOURCES, (split_words(user.get("activation text")), split_words(civitai.get("trainedWords")),
                                  split_words(user.get("trainedWords")),
                                  split_words(header.metadata.get("modelspec.trigger_phrase")), folders))
    return next(((dedupe(words), source) for source, words in found if words), ((), ""))


def read_info(path: str | Path, *, header: SafetensorsHeader | None = None,
              thumbnail_dir: Path | None = None, roots: Roots = None) -> LoraInfo:
    """Everything :class:`LoraInfo` holds for one safetensors file: its header, its sidecars and its
    ``alpha`` scalars; no weight tensor is loaded. With ``roots`` (the LoRA folders) every file read
    must lie inside them when it is read (a file swapped for a symlink out of them is refused)."""
    path = Path(path)
    header = header or read_header(path, roots=roots)
    user = read_json_sidecar(sidecar(path, ".json"), roots)
    texts = _user_texts(user)
    tag_folders, tag_counts = parse_tag_frequency(header.metadata.get("ss_tag_frequency"), f"'{path}'")
    words, source = trigger_words(path, header, user, tag_folders, roots)
    preview = find_preview(path, roots)
    if preview is None and header.metadata.get("modelspec.thumbnail"):
        preview = thumbnail_file(header.metadata["modelspec.thumbnail"], thumbnail_dir)
    base_model = (header.metadata.get("ss_sd_model_name") or header.metadata.get("modelspec.architecture")
                  or header.metadata.get("ss_base_model_version") or None)
    return LoraInfo(
        path=path, architecture=detect(header, texts["sd_version"]), format=detect_format(header.shapes),
        adapter_types=guess_adapter_types(header.shapes), rank=guess_rank(header.shapes),
        alpha=guess_alpha(path, header, roots), trainer=guess_trainer(header.metadata, f"'{path}'"),
        base_model=base_model, trigger_words=words, trigger_source=source, preview=preview,
        tag_frequency=tag_counts, metadata=dict(header.metadata), tensor_count=len(header.shapes),
        touches=touched_kinds(header.shapes), **texts)


def _atomic_write(target: Path, data: bytes) -> None:
    """Write to a temporary file beside ``target``, then rename over it: readers never see half a file."""
    handle, temp = tempfile.mkstemp(prefix="." + target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@functools.lru_cache(maxsize=1024)
def _addnet_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hash(path: str | Path, metadata: Mapping[str, str] | None = None) -> str:
    """The hash A1111 shows for a LoRA: the file's ``sshs_model_hash`` when it is a well-formed sha256 (kohya
    writes it), else the sha256 of the tensor data after the safetensors header ("addnet" hash), so editing
    metadata does not change it. Cached per file size and mtime."""
    path = Path(path)
    given = str((metadata or {}).get("sshs_model_hash", "")).strip().lower()
    if _HEX64.match(given):
        return given
    stat = path.stat()
    return _addnet_hash(str(path), stat.st_size, stat.st_mtime_ns)


def short_hash(path: str | Path, metadata: Mapping[str, str] | None = None) -> str:
    """The first 12 hex digits of :func:`model_hash`: what A1111 writes in ``Lora hashes`` and looks LoRAs up by."""
    if metadata is None:
        metadata = read_header(path).metadata
    return model_hash(path, metadata)[:12]


def parse_preferred_weight(value: str | float | int | None) -> float:
    """A preferred weight typed by a user, checked: a finite number in :data:`PREFERRED_WEIGHT_RANGE`
    (empty = 0 = unset). Raises :class:`ValueError` with a message for the user otherwise."""
    low, high = PREFERRED_WEIGHT_RANGE
    text = "" if value is None else str(value).strip()
    try:
        weight = float(text) if text else 0.0
    except ValueError:
        weight = math.nan
    if isinstance(value, bool) or not (math.isfinite(weight) and low <= weight <= high):
        raise ValueError(f"preferred weight must be a number from {low:g} to {high:g} (0 or empty = not set, "
                         f"as in A1111), not {text!r}; nothing was saved.")
    return weight


def save_user_metadata(lora_path: str | Path, *, activation_text: str | None = None,
                       preferred_weight: float | None = None, negative_text: str | None = None,
                       notes: str | None = None, description: str | None = None,
                       sd_version: str | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Create or update the A1111 sidecar ``NAME.json``; arguments left ``None`` keep their stored value,
    and keys this function does not know are kept. Returns the sidecar's path."""
    lora_path = Path(lora_path)
    if preferred_weight is not None:
        preferred_weight = parse_preferred_weight(preferred_weight)
    target = sidecar(lora_path, ".json")
    data: dict[str, Any] = {}
    if target.exists():
        try:
            text = target.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise LoraFileError(f"cannot update '{target}': it cannot be read ({error}); fix or delete it "
                                "first, so its contents are not lost.", path=target) from error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the error below says it
            data = parse_json(text, what=f"'{target}'")
        if data is INVALID:
            raise LoraFileError(f"cannot update '{target}': it is not valid JSON (or nested too deeply to "
                                "read); fix or delete it first, so its contents are not lost.", path=target)
        if not isinstance(data, dict):
            raise LoraFileError(f"cannot update '{target}': it holds no JSON object; fix or delete it.",
                                path=target)
    updates = {"activation text": activation_text, "preferred weight": preferred_weight,
               "negative text": negative_text, "notes": notes, "description": description,
               "sd version": sd_version}
    data.update({key: value for key, value in updates.items() if value is not None})
    data.update(extra or {})
    try:
        text = json.dumps(data, indent=4, ensure_ascii=False) + "\n"
    except (RecursionError, ValueError, TypeError) as error:
        raise LoraFileError(f"cannot update '{target}': a value is nested too deeply or is not JSON "
                            f"({type(error).__name__}); fix or delete the file first.", path=target) from error
    try:
        _atomic_write(target, text.encode("utf-8"))
    except OSError as error:
        raise LoraFileError(f"cannot write '{target}': {error}", path=target) from error
    return target
