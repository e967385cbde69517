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
# ``cache=True`` keeps Lark's grammar analysis in the temp folder, halving import time. No
# ``propagate_positions``: ToRaw reads tokens' own ``start_pos``, rule positions were never used (-10%).
PARSER = Lark.open("tags.lark", rel_to=__file__, parser="lalr", lexer="contextual",
                   propagate_positions=False, maybe_placeholders=False, transformer=ToRaw(), cache=True)


class _Driver:
    """Lark's LALR tables, contextual-lexer regexps and rule callbacks for ``tags.lark``, run by a tight loop.

    Lark's own loop costs ~6 µs a token (a generator per call, a line counter, error bookkeeping): most
    of a cold prompt. This one drives the very same tables and callbacks, so a tag it accepts gives what
    Lark gives; on anything else it returns None and :func:`parse_raw` asks Lark, whose errors (message,
    column, parser state for the labels) stay the reference. It reads Lark internals: built only when a
    self-check on sample tags agrees with Lark, else every tag goes to Lark.
    """

    def __init__(self, lark: Lark) -> None:
        parser = lark.parser.parser.parser                  # lalr_parser._Parser
        table = parser.parse_table
        self.callbacks = parser.callbacks
        self.start, self.end = table.start_states["start"], table.end_states["start"]
        self.actions = {state: {name: self._action(kind, arg) for name, (kind, arg) in row.items()}
                        for state, row in table.states.items()}
        lexers = lark.parser.lexer.lexers                   # parser state -> BasicLexer
        self.regexps = {state: tuple(lexer.scanner._mres) for state, lexer in lexers.items()}  # builds them
        if any(lexer.ignore_types or lexer.callback for lexer in lexers.values()):
            raise TypeError("ignored terminals or lexer callbacks: not handled by the fast loop")
        if any(name in self.callbacks for name in lark.terminals):
            raise TypeError("terminal callbacks: not handled by the fast loop")

    def _action(self, kind, arg) -> tuple:
        """A table entry, precomputed: (True, next state) to shift, (False, size, callback, goto) to reduce."""
        if kind is Shift:
            return True, arg
        return False, len(arg.expansion), self.callbacks[arg], arg.origin.name

    def parse(self, text: str):
        """What ``PARSER.parse(text)`` returns, or None where Lark would raise (or might differ).

        Each token is what the contextual lexer reads in the current state: the first alternative of
        that state's regexps that matches. A filtered terminal (``_SEP``...) stays a plain str: the rule
        callbacks drop it unread, and a Token costs ~0.7 µs. (Lexing is inline: this loop is the hot path.)"""
        state_stack, value_stack, regexps = [self.start], [], self.regexps
        pos, size = 0, len(text)
        while pos < size:
            for regexp in regexps[state_stack[-1]]:
                match = regexp.match(text, pos)
                if match:
                    break
            else:
                return None
            kind, value = match.lastgroup, match.group(0)
            if not self._feed(kind, value if kind[0] == "_" else Token(kind, value, pos), state_stack, value_stack):
                return None
            pos = match.end()
        return value_stack[-1] if self._feed("$END", "", state_stack, value_stack) is None else None

    def _feed(self, kind: str, token: str | Token, state_stack: list, value_stack: list) -> bool | None:
        """Lark's ``feed_token``: reduce while the table says so, then shift (True). False: a syntax error;
        None: ``$END`` accepted (the start rule reduced into the end state)."""
        actions = self.actions
        while True:
            action = actions[state_stack[-1]].get(kind)
            if action is None:
                return False
            if action[0]:
                if kind == "$END":
                    return False
                state_stack.append(action[1])
                value_stack.append(token)
                return True
            _, count, callback, origin = action
            children = value_stack[-count:] if count else []
            if count:
                del state_stack[-count:], value_stack[-count:]
            value_stack.append(callback(children))
            state_stack.append(actions[state_stack[-1]][origin][1])
            if kind == "$END" and state_stack[-1] == self.end:
                return None


_SAMPLES = ("<lora:x>", "<lora:styles/ink wash v1.2:0.8>", "<lora:d:te=0.1@1,0.6@6>", "<lyco:l:0.5:0.7:16>",
            "<lora:r:unet=lerp(0@0,1@0.5)>", "<lora:f:0.6:lbw=OUTD>", "<lora:h:1@25%,0.4@75%:high>",
            "< LoRA : a b : in=0.2 : mid = .4 , -1e-1@ 3 >", "<lora:>")


def _fast_driver() -> _Driver | None:
    """The fast loop if it reproduces Lark on the samples (a Lark version whose internals moved: None)."""
    try:
        driver = _Driver(PARSER)
        if all(driver.parse(text) == PARSER.parse(text) for text in _SAMPLES):
            return driver
    except Exception:  # noqa: BLE001 - any surprise in Lark's internals only turns the fast loop off
        pass
    return None


_DRIVER = _fast_driver()


def parse_raw(text: str) -> RawTag:
    """``PARSER.parse(text)``, through the fast loop when it accepts the tag; Lark raises the errors."""
    if _DRIVER is not None:
        try:
            found = _DRIVER.parse(text)
        except Exception:  # noqa: BLE001 - a callback failed: Lark repeats it and wraps it as usual
            found = None
        if found is not None:
            return found
    return PARSER.parse(text)
