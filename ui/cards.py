"""HTML for the Networks tab: LoRA cards and the details panel, every value escaped.

LoRA names, trigger words and metadata come from downloaded files, so nothing from them is ever
written into HTML unescaped: text goes through ``html.escape``; data for the page's script goes
into ``data-*`` attributes as JSON, attribute-escaped. No JavaScript is ever built from a name.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

ARCH_LABELS = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "flux": "FLUX.1"}
SORTS = ("name", "date", "size")
THUMB_PX = 192


@dataclass(frozen=True)
class Card:
    """What one card shows, taken from a ``LoraEntry`` and its ``LoraInfo``."""

    name: str                     # entry.name: the file's path relative to its folder, no suffix
    tag_name: str | None          # the name to write in a tag; None when no spelling of it parses back
    group: str                    # sub-folder ("" at the top)
    architecture: str | None
    weight: float                 # preferred weight, 1.0 when unset
    auto_words: tuple[str, ...]   # words a click inserts with the tag
    words: tuple[str, ...]        # the trigger words, for the details chips
    words_source: str             # where they came from (metadata.TRIGGER_SOURCES), "" when none
    aliases: tuple[str, ...]
    tags: tuple[str, ...]         # dataset caption tags, for search
    size: int
    mtime: float
    preview: Path | None
    problem: str | None = None    # why the file cannot be used (refused or unreadable)


def esc(value: object) -> str:
    """Text or attribute value, HTML-escaped (quotes included)."""
    return html.escape(str(value), quote=True)


def data_attr(value: Any) -> str:
    """JSON for a ``data-*`` attribute: ``JSON.parse(el.dataset.x)`` gives ``value`` back."""
    return esc(json.dumps(value, ensure_ascii=False))


def format_weight(weight: float) -> str:
    """``1.0`` -> ``1``, ``0.80`` -> ``0.8``: how a weight is written in a tag."""
    text = f"{float(weight):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_size(size: int) -> str:
    """``1684`` -> ``1.6 kB``, ``151_000_000`` -> ``151.0 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def tag_name_for(name: str, aliases: Sequence[str],
                 resolves: Callable[[str], bool] | None = None) -> str | None:
    """The first of ``name`` and ``aliases`` that the tag parser reads back unchanged (and, given
    ``resolves``, that the library resolves back to this card's file: an alias may be another file's name).

    Names holding ``:``, ``<`` or ``>`` cannot be written inside a tag; their alias may be.
    """
    from lora_syntax.syntax import parse

    for candidate in (name, *aliases):
        if resolves is not None and not resolves(candidate):
            continue
        try:
            tags = parse(f"<lora:{candidate}:1>").tags
        except Exception:  # noqa: BLE001 - any failure means "not writable", the card says so
            continue
        if len(tags) == 1 and tags[0].name == candidate:
            return candidate
    return None


def auto_words(info: Any) -> tuple[str, ...]:
    """Words a click inserts: the file's trigger words (the user's activation text first, see
    :mod:`lora_syntax.metadata`); dataset caption tags never."""
    return tuple(info.trigger_words)


def card_from_entry(entry: Any, info: Any | None, problem: str | None = None,
                    resolves: Callable[[str], bool] | None = None) -> Card:
    """Build a :class:`Card`; ``info`` is None when the file could not be read (``problem`` says why);
    ``resolves(name)``: whether a tag with that name means this entry's file (see :func:`tag_name_for`)."""
    group = str(PurePosixPath(entry.name).parent)
    weight = getattr(info, "preferred_weight", None) or 1.0
    return Card(
        name=entry.name, tag_name=tag_name_for(entry.name, entry.aliases, resolves), group="" if group == "." else group,
        architecture=getattr(info, "architecture", None), weight=float(weight),
        auto_words=auto_words(info) if info else (), words=tuple(getattr(info, "trigger_words", ())),
        words_source=getattr(info, "trigger_source", ""),
        aliases=tuple(entry.aliases), tags=tuple(getattr(info, "tag_frequency", {}) or {}),
        size=int(entry.size), mtime=float(entry.mtime), preview=_contained_preview(entry, info), problem=problem)


def _contained_preview(entry: Any, info: Any | None) -> Path | None:
    """The info's preview, checked again to lie inside the LoRA folders just before a card reads it."""
    from lora_syntax.io import is_inside

    preview, roots = getattr(info, "preview", None), getattr(entry, "roots", None)
    if preview is not None and roots and not is_inside(preview, roots):
        return None
    return preview


def matches(card: Card, query: str) -> bool:
    """Search: every word of ``query`` is in the name, an alias, a trigger word or a dataset tag."""
    haystack = " ".join((card.name, *card.aliases, *card.words, *card.tags)).casefold()
    return all(word in haystack for word in query.casefold().split())


def select(cards: Iterable[Card], *, query: str = "", architecture: str = "all", sort: str = "name") -> list[Card]:
    """Cards that pass the search and architecture filter, in ``sort`` order (date, size: newest, largest first)."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    kept = [card for card in cards if matches(card, query)
            and architecture in ("all", "", None, card.architecture or "unknown")]
    keys = {"name": lambda c: (c.group.casefold(), c.name.casefold()),
            "date": lambda c: (c.group.casefold(), -c.mtime, c.name.casefold()),
            "size": lambda c: (c.group.casefold(), -c.size, c.name.casefold())}
    return sorted(kept, key=keys[sort])


@lru_cache(maxsize=512)
def _thumbnail(path: str, mtime_ns: int) -> str | None:
    """A small JPEG data URL of a preview, so any Gradio version (and host) can show it without file routes."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB_PX, THUMB_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_url(preview: Path | None) -> str | None:
    if preview is None:
        return None
    try:
        return _thumbnail(str(preview), preview.stat().st_mtime_ns)
    except OSError:
        return None


def _badge(architecture: str | None, model_architecture: str | None) -> str:
    label = ARCH_LABELS.get(architecture or "", "unknown")
    other = bool(model_architecture and architecture and architecture != model_architecture)
    title = (f"made for {label}; the loaded model is {ARCH_LABELS.get(model_architecture or '', model_architecture)}"
             if other else f"made for {label}")
    return (f'<span class="lsx-badge{" lsx-badge-other" if other else ""}" title="{esc(title)}">'
            f"{esc(label)}</span>")


def render_card(card: Card, model_architecture: str | None = None) -> str:
    """One card. Its ``data-lora`` JSON is all the page script needs to insert or remove the tag."""
    other = bool(model_architecture and card.architecture and card.architecture != model_architecture)
    classes = "lsx-card" + (" lsx-other-arch" if other else "") + (" lsx-unusable" if card.tag_name is None else "")
    payload = {"name": card.tag_name, "file": card.name, "weight": format_weight(card.weight),
               "words": list(card.auto_words)}
    if card.tag_name is None:
        payload["problem"] = card.problem or (f"'{card.name}' holds ':', '<' or '>', which a tag cannot contain; "
                                              "rename the file to use it.")
    url = thumbnail_url(card.preview)
    initial = (card.name.rsplit("/", 1)[-1][:1] or "?").upper()
    preview = (f'<img class="lsx-thumb" src="{esc(url)}" alt="" loading="lazy">' if url
               else f'<div class="lsx-placeholder">{esc(initial)}</div>')
    words = ", ".join(card.auto_words)
    title = payload.get("problem") or f"click: insert or remove <lora:{card.tag_name}:{payload['weight']}>"
    return (
        f'<div class="{classes}" data-lora="{data_attr(payload)}" title="{esc(title)}" role="button" tabindex="0">'
        f'<div class="lsx-preview">{preview}</div>'
        f'<div class="lsx-body"><div class="lsx-name">{esc(card.name.rsplit("/", 1)[-1])}</div>'
        f'<div class="lsx-meta">{_badge(card.architecture, model_architecture)}'
        f'<span class="lsx-weight" title="preferred weight">{esc(format_weight(card.weight))}</span></div>'
        f'<div class="lsx-words">{esc(words)}</div></div>'
        f'<button class="lsx-details" type="button" data-file="{data_attr(card.name)}" '
        f'title="details and user metadata">i</button></div>')


def render_cards(cards: Sequence[Card], *, model_architecture: str | None = None,
                 targets: Sequence[str] = ("lora_syntax_prompt", "lora_syntax_negative"), note: str = "") -> str:
    """Every card, grouped by sub-folder. ``targets`` are the element ids of the prompt boxes clicks edit."""
    parts = [f'<div class="lsx-root" data-targets="{data_attr(list(targets))}">']
    parts.append(f'<div class="lsx-note">{esc(note)}</div><div class="lsx-status" aria-live="polite"></div>')
    if not cards:
        parts.append('<div class="lsx-empty">No LoRA matches. Check the search, the filter and the LoRA '
                     "folders, then press Refresh.</div>")
    group = None
    for card in cards:
        if card.group != group:
            if group is not None:
                parts.append("</div></section>")
            group = card.group
            parts.append(f'<section class="lsx-group"><h3>{esc(group or "(top folder)")}</h3><div class="lsx-grid">')
        parts.append(render_card(card, model_architecture))
    if group is not None:
        parts.append("</div></section>")
    parts.append("</div>")
    return "".join(parts)


def _chips(words: Iterable[str], css: str = "lsx-chip") -> str:
    return "".join(f'<button type="button" class="{css}" data-word="{data_attr(word)}" '
                   f'title="click: insert into the active prompt">{esc(word)}</button>' for word in words)


def render_details(card: Card, info: Any | None, *, max_tags: int = 40) -> str:
    """The details panel: metadata, trigger-word chips and dataset tags (chips too), all escaped."""
    rows = [("file", card.name), ("tag", f"<lora:{card.tag_name}:{format_weight(card.weight)}>"
                                  if card.tag_name else "(cannot be written in a tag)"),
            ("architecture", ARCH_LABELS.get(card.architecture or "", "unknown")),
            ("base model", getattr(info, "base_model", None)), ("rank", getattr(info, "rank", None)),
            ("alpha", getattr(info, "alpha", None)), ("trainer", getattr(info, "trainer", None)),
            ("format", getattr(info, "format", None)), ("aliases", ", ".join(card.aliases)),
            ("size", format_size(card.size)), ("problem", card.problem)]
    table = "".join(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in rows
                    if value not in (None, ""))
    description = getattr(info, "description", "") or ""
    counts = sorted((getattr(info, "tag_frequency", None) or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    tags = "".join(f'<button type="button" class="lsx-chip lsx-tag" data-word="{data_attr(tag)}">{esc(tag)} '
                   f'<span class="lsx-count">{esc(count)}</span></button>' for tag, count in counts[:max_tags])
    more = f"<p>and {len(counts) - max_tags} more</p>" if len(counts) > max_tags else ""
    return (f'<div class="lsx-detail-view" data-file="{data_attr(card.name)}">'
            f'<h3>{esc(card.name)}</h3><table class="lsx-table">{table}</table>'
            + (f'<p class="lsx-description">{esc(description)}</p>' if description else "")
            + f'<h4>Trigger words{esc(f" (from {card.words_source})" if card.words_source else "")}</h4>'
            + f'<div class="lsx-chips">{_chips(card.words) or "<em>none</em>"}</div>'
            + f'<h4>Dataset tags</h4><div class="lsx-chips">{tags or "<em>none recorded</em>"}</div>{more}</div>')
