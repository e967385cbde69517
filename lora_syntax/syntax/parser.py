"""``parse(prompt)``: find ``<lora:...>``/``<lyco:...>`` tags, parse each with Lark, tidy the prompt.

A regex pre-scan finds tag openings, so prompts without tags never reach Lark; parsed tags are
cached by their text (an LRU), so re-parsing a prompt costs a dictionary look-up per tag.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from lark.exceptions import LarkError, UnexpectedInput, VisitError

from ..errors import LoraSyntaxError
from .build import TagProblem, build_tag
from .grammar import PARSER, RawTag, parse_raw
from .model import LoraTag, ParsedPrompt
from .report import ERROR_EXAMPLES, QUOTED_TAG, clip, lark_problem, syntax_error

_OPEN = re.compile(r"<[ \t]*(?:lora|lyco)\s*:", re.IGNORECASE)
_CACHE_SIZE = 4096
#: Work per prompt is bounded (docs/syntax.md, "Limits"): a longer prompt, or more tags, is one clear error.
MAX_PROMPT_CHARS = 65_536
MAX_TAGS = 256
_LABELS: dict[tuple, str | None] = {}


def _label(error: UnexpectedInput) -> str | None:
    """The error class of ``error`` by Lark's ``match_examples``, memoised per parser state and token:
    matching re-parses every example, which would cost ~10 ms per bad tag."""
    token, state = getattr(error, "token", None), getattr(error, "state", None)
    state = getattr(state, "position", state)  # a ParserState (unhashable) from the contextual lexer
    key = (type(error).__name__, state, getattr(token, "type", None),
           frozenset(getattr(error, "accepts", None) or ()))
    if key not in _LABELS:
        try:
            _LABELS[key] = error.match_examples(PARSER.parse, ERROR_EXAMPLES, use_accepts=True)
        except (LarkError, TypeError, AttributeError, ValueError):
            # lark 1.3.1 formats a ParserState with %d in a debug line of match_examples (TypeError);
            # a label is a nicety, the message and column do not depend on it.
            _LABELS[key] = None
    return _LABELS[key]


@lru_cache(maxsize=_CACHE_SIZE)
def _parse_tag(tag_text: str) -> LoraTag | tuple[str, int]:
    """The tag (span relative to ``tag_text``), or (message, offset in ``tag_text``) for a bad one."""
    try:
        return _attempt(tag_text)
    except RecursionError:   # thousands of nested '(': only lerp() takes parentheses, and keyframes inside
        return ("too many nested '(': lerp() takes weight@step keyframes, not other calls, e.g. lerp(0@0,1@10)",
                max(0, tag_text.find("(")))
    except Exception as error:  # noqa: BLE001 - the contract: any prompt gives LoraSyntaxError at worst
        return f"cannot read this tag (internal {type(error).__name__}: please report it)", 0


def _attempt(tag_text: str) -> LoraTag | tuple[str, int]:
    try:
        raw: RawTag = parse_raw(tag_text)
        return build_tag(raw, tag_text, (0, len(tag_text)))
    except TagProblem as problem:
        return problem.message, problem.pos
    except UnexpectedInput as error:
        return lark_problem(error, tag_text, _label(error))
    except VisitError as error:  # Transformer exceptions arrive wrapped; ours are TagProblem
        inner = error.orig_exc
        if isinstance(inner, TagProblem):
            return inner.message, inner.pos
        return f"cannot read this tag ({type(inner).__name__})", 0


#: Where an unclosed tag's text ends at the latest: a line break, or a comma followed by a word (the prompt's
#: next phrase: weights, keys and keyframes after a comma start with a digit, a sign or a dot).
_UNCLOSED_END = re.compile(r"\n|,[ \t]*[^\W\d_]")


def _find_tags(prompt: str) -> list[tuple[int, int, bool]]:
    """(start, end, closed) of every tag. An unclosed tag runs to the next '<', line break, comma followed by a
    word, or the end: what is removed with it is its own text, not the rest of the prompt.

    The next '>' and '<' are looked up again only when passed, and an unclosed tag's end is searched for
    only up to the next '<', so a long prompt stays linear."""
    found: list[tuple[int, int, bool]] = []
    close = reopen = -2
    for match in _OPEN.finditer(prompt):
        start, body = match.start(), match.end()
        if found and start < found[-1][1]:
            continue
        if close != -1 and close < body:
            close = prompt.find(">", body)
        if reopen != -1 and reopen < body:
            reopen = prompt.find("<", body)
        if close >= 0 and (reopen < 0 or close < reopen):
            found.append((start, close + 1, True))
        else:
            limit = reopen if reopen >= 0 else len(prompt)
            end = _UNCLOSED_END.search(prompt, body, limit)
            found.append((start, end.start() if end else limit, False))
    return found


_TEXT = re.compile(r"\S")


class _Pieces:
    """The clean prompt being built: a list of non-empty pieces joined once at the end. Joining the text so far
    at every removed tag copied it each time, quadratic in a prompt of thousands of tags (skip mode removes
    every tag of a prompt past the limits); here each removal looks at the end of the last pieces only."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.with_text = 0   # pieces holding a non-space character

    def add(self, piece: str) -> None:
        if piece:
            self.parts.append(piece)
            self.with_text += _TEXT.search(piece) is not None

    def rstrip(self) -> bool:
        """Drop the spaces and tabs at the end; whether there were any."""
        stripped = False
        while self.parts:
            last = self.parts[-1]
            kept = last.rstrip(" \t")
            if len(kept) == len(last):
                break
            stripped = True
            if kept:
                self.parts[-1] = kept
                break
            self.parts.pop()   # spaces and tabs only: no text
        return stripped

    def endswith(self, suffix: str | tuple[str, ...]) -> bool:
        return bool(self.parts) and self.parts[-1].endswith(suffix)

    def drop_last_char(self) -> None:
        last = self.parts.pop()
        self.with_text -= _TEXT.search(last) is not None
        self.add(last[:-1])

    def text(self) -> str:
        return "".join(self.parts)


def _join(out: _Pieces, right: str, final: bool) -> None:
    """Glue ``right``, the text after a removed tag, to ``out``: one space at most, no doubled or dangling
    comma."""
    spaced = out.rstrip()
    stripped_right = right.lstrip(" \t")
    spaced = spaced or len(stripped_right) != len(right)
    if stripped_right.startswith(",") and (not out.with_text or out.endswith((",", "\n"))):
        stripped_right = stripped_right[1:].lstrip(" \t")
        spaced = True
    if final and stripped_right.strip() == ",":   # a comma dangling at the end: "a <lora:x>,"
        stripped_right = ""
    if final and not stripped_right.strip() and out.endswith(","):
        out.drop_last_char()
    if out.parts and stripped_right and spaced and not out.endswith("\n") and stripped_right[0] not in ",.;)\n":
        out.add(" ")
    out.add(stripped_right)


def _clean(prompt: str, spans: list[tuple[int, int]]) -> str:
    """``prompt`` without the text of ``spans`` (sorted, not overlapping), tidied at each removal."""
    if not spans:
        return prompt
    out = _Pieces()
    out.add(prompt[:spans[0][0]])
    starts = [s for s, _ in spans[1:]]
    for index, ((_, end), nxt) in enumerate(zip(spans, starts + [len(prompt)])):
        _join(out, prompt[end:nxt], final=index == len(spans) - 1)
    return out.text().strip()


def _one(prompt: str, start: int, end: int, closed: bool) -> LoraTag | LoraSyntaxError:
    text = prompt[start:end]
    if not closed:
        shown = text.rstrip()
        closed_form = f" ({shown + '>'!r})" if len(shown) < QUOTED_TAG else ""   # a clipped one would mislead
        return syntax_error(f"unclosed tag: no '>' after {clip(shown, QUOTED_TAG)!r}; close it with '>' after "
                            f"its last value{closed_form}", text=prompt, offset=start, tag=shown)
    result = _parse_tag(text)
    if isinstance(result, LoraTag):
        return result.with_position(text, (start, end))
    message, offset = result
    return syntax_error(message, text=prompt, offset=start + offset, tag=text)


def _over_limit(prompt: str, found: list[tuple[int, int, bool]]) -> LoraSyntaxError | None:
    """The error for a prompt with LoRA tags past :data:`MAX_PROMPT_CHARS` or :data:`MAX_TAGS` (None when
    within both; a prompt without tags has nothing to parse and comes back unchanged, however long)."""
    if not found:
        return None
    if len(prompt) > MAX_PROMPT_CHARS:
        problem = (f"the prompt has {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} are read for LoRA "
                   "tags. Shorten it")
        start = found[0][0]
    elif len(found) > MAX_TAGS:
        problem = f"the prompt has {len(found):,} LoRA tags; at most {MAX_TAGS} are allowed. Remove some"
        start = found[MAX_TAGS][0]
    else:
        return None
    end = next((e for s, e, _ in found if s == start), start + 1)
    return syntax_error(problem, text=prompt, offset=start, tag=prompt[start:end][:200])


@lru_cache(maxsize=512)
def _parse(prompt: str, on_error: str) -> ParsedPrompt:
    tags: list[LoraTag] = []
    errors: list[LoraSyntaxError] = []
    spans = []
    found = _find_tags(prompt)
    limit = _over_limit(prompt, found)
    if limit is not None:   # nothing parsed: every tag is removed and none applied
        if on_error == "raise":
            raise limit
        return ParsedPrompt(_clean(prompt, [(s, e) for s, e, _ in found]), (), (limit,), prompt)
    for start, end, closed in found:
        result = _one(prompt, start, end, closed)
        if isinstance(result, LoraSyntaxError):
            if on_error == "raise":
                raise result
            errors.append(result)
        else:
            tags.append(result)
        spans.append((start, end))
    return ParsedPrompt(_clean(prompt, spans), tuple(tags), tuple(errors), prompt)


def parse(prompt: str, *, on_error: Literal["raise", "skip"] = "raise") -> ParsedPrompt:
    """Parse ``prompt``: the clean text, its LoRA tags, and (``on_error="skip"``) the bad tags' errors.

    With ``"raise"`` the first bad tag raises :class:`LoraSyntaxError`; with ``"skip"`` bad tags are
    removed from the prompt, reported in ``.errors``, and the rest is used.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    return _parse(prompt, on_error)


def strip_negative(text: str | None) -> tuple[str | None, str | None]:
    """(the negative prompt without LoRA tags, a warning naming the removed tags or None).

    A LoRA applies to the model, not to one prompt, so a tag in the negative prompt cannot be applied there:
    every host removes it (good and malformed tags alike) and says so, rather than feeding its text to the
    tokenizer. ``None``/empty stays ``None``."""
    if not text:
        return None, None
    try:
        parsed = parse(text, on_error="skip")
    except LoraSyntaxError as error:   # past the limits: nothing of it is read as tags
        return None, f"negative prompt not used: {error}"
    removed = [tag.text for tag in parsed.tags] + [error.tag for error in parsed.errors]
    if not removed:
        return text, None
    shown = ", ".join(repr(t if len(t) <= 60 else t[:57] + "...") for t in removed[:5])
    more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
    return (parsed.prompt or None,
            f"LoRA tags in the negative prompt are not applied (a LoRA changes the model, not one prompt); removed "
            f"from it: {shown}{more}")
