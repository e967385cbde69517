"""Positioned, human-readable syntax errors: the tag, the column and a caret line.

Lark 1.3.1 traps handled here: ``str(UnexpectedToken)`` is not for users (we word our own message
from the expected terminals) and end-of-input errors carry no usable column (we compute it).
"""

from __future__ import annotations

import unicodedata

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import LoraSyntaxError

_WINDOW = 100
_TERMINALS = {
    "NUMBER": "a number", "WORD": "a key or a word", "NAME": "a LoRA name", "_SEP": "':'",
    "_CLOSE": "'>'", "_EQ": "'='", "_COMMA": "','", "_AT": "'@'", "PERCENT": "'%'", "_LPAR": "'('",
    "_RPAR": "')'", "$END": "the end of the tag", "OPEN": "'<lora:'",
}

# Malformed tags per error class; Lark's ``match_examples`` labels a new error by the parser
# state it fails in. Order matters: the first class whose example fails the same way wins.
ERROR_EXAMPLES: dict[str, list[str]] = {
    "bad schedule": ["<lora:x:0.5@>", "<lora:x:te=0.5@>", "<lora:x:0.5@@1>", "<lora:x:0.5@x>",
                     "<lora:x:te=0.5@1,>", "<lora:x:0.5@1,>", "<lora:x:lerp(0@0>", "<lora:x:lerp()>",
                     "<lora:x:te=lerp(0@0,1@1>", "<lora:x:0.5@50%%>", "<lora:x:0.5@1 2>"],
    "bad number": ["<lora:x:1.2.3>", "<lora:x:1x>", "<lora:x:te=>", "<lora:x:te=1.2.3>", "<lora:x:te=1x>",
                   "<lora:x:te=->", "<lora:x:->", "<lora:x:>", "<lora:x:1 2>", "<lora:x:te=1 2>",
                   "<lora:x:te==1>", "<lora:x:te=1%>", "<lora:x:1%>", "<lora:x:te=(1)>"],
    "bad key": ["<lora:x:=1>", "<lora:x:te 1>", "<lora:x:te te=1>", "<lora:x:(1)>"],
    "bad name": ["<lora:x=:1>", "<lora:x>y>"],
}


def _expected(error: UnexpectedInput) -> str:
    names = sorted(getattr(error, "expected", None) or getattr(error, "allowed", None) or ())
    words = sorted({_TERMINALS.get(n, n.lower()) for n in names})
    return " or ".join(words) if words else "something else"


#: Keys whose value is not a weight: a grammar error inside it is labelled for the key, with what it takes
#: (the parser state alone would call it a bad number or schedule).
_VALUE_HINTS = {
    "module": ("bad module list", "component names separated by ',' (module=unet or module=te,unet)"),
    "lbw": ("bad lbw value", "a preset (lbw=INS) or block multipliers separated by ',' (lbw=1,0,1,...)"),
}


def _key_of_value(tag_text: str, pos: int) -> str | None:
    """The key whose ``key=value`` holds offset ``pos`` of the tag, if any."""
    start = tag_text.rfind(":", 0, pos) + 1
    key, equals, _ = tag_text[start:pos].partition("=")
    return key.strip().lower() if equals else None


def lark_problem(error: UnexpectedInput, tag_text: str, label: str | None) -> tuple[str, int]:
    """Our message for a Lark error inside ``tag_text``, and the offset it points at: labelled with ``label``
    (the error class), or for the key whose value holds the error, with what that key takes."""
    problem, pos = _lark_problem(error, tag_text)
    hint = _VALUE_HINTS.get(_key_of_value(tag_text, pos) or "")
    if hint is not None:
        return f"{hint[0]}: {problem}; write {hint[1]}", pos
    return (f"{label}: {problem}" if label else problem), pos


def _lark_problem(error: UnexpectedInput, tag_text: str) -> tuple[str, int]:
    """The unlabelled message for a Lark error, and the offset it points at."""
    if isinstance(error, UnexpectedCharacters):
        pos = error.pos_in_stream
        return f"unexpected {tag_text[pos]!r}; expected {_expected(error)}", pos
    if isinstance(error, UnexpectedToken) and error.token.type != "$END":
        token = error.token
        pos = token.start_pos if token.start_pos is not None else len(tag_text) - 1
        if str(token).lstrip().startswith("="):   # te=0.5,unet=0.3: a key after a comma, where pairs take ':'
            comma = tag_text.rfind(",", 0, pos)
            key = tag_text[comma + 1:pos].strip()
            if comma >= 0 and key.isidentifier():
                return (f"'{clip(key)}=' comes after a ',': separate key=value pairs with ':' "
                        f"(te=0.5:unet=0.3); a ',' separates keyframes of one weight"), comma
        shown = str(token).strip() or str(token)
        return f"unexpected {clip(shown)!r}; expected {_expected(error)}", pos
    # UnexpectedEOF, or an UnexpectedToken at $END: Lark's column is unreliable, the end is ours.
    assert isinstance(error, (UnexpectedEOF, UnexpectedToken))
    return f"the tag ends too early; expected {_expected(error)}", max(0, len(tag_text) - 1)


def _line_at(text: str, offset: int) -> tuple[int, int, str]:
    """(1-based line number, 0-based column in that line, the line) for an offset in ``text``."""
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    end = len(text) if end < 0 else end
    return text.count("\n", 0, offset) + 1, offset - start, text[start:end]


def _pad(text: str) -> str:
    """Blank space as wide on screen as ``text``: a tab stays a tab, East Asian wide and full-width characters
    take two columns, combining marks and zero-width characters none (a terminal or the UI's monospace text
    draws them so; one space per character put the caret under the wrong character after CJK or emoji)."""
    out = []
    for char in text:
        if char == "\t":
            out.append("\t")
        elif unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        else:
            out.append("  " if unicodedata.east_asian_width(char) in ("W", "F") else " ")
    return "".join(out)


def caret_block(text: str, offset: int) -> str:
    """The line of ``text`` around ``offset`` (clipped to a window) with a ``^`` under it."""
    _, column, line = _line_at(text, offset)
    left = max(0, column - _WINDOW // 2)
    shown = line[left:left + _WINDOW]
    lead = "…" if left else ""
    tail = "…" if left + _WINDOW < len(line) else ""
    return f"  {lead}{shown}{tail}\n  {_pad(lead + line[left:column])}^"


#: Characters of user text a message quotes (a tag, a number, a word): a 5,000-digit number or a 60,000-character
#: unclosed tag is shown by its start, so a message stays a few lines long whatever was typed.
QUOTED = 40
QUOTED_TAG = 80
#: The longest problem text a message carries; every quote is clipped first, this only bounds what slips through.
MAX_PROBLEM = 400


def clip(text: str, width: int = QUOTED) -> str:
    """``text`` whole when it fits ``width`` characters, else its start and '...'."""
    return text if len(text) <= width else text[:width - 3] + "..."


def syntax_error(problem: str, *, text: str, offset: int, tag: str) -> LoraSyntaxError:
    """A :class:`LoraSyntaxError` about ``tag`` pointing at ``offset`` of the prompt ``text``."""
    offset = min(max(offset, 0), max(len(text) - 1, 0))
    line, column, _ = _line_at(text, offset)
    where = f"line {line}, column {column + 1}" if "\n" in text else f"column {column + 1}"
    shown = clip(tag, QUOTED_TAG)
    message = f"LoRA tag {shown!r} at {where}: {clip(problem, MAX_PROBLEM)}\n{caret_block(text, offset)}"
    return LoraSyntaxError(message, text=text, column=offset + 1, tag=tag)
