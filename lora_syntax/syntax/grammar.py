"""The Lark grammar of one tag (``tags.lark``) and the Transformer that turns its tree into raw records.

Raw records keep every token's offset inside the tag so that the checks of :mod:`.build`
(unknown key, bad number...) can point a caret at the right column.
"""

from __future__ import annotations

from dataclasses import dataclass

from lark import Lark, Token, Transformer



@dataclass(frozen=True)
class RawItem:
    """One comma-separated item of a value: a number, ``NUMBER@AT[%]``, a word or ``word(items)``."""

    kind: str                            # "number", "keyframe", "word", "call"
    text: str                            # number text, or the word
    pos: int                             # offset in the tag
    at: str | None = None                # keyframe position text
    at_pos: int = 0
    percent: bool = False
    items: tuple["RawItem", ...] = ()    # arguments of a call


@dataclass(frozen=True)
class RawArg:
    """``KEY=VALUE`` (key set) or a positional VALUE."""

    key: str | None
    key_pos: int
    items: tuple[RawItem, ...]
    pos: int                             # offset of the value


@dataclass(frozen=True)
class RawTag:
    kind: str                            # "lora" or "lyco"
    name: str
    name_pos: int
    args: tuple[RawArg, ...]


class ToRaw(Transformer):
    """Builds :class:`RawTag` from the parse tree; it only records, all checks come later."""

    def start(self, children: list) -> RawTag:
        opener: Token = children[0]
        name: Token | None = children[1]
        kind = "lyco" if "lyco" in opener.lower() else "lora"
        if name is None:
            return RawTag(kind, "", len(opener), tuple(children[2:]))
        return RawTag(kind, str(name), name.start_pos, tuple(children[2:]))

    def name(self, children: list) -> Token | None:
        return children[0] if children else None

    def named(self, children: list) -> RawArg:
        key, items = children
        return RawArg(str(key), key.start_pos, items, items[0].pos)

    def positional(self, children: list) -> RawArg:
        items = children[0]
        return RawArg(None, items[0].pos, items, items[0].pos)

    def value(self, children: list) -> tuple[RawItem, ...]:
        return tuple(children)

    def number(self, children: list) -> RawItem:
        (token,) = children
        return RawItem("number", str(token), token.start_pos)

    def keyframe(self, children: list) -> RawItem:
        value, at = children[0], children[1]
        return RawItem("keyframe", str(value), value.start_pos, str(at), at.start_pos, len(children) == 3)

    def word(self, children: list) -> RawItem:
        (token,) = children
        return RawItem("word", str(token), token.start_pos)

    def call(self, children: list) -> RawItem:
        token, items = children
        return RawItem("call", str(token), token.start_pos, items=items)


# The Transformer runs inline (LALR calls it as rules reduce: no tree is built, ~15% faster);
# ``cache=True`` keeps Lark's grammar analysis in the temp folder, halving import time.
PARSER = Lark.open("tags.lark", rel_to=__file__, parser="lalr", lexer="contextual",
                   propagate_positions=True, maybe_placeholders=False, transformer=ToRaw(), cache=True)
