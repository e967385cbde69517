"""``inspect FILE``: what a LoRA file is, and how many of its keys map onto an architecture's modules.

The keys are mapped against a module tree of names and weight shapes: the architecture's reference model
(its published config on the ``meta`` device, disk-cached), or the model in ``--model DIR`` (its configs
only), which is also chosen for files whose ``ss_sd_model_name`` names the built-in demo model. No model
weights are read. Exit status: 0 when every key maps, 1 when some keys do not, their shapes do not fit
(or no architecture could be chosen), 2 for a file that cannot be used or the wrong ``--arch``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import ArchitectureMismatchError, LoraError, LoraFileError, LoraShapeError

HELP = "Show a LoRA file's format, architecture, rank, trigger words and which keys map onto the model."
ARCHITECTURES = ("sd15", "sd2", "sdxl", "flux")
DISPLAY = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "flux": "FLUX.1"}
_LONG_VALUE = 120  # metadata values longer than this are summarised by their length
_TEXT_METADATA = 25  # metadata keys listed in text output
REFUSED_FORMATS = ("cloneofsimo", "unknown")  # no model can take these: the report is kept short


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a .safetensors LoRA file")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=None,
                        help="map against this architecture instead of the detected one")
    parser.add_argument("--model", type=Path, default=None, metavar="DIR",
                        help="a diffusers model folder to map against instead of the architecture's reference "
                             "model: for LoRAs made for a custom, pruned or resized model (the demo model is "
                             "used for files made for it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def display(architecture: str | None) -> str:
    return DISPLAY.get(architecture or "", architecture or "unknown")


def with_article(architecture: str) -> str:
    """"an SDXL", "a FLUX.1": SD is read letter by letter."""
    shown = display(architecture)
    return f"{'an' if shown.startswith('SD') else 'a'} {shown}"


def reference_tree(architecture: str) -> Any:
    """The architecture's full-size module tree on the ``meta`` device (formats area)."""
    for module_name in ("lora_syntax.keymaps.reference", "lora_syntax.keymaps.tree"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "reference_tree"):
            return module.reference_tree(architecture)
    raise ImportError("lora_syntax.keymaps.reference.reference_tree is not available")


def choose_architecture(path: Path, detected: str | None, requested: str | None) -> str | None:
    """``--arch`` when given and compatible with what the file says; else the detected one."""
    if requested and detected and requested != detected:
        raise ArchitectureMismatchError(
            f"LoRA file '{path}' is {with_article(detected)} LoRA; --arch {requested} ({display(requested)}) "
            f"does not fit it. Use --arch {detected}, or leave --arch out.",
            path=path, lora_architecture=detected, model_architecture=requested)
    return requested or detected


def demo_model_for(metadata: dict[str, str]) -> Path | None:
    """The built-in demo model's folder when the file says it was trained on it (``ss_sd_model_name``)."""
    from .. import demo

    if metadata.get("ss_sd_model_name") == demo.DEMO_MODEL_NAME and (demo.MODEL_DIR / "model_index.json").is_file():
        return demo.MODEL_DIR
    return None


def map_keys(path: Path, architecture: str, key_count: int, *, model_dir: Path | None = None,
             against: str = "") -> dict[str, Any]:
    """Load the file against the reference tree of ``architecture`` (or the model in ``model_dir``):
    matched/unmatched keys and the loader's own findings; shapes that do not fit are counted, not raised."""
    try:
        loader = importlib.import_module("lora_syntax.loader")
        if model_dir is not None:
            from ..keymaps.build import tree_from_model_dir

            tree = tree_from_model_dir(model_dir)  # the folder's own family: a LoRA of another is refused by name
            if tree.architecture != architecture:
                raise ArchitectureMismatchError(
                    f"LoRA file '{path}' is {with_article(architecture)} LoRA; the model in '{model_dir}' is "
                    f"{display(tree.architecture)}. Pass {with_article(architecture)} model with --model, or leave "
                    "--model out.", path=path, lora_architecture=architecture, model_architecture=tree.architecture)
        else:
            tree = reference_tree(architecture)
    except ImportError as error:
        return {"matched": None, "unmatched": [], "mapping_error": f"key mapping unavailable: {error}"}
    try:
        loaded = loader.load_lora(path, tree, name=path.stem)
    except LoraShapeError:
        return misfit_report(loader.shape_fit(path, tree, name=path.stem), against, model_dir is None)
    for text in getattr(loaded, "warnings", ()):   # collected by report_with_warnings
        warnings.warn(text, stacklevel=2)
    unmatched = sorted(loaded.unmatched)
    mapped = {key for patch in loaded.patches for key in patch.source_keys}
    return {"matched": len(mapped) if mapped else key_count - len(unmatched), "unmatched": unmatched,
            "modules": len({patch.target for patch in loaded.patches}), "format": loaded.format,
            "adapter_types": sorted(loaded.adapter_types), "mapping_error": None}


def misfit_report(fit: Any, against: str, reference: bool) -> dict[str, Any]:
    """One line for a file whose keys name the model's modules but whose shapes differ, with the counts."""
    first = fit.misfits[0]
    hint = (" It was made for a model of another size (custom, pruned or resized): pass --model DIR to "
            "inspect it against that model." if reference else " The LoRA was made for another model.")
    line = (f"shapes do not match {against}: {fit.named_keys} of {fit.keys} keys name its modules, but "
            f"{len(fit.misfits)} of those {fit.modules} modules have other shapes (first: {first.target}, "
            f"model {first.model_shape}, file {first.file_shapes}).{hint}")
    return {"matched": fit.named_keys, "modules": fit.modules, "misfit_modules": len(fit.misfits),
            "unmatched": sorted(fit.unmatched), "format": fit.format, "mapping_error": line}


def summarise(metadata: dict[str, str]) -> dict[str, str]:
    """Metadata for display: long values (thumbnails, tag frequencies) replaced by their size."""
    return {key: value if len(value) <= _LONG_VALUE else f"<{len(value)} characters>"
            for key, value in sorted(metadata.items())}


def no_architecture(file_format: str) -> str:
    """Why no mapping was tried; ``--arch`` is suggested only where it can help."""
    if file_format == "unknown":
        return ("no known LoRA key layout (kohya, LyCORIS, diffusers/PEFT, the FLUX.1 dialects) matches its keys, "
                "so neither its format nor its architecture is known; is it a LoRA file?")
    if file_format == "cloneofsimo":
        return ("a cloneofsimo/lora legacy file: its keys are module positions, not names, so it cannot be mapped "
                "onto any model (no --arch helps); convert it with cloneofsimo's tools or use another LoRA")
    return "architecture not detected from keys or metadata; pass --arch sd15|sd2|sdxl|flux"


def tensor_problem(path: Path) -> str:
    """``"; <why>"`` when a tensor of the file is unusable (NaN/inf, unreadable), else ``""``. Mapping reads
    every tensor and says it; without an architecture nothing else would, and a broken file would pass."""
    from ..io import load_state_dict

    try:
        load_state_dict(path)
    except LoraFileError as error:
        return f"; and {error}"
    return ""


def report(path: Path, requested: str | None, model_dir: Path | None = None) -> dict[str, Any]:
    """Everything ``inspect`` shows, as one JSON-ready dict."""
    from ..io import read_header
    from ..metadata import read_info, top_tags

    header = read_header(path)
    if not header.shapes:  # otherwise reported as "architecture not detected", which sends users to --arch
        raise LoraFileError(f"LoRA file '{path}' holds no tensors: it is empty or was saved incompletely; "
                            "download or export it again.", path=path)
    info = read_info(path, header=header)
    architecture = choose_architecture(path, info.architecture, requested)
    demo_dir = None if model_dir else demo_model_for(info.metadata)
    model_dir = model_dir or demo_dir
    result: dict[str, Any] = {
        "file": str(path), "size": path.stat().st_size, "tensors": len(header.shapes),
        "architecture": architecture, "detected_architecture": info.architecture, "format": info.format,
        "adapter_types": list(info.adapter_types), "rank": info.rank, "alpha": info.alpha,
        "trainer": info.trainer, "base_model": info.base_model, "trigger_words": list(info.trigger_words),
        "trigger_source": info.trigger_source or None,
        "dataset_tags": {tag: info.tag_frequency[tag] for tag in top_tags(info.tag_frequency)},
        "preferred_weight": info.preferred_weight, "negative_text": info.negative_text, "notes": info.notes,
        "preview": str(info.preview) if info.preview else None, "metadata": summarise(info.metadata),
        "matched": None, "modules": None, "unmatched": [], "mapping_error": None,
        "refused": architecture is None and info.format in REFUSED_FORMATS,
        "mapped_against": None}
    if architecture is None:
        result["mapping_error"] = f"{no_architecture(info.format)}{tensor_problem(path)}"
        return result
    against = ("the demo model (named by the file's ss_sd_model_name)" if demo_dir is not None
               else f"the model in '{model_dir}'" if model_dir is not None else f"the reference {display(architecture)}")
    result["mapped_against"] = against
    try:
        mapping = map_keys(path, architecture, len(header.shapes), model_dir=model_dir, against=against)
    except ArchitectureMismatchError:
        raise
    except LoraFileError as error:
        mapping = {"mapping_error": str(error)}
    result.update({key: value for key, value in mapping.items() if value is not None or key == "mapping_error"})
    return result


def _text(result: dict[str, Any]) -> str:
    arch = result["architecture"]
    detected = result["detected_architecture"]
    arch_note = "detected" if arch == detected else f"from --arch; detected {display(detected)}"
    rows = [
        ("file", f"{result['file']} ({result['size'] / 1e6:.1f} MB, {result['tensors']} tensors)"),
        ("format", result["format"]), ("adapter types", ", ".join(result["adapter_types"]) or "none found"),
        ("architecture", f"{display(arch)} ({arch_note})" if arch else "unknown"),
        ("rank / alpha", f"{result['rank'] if result['rank'] is not None else '?'} / "
                         f"{result['alpha'] if result['alpha'] is not None else '?'}"),
        ("trainer", result["trainer"] or "unknown"), ("base model", result["base_model"] or "unknown"),
        ("trigger words", (f"{', '.join(result['trigger_words'])} (from {result['trigger_source']})"
                           if result["trigger_words"] else "none")),
        ("dataset tags", ", ".join(f"{tag} {count}" for tag, count in result["dataset_tags"].items()) or "none"),
        ("preferred weight", result["preferred_weight"] if result["preferred_weight"] is not None else "not set"),
        ("preview", result["preview"] or "none"),
    ]
    lines = [f"{label + ':':<18}{value}" for label, value in rows]
    if result.get("refused"):  # nothing more helps the user: the reason, once, and no metadata listing
        lines.append(f"{'metadata:':<18}{len(result['metadata'])} keys (see --json)")
        lines.append(f"{'refused:':<18}{result['mapping_error']}")
        return "\n".join(lines)
    lines.append(f"{'metadata:':<18}{len(result['metadata'])} keys")
    shown = list(result["metadata"].items())
    lines += [f"  {key} = {value}" for key, value in shown[:_TEXT_METADATA]]
    if len(shown) > _TEXT_METADATA:
        lines.append(f"  ... {len(shown) - _TEXT_METADATA} more (see --json)")
    if result["mapping_error"]:
        lines.append(f"{'mapping:':<18}{result['mapping_error']}")
    else:
        lines.append(f"{'mapping:':<18}{result['matched']} of {result['tensors']} keys map onto "
                     f"{result['modules']} modules of {result['mapped_against']}; "
                     f"{len(result['unmatched'])} unmatched")
        lines += [f"  unmatched: {key}" for key in result["unmatched"]]
    return "\n".join(lines)


def report_with_warnings(path: Path, requested: str | None, model_dir: Path | None = None) -> dict[str, Any]:
    """:func:`report` with its warnings (malformed sidecars, metadata) collected under ``"warnings"``,
    each naming the file, instead of Python's warning lines that quote our source code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = report(path, requested, model_dir)
    texts = [str(warning.message) for warning in caught]
    result["warnings"] = list(dict.fromkeys(text if str(path) in text else f"{text} (in '{path}')"
                                            for text in texts))
    return result


def run(args: argparse.Namespace) -> int:
    model_dir = getattr(args, "model", None)
    if model_dir is not None and not (Path(model_dir) / "model_index.json").is_file():
        raise LoraError(f"--model '{model_dir}' is not a diffusers model folder (it has no model_index.json).")
    result = report_with_warnings(Path(args.file), args.arch, model_dir)
    for text in result["warnings"]:
        print(f"warning: {text}", file=sys.stderr)
    # the mapping problem is part of the report (printed once, in it); the exit status says it failed
    print(json.dumps(result, indent=2) if args.json else _text(result))
    return 1 if result["mapping_error"] or result["unmatched"] else 0
