"""The Networks tab's prompt edits (``ui/static/networks.js``), run in node without a browser.

A card click inserts ``<lora:NAME:W>`` and its trigger words at the cursor; a second click must remove
exactly that, wherever the cursor was, after the user edited the weight, and in either prompt box.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs)")

SCRIPT = Path(__file__).resolve().parents[1] / "ui" / "static" / "networks.js"
# Loads the page script with a stand-in window/document (its listeners are never called), then runs each
# case's calls against window.loraSyntax.text and prints the results as JSON.
RUNNER = r"""
const fs = require("fs");
const [script, casesFile] = process.argv.slice(2);
globalThis.window = {};
globalThis.document = { addEventListener() {}, querySelector() { return null; } };
(0, eval)("(" + fs.readFileSync(script, "utf8") + ")")();
const edit = window.loraSyntax.text;
const out = JSON.parse(fs.readFileSync(casesFile, "utf8")).map((c) => {
  if (c.typed) { const removed = edit.removeTag(c.text, c.name, c.added || null); return { removed: removed && removed.text }; }
  const inserted = edit.insertPiece(c.text, c.at, c.piece, c.words);
  const edited = c.weight ? inserted.text.replace(c.piece, c.piece.replace(/:[^:>]*>$/, ":" + c.weight + ">"))
                          : inserted.text;
  const removed = edit.removeTag(edited, c.name, c.forget ? null : inserted.added);
  return { inserted: inserted.text, cursor: inserted.cursor, removed: removed && removed.text };
});
process.stdout.write(JSON.stringify(out));
"""

POSITIVE = "a blue circle on a white background"
NEGATIVE = "lowres, bad anatomy,  blurry\njpeg artifacts"
TAG, NAME, WORDS = "<lora:zorbstar:1>", "zorbstar", ["zorbstar"]


def run(cases: list[dict], tmp_path: Path) -> list[dict]:
    runner, data = tmp_path / "runner.js", tmp_path / "cases.json"
    runner.write_text(RUNNER, encoding="utf-8")
    data.write_text(json.dumps(cases), encoding="utf-8")
    done = subprocess.run([NODE, str(runner), str(SCRIPT), str(data)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def case(text: str, at: int, words=WORDS, weight: str | None = None, forget: bool = False) -> dict:
    return {"text": text, "at": at, "piece": TAG, "name": NAME, "words": list(words), "weight": weight,
            "forget": forget}


def test_issue_example_in_the_middle_of_a_phrase(tmp_path) -> None:
    at = len("a blue")
    (got,) = run([case(POSITIVE, at)], tmp_path)
    assert got["inserted"] == "a blue, <lora:zorbstar:1>, zorbstar, circle on a white background"
    assert got["cursor"] == len("a blue, <lora:zorbstar:1>, zorbstar")
    assert got["removed"] == POSITIVE


def test_insert_then_toggle_off_is_the_identity_at_every_cursor(tmp_path) -> None:
    # every cursor position of prompts and negative prompts, with 0, 1 and 2 trigger words, the weight as
    # inserted or edited by the user afterwards: one node run for all of them
    cases = [case(text, at, words, weight)
             for text in (POSITIVE, NEGATIVE, "", "  ", "a, b,", "x\n\ny", "(red:1.2), [blue]")
             for words in (WORDS, [], ["zorbstar", "blue shape"])
             for weight in (None, "0.35", "1.5@2-10")
             for at in range(len(text) + 1)]
    results = run(cases, tmp_path)
    assert len(results) == len(cases) > 900
    for c, got in zip(cases, results):
        assert got["removed"] == c["text"], (c, got["inserted"])
        assert got["inserted"].count("<lora:zorbstar:") == 1


def test_inserted_tag_is_separated_from_the_neighbouring_words(tmp_path) -> None:
    texts = {0: "<lora:zorbstar:1>, zorbstar, a blue circle on a white background",
             len("a blue "): "a blue <lora:zorbstar:1>, zorbstar, circle on a white background",
             len(POSITIVE): "a blue circle on a white background, <lora:zorbstar:1>, zorbstar"}
    results = run([case(POSITIVE, at) for at in texts], tmp_path)
    assert [got["inserted"] for got in results] == list(texts.values())
    negative = run([case(NEGATIVE, len("lowres,"))], tmp_path)[0]["inserted"]
    assert negative == "lowres, <lora:zorbstar:1>, zorbstar, bad anatomy,  blurry\njpeg artifacts"


def test_typed_tag_is_removed_with_one_separator_and_nothing_else(tmp_path) -> None:
    # no record of an insertion (the user typed the tag, or the page was reloaded): only the tag goes
    texts = {"a cat, <lora:zorbstar:0.5>, blue": "a cat, blue", "<lora:zorbstar:1> a cat": "a cat",
             "a cat <lora:zorbstar:1>": "a cat", "a cat <lora:zorbstar:1> blue": "a cat blue",
             "zorbstar, <lora:zorbstar:1>": "zorbstar", "<lora:other:1>": None}
    results = run([{"typed": True, "text": text, "name": NAME} for text in texts], tmp_path)
    assert [got["removed"] for got in results] == list(texts.values())


def test_text_edited_around_the_tag_removes_the_tag_and_the_card_words_still_whole(tmp_path) -> None:
    # the record of the insertion no longer matches the text beside the tag: the tag goes, and each word the
    # card added goes only where it is still a whole comma-separated part; the user's words stay
    added = {"left": ", ", "right": "", "words": ["zorbstar"]}
    texts = {"a cat, <lora:zorbstar:1>, red, zorbstar": "a cat, red",
             "a cat, <lora:zorbstar:1>, zorbstar shape": "a cat, zorbstar shape"}
    results = run([{"typed": True, "text": text, "name": NAME, "added": added} for text in texts], tmp_path)
    assert [got["removed"] for got in results] == list(texts.values())
