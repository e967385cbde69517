"""The few Gradio API differences between 3.41 (A1111's pin) and current releases, in one place.

Everything else in ``ui/`` uses only API present in both: components, ``gr.update``, ``.click``/
``.change``/``.load`` with ``fn, inputs, outputs, show_progress``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

STATIC = Path(__file__).resolve().parent / "static"


def gradio_major() -> int:
    """The installed Gradio's major version (3 for 3.41)."""
    import gradio

    return int(str(gradio.__version__).split(".")[0])


def js_kwargs(code: str) -> dict[str, str]:
    """The keyword that attaches a JS function to an event: ``_js=`` in 3.x, ``js=`` from 4."""
    return {"_js": code} if gradio_major() < 4 else {"js": code}


@lru_cache(maxsize=None)
def static_text(name: str) -> str:
    """A file of ``ui/static`` (our JS and CSS), read once."""
    return (STATIC / name).read_text(encoding="utf-8")


def run_js_on_load(blocks: Any, code: str) -> None:
    """Run ``code`` (a JS function expression) in the page when ``blocks`` loads."""
    blocks.load(None, None, None, **js_kwargs(code))


def hidden_kwargs() -> dict[str, Any]:
    """Keep a component in the DOM but out of sight: Gradio 4+ drops ``visible=False`` components from the
    page, and our script needs to write into them, so they are hidden by CSS instead."""
    return {"elem_classes": ["lsx-hidden"]}


def blocks_kwargs(css: str) -> dict[str, Any]:
    """``gr.Blocks()`` arguments: page CSS goes here up to Gradio 5 (6 moved it to ``launch()``)."""
    return {"css": css} if gradio_major() < 6 else {}


def launch_kwargs(host: str, port: int, css: str = "") -> dict[str, Any]:
    """``launch()`` arguments valid for the installed Gradio (not blocking: the caller waits)."""
    kwargs: dict[str, Any] = {"server_name": host, "server_port": port, "inbrowser": False,
                              "prevent_thread_lock": True, "quiet": True}
    if gradio_major() < 4:
        kwargs.pop("quiet")
    if css and gradio_major() >= 6:
        kwargs["css"] = css
    return kwargs
