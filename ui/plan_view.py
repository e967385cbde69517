"""The plan panel of the standalone app: the ``explain`` table and schedule plot of the current prompt.

It runs on every keystroke, so it only parses, plans and looks names up in the library's last scan; the
strength warning counts only what each file has keys for (its header, read once and cached by the library:
``LoraLibrary.touching``); bad tags are shown with their position and the good ones are still planned; names the
library does not have are shown with the closest ones. The table and plot are ``explain``'s own.
"""

from __future__ import annotations

import io
from typing import Any

from .cards import esc

# Inline styles: the plan tab must look right even when the Networks tab (which carries our CSS) is not shown.
ERROR_STYLE = "color:#b91c1c;font-family:monospace;white-space:pre-wrap;margin:4px 0"
OK_STYLE = "color:#15803d;margin:4px 0"


def plan_plot(plan: Any) -> Any:
    """``explain``'s schedule plot as a PIL image (None without tags)."""
    from PIL import Image

    from lora_syntax.commands.explain import draw_plot

    if not plan.loras:
        return None
    buffer = io.BytesIO()
    draw_plot(plan, buffer)  # Pillow's save() takes a file object as well as a path
    buffer.seek(0)
    return Image.open(buffer)


def _error(text: object) -> str:
    return f'<div class="lsx-plan-error" style="{ERROR_STYLE}">{esc(text)}</div>'


def unknown_names(plan: Any, library: Any) -> list[str]:
    """The messages of the plan's LoRA names that the library's last scan does not resolve (with the closest
    names, as Generate says them); no rescan, so typing stays cheap."""
    from lora_syntax.errors import LoraError

    problems = []
    for lora in plan.loras:
        try:
            library.resolve(lora.name, rescan=False)
        except LoraError as error:
            problems.append(str(error))
    return problems


def plan_view(prompt: str, steps: int, architecture: str | None = None, library: Any = None) -> tuple[str, Any]:
    """(HTML: syntax errors (each says its line and column once), unknown LoRA names, warnings, the plan
    table; plot image or None)."""
    from lora_syntax.commands.explain import table
    from lora_syntax.errors import LoraError
    from lora_syntax.plan import build_plan
    from lora_syntax.syntax import parse

    parsed = parse(prompt or "", on_error="skip")
    parts = [_error(error) for error in parsed.errors]
    try:
        plan = build_plan(parsed, max(1, int(steps or 1)), architecture=architecture)
    except (LoraError, ValueError) as error:
        return "".join(parts) + _error(error), None
    unknown = unknown_names(plan, library) if library is not None else []
    if library is not None:
        plan = library.touching(plan, rescan=False)
    parts += [_error(message) for message in unknown]
    if not parsed.errors and not unknown:
        parts.append(f'<div class="lsx-plan-ok" style="{OK_STYLE}">{len(plan.loras)} LoRA tag(s), no syntax errors'
                     f'{", every name found" if library is not None and plan.loras else ""}</div>')
    parts.append(f'<pre class="lsx-plan-table" style="white-space:pre-wrap">{esc(table(plan))}</pre>')
    return f'<div class="lsx-plan">{"".join(parts)}</div>', plan_plot(plan)
