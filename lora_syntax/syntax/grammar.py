"""The Lark grammar of one tag (``tags.lark``) and the Transformer that turns its tree into raw records.

Raw records keep every token's offset inside the tag so that the checks of :mod:`.build`
(unknown key, bad number...) can point a caret at the right column.
"""

from __future__ import annotations

from dataclasses import dataclass

from lark import Lark, Token, Transformer
from lark.parsers.lalr_analysis import Shift



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
        opener = str(children[0])  # str(): lark-cython's tokens are not str subclasses
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
# ``cache=True`` keeps Lark's grammar analysis in the temp folder, halving import time. No
# ``propagate_positions``: ToRaw reads tokens' own ``start_pos``, rule positions were never used (-10%).
PARSER = Lark.open("tags.lark", rel_to=__file__, parser="lalr", lexer="contextual",
                   propagate_positions=False, maybe_placeholders=False, transformer=ToRaw(), cache=True)


_SAMPLES = ("<lora:x>", "<lora:styles/ink wash v1.2:0.8>", "<lora:d:te=0.1@1,0.6@6>", "<lyco:l:0.5:0.7:16>",
            "<lora:r:unet=lerp(0@0,1@0.5)>", "<lora:f:0.6:lbw=OUTD>", "<lora:h:1@25%,0.4@75%:high>",
            "< LoRA : a b : in=0.2 : mid = .4 , -1e-1@ 3 >", "<lora:>")


def _accelerated() -> Lark | None:
    """The same grammar and Transformer run by lark-cython, Lark's own Cython LALR plugin (~1.6x faster
    on a cold prompt), when it is installed and reproduces pure Lark on the samples; else None."""
    try:
        import lark_cython
    except ImportError:
        return None
    try:
        fast = Lark.open("tags.lark", rel_to=__file__, parser="lalr", lexer="contextual",
                         maybe_placeholders=False, transformer=ToRaw(), _plugins=lark_cython.plugins)
        if all(fast.parse(text) == PARSER.parse(text) for text in _SAMPLES):
            return fast
    except Exception:  # noqa: BLE001 - an incompatible plugin version only turns the acceleration off
        pass
    return None


FAST_PARSER = _accelerated()


def parse_raw(text: str) -> RawTag:
    """``PARSER.parse(text)``, through lark-cython when it accepts the tag; errors always come from pure
    Lark, so messages, columns and ``match_examples`` labels do not depend on the accelerator."""
    if FAST_PARSER is not None:
        try:
            return FAST_PARSER.parse(text)
        except Exception:  # noqa: BLE001 - pure Lark parses it again and raises its own, reference error
            pass
    return PARSER.parse(text)
