"""The Networks tab: LoRA cards that insert their tag into the active prompt box, and a details editor.

:class:`NetworksModel` holds the logic (plain Python, tested without a browser); :func:`build_networks_tab`
lays out Gradio components over it, inside the caller's ``gr.Blocks`` (our app, or a web-UI host's tab).
Clicks on cards are handled in the page by ``static/networks.js``, which is installed on load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lora_syntax.errors import LoraError

from . import compat
from .cards import (ARCH_LABELS, SORTS, Card, card_from_entry, esc, format_weight, render_cards, render_details,
                    select)

ARCH_CHOICES = ["all", *ARCH_LABELS, "unknown"]
STANDALONE_TARGETS = ("lora_syntax_prompt", "lora_syntax_negative")


class NetworksModel:
    """Cards of a :class:`~lora_syntax.library.LoraLibrary`, filtered and rendered; details; user metadata."""

    def __init__(self, library: Any, *, model_architecture: Callable[[], str | None] = lambda: None,
                 targets: Sequence[str] = STANDALONE_TARGETS) -> None:
        self.library = library
        self.model_architecture = model_architecture
        self.targets = tuple(targets)

    def cards(self, refresh: bool = False) -> list[Card]:
        """One card per file; unreadable files get a card that says why instead of breaking the tab."""
        cards = []
        for entry in self.library.entries(refresh=refresh):
            info, problem = None, getattr(entry, "refused", None)
            if problem is None:
                try:
                    info = self.library.info(entry)
                except (LoraError, OSError) as error:
                    problem = str(error)
            cards.append(card_from_entry(entry, info, problem, self._resolver(entry)))
        return cards

    def _resolver(self, entry: Any) -> Callable[[str], bool] | None:
        """``name -> whether a tag with it means entry's file`` (a card must insert its own file's name)."""
        resolve = getattr(self.library, "resolve", None)
        if resolve is None:
            return None

        def resolves(name: str) -> bool:
            try:
                return resolve(name).path == entry.path
            except LoraError:
                return False
        return resolves

    def html(self, query: str = "", architecture: str = "all", sort: str = "name", refresh: bool = False) -> str:
        """The cards panel for the current search, filter and sort."""
        all_cards = self.cards(refresh)
        shown = select(all_cards, query=query or "", architecture=architecture or "all", sort=sort or "name")
        model = self.model_architecture()
        note = f"{len(shown)} of {len(all_cards)} LoRAs" + (
            f" · loaded model: {ARCH_LABELS.get(model, model)} (LoRAs for other models are dimmed)" if model else "")
        style = f"<style>{compat.static_text('networks.css')}</style>"  # any host, any Gradio version
        return style + render_cards(shown, model_architecture=model, targets=self.targets, note=note)

    def card(self, name: str) -> tuple[Card, Any]:
        """The card and info of the file named ``name`` (an ``entry.name``)."""
        for entry in self.library.entries():
            if entry.name == name:
                info = None if entry.refused else self.library.info(entry)
                return card_from_entry(entry, info, entry.refused), info
        raise LoraError(f"no LoRA file named '{name}' in the LoRA folders any more; press Refresh.")

    def details(self, name: str) -> tuple[str, str, str, str, str, str]:
        """(panel HTML, activation text, preferred weight, negative text, notes, status) for the editor."""
        try:
            card, info = self.card(name)
        except LoraError as error:
            return "", "", "", "", "", f"**Error:** {esc(error)}"
        if info is None:
            return render_details(card, None), "", "", "", "", f"**Unusable:** {esc(card.problem)}"
        return (render_details(card, info), info.activation_text, format_weight(info.preferred_weight or 0.0),
                info.negative_text, info.notes, "")

    def save(self, name: str, activation_text: str, preferred_weight: str | float | None, negative_text: str,
             notes: str) -> str:
        """Write the A1111 user fields to ``NAME.json``; returns a status line. The weight arrives as typed
        (a text box, so that "abc" is refused rather than read as 0) and must be 0..2 (0 or empty = unset)."""
        from lora_syntax.metadata import parse_preferred_weight, save_user_metadata

        if not name:
            return "**Error:** open a LoRA's details (the i button on its card) before saving."
        try:
            weight = parse_preferred_weight(preferred_weight)
            card, _ = self.card(name)
            entry = next(e for e in self.library.entries() if e.name == card.name)
            target = save_user_metadata(entry.path, activation_text=activation_text or "",
                                        preferred_weight=weight,
                                        negative_text=negative_text or "", notes=notes or "")
        except (LoraError, OSError, ValueError) as error:
            return f"**Error:** {esc(error)}"
        return f"Saved {esc(target.name)}."


@dataclass(frozen=True)
class NetworksTab:
    """The components of a built tab, for wiring by the caller."""

    model: NetworksModel
    cards: Any
    refresh: Any
    query: Any
    architecture: Any
    sort: Any


def build_networks_tab(model: NetworksModel, blocks: Any | None = None) -> NetworksTab:
    """Create the tab's components in the current Gradio context; pass ``blocks`` to install the page script."""
    import gradio as gr

    with gr.Row():
        query = gr.Textbox(label="Search", placeholder="name, alias, trigger word, tag", elem_id="lsx_search",
                           scale=3)
        architecture = gr.Dropdown(label="Architecture", choices=ARCH_CHOICES, value="all", elem_id="lsx_arch")
        sort = gr.Radio(label="Sort by", choices=list(SORTS), value="name", elem_id="lsx_sort")
        with gr.Column(min_width=120):
            # read by the page script through its id; interactive=True because no Python event uses it
            gr.Checkbox(label="Insert trigger words", value=True, elem_id="lsx_autoinsert", interactive=True)
            refresh = gr.Button("Refresh", elem_id="lsx_refresh")
    cards = gr.HTML(model.html(), elem_id="lsx_cards")
    details_name = gr.Textbox(label="details of", elem_id="lsx_details_name", **compat.hidden_kwargs())
    details_go = gr.Button("details", elem_id="lsx_details_go", **compat.hidden_kwargs())
    with gr.Accordion("Details", open=True, elem_id="lsx_details_panel"):
        details_html = gr.HTML("<em>Press the i on a card to see its metadata and edit its user fields.</em>",
                               elem_id="lsx_details_html")
        with gr.Row():
            activation = gr.Textbox(label="Activation text", elem_id="lsx_activation", scale=3)
            # a text box, not gr.Number: a Number turns "abc" into 0 before Python sees it
            weight = gr.Textbox(label="Preferred weight (0 to 2; 0 = unset)", value="0", max_lines=1,
                                elem_id="lsx_weight")
        negative = gr.Textbox(label="Negative text", elem_id="lsx_negative_text")
        notes = gr.Textbox(label="Notes", lines=2, elem_id="lsx_notes")
        with gr.Row():
            save = gr.Button("Save to NAME.json", elem_id="lsx_save", variant="primary")
            status = gr.Markdown("", elem_id="lsx_status")
    filters = [query, architecture, sort]
    for control in filters:
        control.change(model.html, filters, cards, show_progress="hidden")
    refresh.click(lambda q, a, s: model.html(q, a, s, refresh=True), filters, cards)
    details_go.click(model.details, details_name, [details_html, activation, weight, negative, notes, status])
    save.click(model.save, [details_name, activation, weight, negative, notes], status).then(
        model.html, filters, cards, show_progress="hidden").then(
        lambda name: model.details(name)[0], details_name, details_html, show_progress="hidden")
    if blocks is not None:
        compat.run_js_on_load(blocks, compat.static_text("networks.js"))
    return NetworksTab(model, cards, refresh, query, architecture, sort)
