() => {
  // lora-syntax Networks tab: installed once per page by a Gradio `load` JS hook.
  // Cards carry their data as JSON in data-* attributes; nothing here is built from LoRA names.
  if (window.loraSyntax) { return []; }
  const state = { box: null, focused: new WeakSet(), added: new WeakMap() };

  function targetIds(el) {
    const root = (el && el.closest(".lsx-root")) || document.querySelector(".lsx-root");
    try { return JSON.parse(root.dataset.targets); } catch (e) { return []; }
  }
  function boxOf(id) {
    const host = document.getElementById(id);
    if (!host) { return null; }
    return host.matches("textarea, input") ? host : host.querySelector("textarea, input[type=text]");
  }
  function visible(el) { return !!(el && el.offsetParent !== null); }
  function activeBox(el) {
    const boxes = targetIds(el).map(boxOf).filter(Boolean);
    if (state.box && boxes.includes(state.box) && visible(state.box)) { return state.box; }
    return boxes.find(visible) || boxes[0] || null;
  }
  function setText(box, text, cursor) {
    box.value = text;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    if (cursor !== undefined && box.setSelectionRange) { box.setSelectionRange(cursor, cursor); }
  }
  // ---- Pure text edits (no DOM), so that inserting and removing can be tested without a browser
  // (tests/test_ui_networks_js.py runs them in node). Insert returns what it added; removing with that
  // record gives back the text exactly as it was, wherever the cursor was and whatever weight the tag has now.
  function separators(before, after) {
    // left: none at the start or after whitespace, " " after a bare comma, ", " after a word;
    // right: none at the end or before a comma, "," before whitespace, ", " before a word.
    const left = !before.trim() ? "" : /,$/.test(before) ? " " : /\s$/.test(before) ? "" : ", ";
    const rest = after.trimStart();
    const right = !rest || rest[0] === "," ? "" : /^\s/.test(after) ? "," : ", ";
    return [left, right];
  }
  function insertPiece(text, at, piece, words) {
    const before = text.slice(0, at), after = text.slice(at);
    const [left, right] = separators(before, after);
    const body = [piece].concat(words || []).join(", ");
    return { text: before + left + body + right + after, cursor: (before + left + body).length,
             added: { left: left, right: right, words: (words || []).slice() } };
  }
  function findTag(text, name) {
    // Every "<lora:" or "<lyco:" opening, its name read up to ":" or ">" and compared whole.
    const open = /<[ \t]*(lora|lyco)\s*:/gi;
    let m;
    while ((m = open.exec(text)) !== null) {
      const end = text.indexOf(">", m.index);
      if (end < 0) { break; }
      const body = text.slice(open.lastIndex, end);
      if (body.split(":")[0].trim() === name) { return [m.index, end + 1]; }
    }
    return null;
  }
  function joinAt(before, after) {
    // What removing a piece from between `before` and `after` leaves: one separator, none at either end.
    if (!before.trim()) { return { text: before + after.replace(/^[\s,]+/, ""), cursor: before.length }; }
    if (!after.trim()) { before = before.replace(/[\s,]+$/, ""); return { text: before, cursor: before.length }; }
    if (/,\s*$/.test(before) && /^\s*,/.test(after)) { before = before.replace(/\s*,\s*$/, ""); }
    else if (/\s$/.test(before)) { after = after.replace(/^[ \t]+/, ""); }
    return { text: before + after, cursor: before.length };
  }
  function removeWord(text, word) {
    const parts = text.split(",");
    const i = parts.findIndex((p) => p.trim() === word);
    if (i < 0) { return text; }
    parts.splice(i, 1);
    return parts.join(",").replace(/^\s+/, "");
  }
  function removeTag(text, name, added) {
    // `added` is the record insertPiece returned (null when the tag was typed or the page reloaded).
    const span = findTag(text, name);
    if (!span) { return null; }
    const [a, b] = span;
    if (added && a >= added.left.length) {
      const start = a - added.left.length;
      const tail = added.words.map((w) => ", " + w).join("") + added.right;
      const before = text.slice(0, start), after = text.slice(b + tail.length);
      // exact only if inserting here again would add these very separators (", zorbstar" must not match
      // the start of ", zorbstar shape")
      const [left, right] = separators(before, after);
      if (text.slice(start, a) === added.left && text.startsWith(tail, b) && left === added.left
          && right === added.right) {
        return { text: before + after, cursor: start };
      }
    }
    // The text around the tag changed since: remove the tag, then the words this card added that are
    // still whole comma-separated parts, and leave one separator where the tag was.
    const joined = joinAt(text.slice(0, a), text.slice(b));
    let rest = joined.text;
    for (const word of (added ? added.words : [])) { rest = removeWord(rest, word); }
    return { text: rest, cursor: Math.min(joined.cursor, rest.length) };
  }
  function insertAt(box, piece) {
    const at = state.focused.has(box) ? box.selectionStart : box.value.length;
    const edit = insertPiece(box.value, at, piece, []);
    setText(box, edit.text, edit.cursor);
  }
  function hasWord(text, word) {
    const lower = text.toLowerCase(), w = word.toLowerCase();
    let i = lower.indexOf(w);
    while (i >= 0) {
      const a = i === 0 || /[\s,(]/.test(lower[i - 1]);
      const b = i + w.length >= lower.length || /[\s,):]/.test(lower[i + w.length]);
      if (a && b) { return true; }
      i = lower.indexOf(w, i + 1);
    }
    return false;
  }
  function status(el, text) {
    const root = el.closest(".lsx-root");
    const line = root && root.querySelector(".lsx-status");
    if (line) { line.textContent = text; }
  }
  function toggle(card) {
    const data = JSON.parse(card.dataset.lora);
    const box = activeBox(card);
    if (!box) { return; }
    if (!data.name) { status(card, data.problem); return; }
    const memory = state.added.get(box) || new Map();
    state.added.set(box, memory);
    const removed = removeTag(box.value, data.name, memory.get(data.name));
    if (removed) {
      memory.delete(data.name);
      setText(box, removed.text, removed.cursor);
      return;
    }
    const words = document.querySelector("#lsx_autoinsert input[type=checkbox]");
    const wanted = (!words || words.checked) ? data.words.filter((w) => !hasWord(box.value, w)) : [];
    const at = state.focused.has(box) ? box.selectionStart : box.value.length;
    const edit = insertPiece(box.value, at, "<lora:" + data.name + ":" + data.weight + ">", wanted);
    memory.set(data.name, edit.added);
    setText(box, edit.text, edit.cursor);
  }
  function openDetails(button) {
    const field = boxOf("lsx_details_name");
    const go = document.getElementById("lsx_details_go");
    if (!field || !go) { return; }
    setText(field, JSON.parse(button.dataset.file));
    (go.matches("button") ? go : go.querySelector("button")).click();
  }
  // Remember every text box focused (the Networks tab may not be in the page yet); activeBox() keeps
  // the last one only if it is one of the prompt boxes the cards target.
  document.addEventListener("focusin", (event) => {
    const el = event.target;
    if (!el.matches || !el.matches("textarea, input[type=text]")) { return; }
    state.focused.add(el);
    if (!el.closest("#lsx_details_panel, #lsx_search, #lsx_details_name")) { state.box = el; }
  });
  document.addEventListener("click", (event) => {
    const el = event.target;
    if (!el.closest) { return; }
    const details = el.closest(".lsx-details");
    if (details) { event.stopPropagation(); openDetails(details); return; }
    const chip = el.closest(".lsx-chip");
    if (chip) {
      const box = activeBox(chip);
      if (box) { insertAt(box, JSON.parse(chip.dataset.word)); }
      return;
    }
    const card = el.closest(".lsx-card");
    if (card) { toggle(card); }
  });
  document.addEventListener("keydown", (event) => {
    const card = event.target.closest && event.target.closest(".lsx-card");
    if (card && (event.key === "Enter" || event.key === " ") && event.target === card) {
      event.preventDefault();
      toggle(card);
    }
  });
  // Clicking a card moves focus away from the prompt; keep the box (and its cursor) that had it.
  document.addEventListener("mousedown", (event) => {
    if (event.target.closest && event.target.closest(".lsx-card, .lsx-chip")) { event.preventDefault(); }
  });
  window.loraSyntax = { toggle: toggle, activeBox: activeBox,
                       text: { insertPiece: insertPiece, removeTag: removeTag, findTag: findTag } };
  return [];
}
