"""Conventions every web-UI host shares (SD.Next, A1111, Forge), with no host code imported.

The host glue (``scripts/``) translates the host's objects into these plain values:

- the setting that hands ``<lora:…>`` tags to lora-syntax (off: the host's built-in LoRA handler);
- the ``LoRA weights`` infotext field, written as ``extension.py generate`` writes it, and its paste-back;
- tags in the negative prompt: removed (a LoRA cannot apply to one half of the guidance), with a warning;
- the JSON of our API routes: the LoRA library and the last generation's plan and engine report;
- the LoRA folders named by the host's command-line options.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..infotext import lora_summary, paste_tags  # noqa: F401  (the hosts' API)
from ..syntax import parse, strip_negative  # noqa: F401

SETTING_KEY = "lora_syntax_enabled"
SETTING_LABEL = ("Apply <lora:…> / <lyco:…> tags with lora-syntax (per-step weights, lbw, exact restore); "
                 "off: the built-in LoRA handler")
SETTING_SECTION = ("lora_syntax", "LoRA syntax")
INFOTEXT_FIELD = "LoRA weights"
ERRORS_FIELD = "LoRA errors"
TAG_KINDS = ("lora", "lyco")
ROUTE_PREFIX = "/lora-syntax/v1"


# -- infotext ------------------------------------------------------------------------------------
def infotext_fields(plan: Any, *, quoted: bool = True) -> dict[str, str]:
    """The fields we add to a generation's infotext: ``{"LoRA weights": "<json string>"}`` or nothing.

    ``quoted=False`` for hosts that quote values themselves (SD.Next quotes any value holding ``,`` or ``:``)."""
    if plan is None or not plan.loras:
        return {}
    summary = lora_summary(plan)
    return {INFOTEXT_FIELD: json.dumps(summary) if quoted else summary}


def short_error(message: str) -> str:
    """The first line of an error (the caret lines are for logs), for an infotext field."""
    return message.strip().splitlines()[0] if message.strip() else message


# -- prompts -------------------------------------------------------------------------------------
def strip_negatives(negatives: Sequence[str]) -> tuple[list[str], str | None]:
    """:func:`strip_negative` over a batch of negative prompts: the cleaned list and one warning."""
    cleaned, warned = [], None
    for negative in negatives:
        text, warning = strip_negative(negative)
        cleaned.append(text or "")
        warned = warned or warning
    return cleaned, warned


def tag_text(kind: str, items: Iterable[str]) -> str:
    """A tag rebuilt from the host's ``ExtraNetworkParams.items`` (the text between ``<kind:`` and ``>``
    split on ``:``), for our parser."""
    return f"<{kind}:{':'.join(str(item) for item in items)}>"


def network_text(network_data: Any) -> str:
    """The tags a host's extra-network parser found, as typed (SD.Next's and A1111's ``network_data``:
    ``{kind: [ExtraNetworkParams]}``)."""
    return " ".join(tag_text(kind, params.items) for kind in TAG_KINDS
                    for params in (network_data or {}).get(kind, []))


def start_good_tags(session: Any, text: str, steps: int) -> tuple[Any, list[str]]:
    """Start ``session``'s run for the tags of ``text`` that work, and say what is wrong with the others.

    A malformed tag, an unknown name, an unreadable file or a LoRA for another architecture is left out with
    a message naming it; the other tags still apply. Returns ``(run or None, messages)``."""
    from ..errors import LoraError
    from ..syntax.model import ParsedPrompt

    parsed = parse(text, on_error="skip")
    messages = [f"LoRA tag error: {error}" for error in parsed.errors]
    tags = []
    for tag in parsed.tags:
        try:
            session.library.resolve(tag.name)
        except LoraError as error:
            messages.append(f"{tag.text}: {error}")
        else:
            tags.append(tag)

    def stack(chosen: list) -> ParsedPrompt:
        return ParsedPrompt(parsed.prompt, tuple(chosen), (), parsed.source)

    if not tags:
        return None, messages
    try:
        return session.start(stack(tags), steps), messages
    except LoraError:   # find the tags that fail and go on without them
        good = []
        for tag in tags:
            try:
                session.start(stack([tag]), steps).end()
            except LoraError as error:
                messages.append(f"{tag.text}: {error}")
            else:
                good.append(tag)
        return (session.start(stack(good), steps) if good else None), messages


def add_error_field(fields: dict[str, Any], message: str) -> None:
    """Append ``message``'s first line to the ``LoRA errors`` infotext field (so API callers see it in ``info``)."""
    fields[ERRORS_FIELD] = "; ".join(filter(None, (fields.get(ERRORS_FIELD), short_error(message))))


def library_for(library: Any, folders: Sequence[Path]) -> Any:
    """``library`` when it reads ``folders`` already, else a new :class:`LoraLibrary` of them (the host's
    folder options can change between generations)."""
    from ..library import LoraLibrary

    folders = [Path(folder).absolute() for folder in folders]
    if library is None or list(library.folders) != folders:
        library = LoraLibrary(folders)
    return library


def error_messages(prompt: str) -> list[str]:
    """One line per malformed tag of ``prompt`` (the good tags still apply)."""
    return [f"LoRA tag error: {error}" for error in parse(prompt or "", on_error="skip").errors]


# -- API payloads --------------------------------------------------------------------------------
def library_payload(library: Any, architecture: str | None = None) -> list[dict[str, Any]]:
    """Our ``/loras`` route: every file of the library with its architecture and trigger words."""
    out = []
    for entry in library.entries():
        item: dict[str, Any] = {"name": entry.name, "path": str(entry.path), "aliases": list(entry.aliases),
                                "size": entry.size, "architecture": None, "trigger_words": [],
                                "preferred_weight": None, "compatible": None, "error": entry.refused}
        if not entry.refused:
            try:
                info = library.info(entry)
            except Exception as error:  # an unreadable file is listed with its reason, never breaks the list
                item["error"] = str(error)
            else:
                item.update(architecture=info.architecture, trigger_words=list(info.trigger_words),
                            preferred_weight=info.preferred_weight, format=info.format,
                            description=info.description)
                if architecture and info.architecture:
                    item["compatible"] = info.architecture == architecture
        out.append(item)
    return out


@dataclass
class RunRecord:
    """What our ``/last-run`` route reports about the last generation (filled in by the host glue)."""

    prompt: str = ""
    steps: list[int] = field(default_factory=list)          # step count of each pass
    plan: list[dict[str, Any]] = field(default_factory=list)
    change_points: list[int] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)    # RunTimings.as_dict()
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    status: str = "none"                                    # running, done, interrupted, failed, off
    started: float = field(default_factory=time.time)

    def run_started(self, run: Any) -> None:
        """Record the plan and change points of the run that started."""
        self.plan = plan_payload(run.plan)
        self.change_points = list(run.change_points)


def finish_record(record: RunRecord | None, run: Any, timings: Any, *, interrupted: bool = False,
                  skipped: bool = False) -> None:
    """Fill in what the run did once it ended (``run``/``timings`` None when no run started)."""
    if record is None:
        return
    if run is not None:
        record.engine = timings.as_dict()
        record.steps = list(run.passes)
        record.warnings.extend(w for w in run.warnings if w not in record.warnings)
    if record.status == "running":
        record.status = "interrupted" if interrupted else "skipped" if skipped else "done"


def plan_payload(plan: Any) -> list[dict[str, Any]]:
    """Per LoRA: name, text-encoder and denoiser weights per step, change points."""
    return [{"name": lora.name, "te": list(lora.weights("text_encoder", None)),
             "unet": list(lora.weights("unet", None)), "change_points": list(lora.change_points)}
            for lora in plan.loras]


def last_run_payload(record: RunRecord | None) -> dict[str, Any]:
    """Our ``/last-run`` route's answer (``{"status": "none"}`` before the first generation)."""
    if record is None:
        return {"status": "none"}
    return {"status": record.status, "prompt": record.prompt, "passes": record.steps, "plan": record.plan,
            "change_points": record.change_points, "engine": record.engine, "warnings": record.warnings,
            "errors": record.errors, "started": record.started}


# -- host folders --------------------------------------------------------------------------------
def lora_folders(options: Any, models_path: str | Path | None = None) -> list[Path]:
    """The host's LoRA (and LyCORIS) folders: ``--lora-dir``/``--lyco-dir``, else ``MODELS/Lora``."""
    names = ("lora_dir", "lyco_dir", "lyco_dir_backcompat")
    found = [Path(value) for value in (getattr(options, key, None) for key in names) if value]
    if not found and models_path:
        found.append(Path(models_path) / "Lora")
    return list(dict.fromkeys(found))


SDNEXT_TYPES = {"sd": "sd15", "sdxl": "sdxl", "f1": "flux", "sd3": "sd3"}
MODEL_FLAGS = (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd15"))


def model_architecture(host_shared: Any) -> str | None:
    """The loaded checkpoint's family, read from the host's ``shared`` without loading a model.

    SD.Next: ``sd_loaded`` first, then its ``sd_model_type`` (reading ``sd_model`` there can load a model
    and logs ``Model locked`` while the UI is built). A1111 1.6+: the ``is_sdxl``/``is_sd2``/``is_sd1`` flags."""
    if hasattr(host_shared, "sd_loaded"):
        return SDNEXT_TYPES.get(getattr(host_shared, "sd_model_type", ""), None) if host_shared.sd_loaded else None
    model = getattr(host_shared, "sd_model", None)
    return next((name for flag, name in MODEL_FLAGS if getattr(model, flag, False)), None)
