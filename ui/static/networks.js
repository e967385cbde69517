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
  function insertAt(box, piece) {
    const text = box.value;
    const at = state.focused.has(box) ? box.selectionStart : text.length;
    const before = text.slice(0, at), after = text.slice(at);
    const left = before && !/[\s,]$/.test(before) ? ", " : (before && !/\s$/.test(before) ? " " : "");
    const right = after && !/^[\s,]/.test(after) ? ", " : "";
    setText(box, before + left + piece + right + after, (before + left + piece).length);
  }
  function tidy(text) {
    return text.replace(/[ \t]*,[ \t]*(,[ \t]*)+/g, ", ").replace(/[ \t]{2,}/g, " ")
      .replace(/^[\s,]+|[\s,]+$/g, "");
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
  function removeWord(text, word) {
    const parts = text.split(",");
    const i = parts.findIndex((p) => p.trim() === word);
    if (i < 0) { return text; }
    parts.splice(i, 1);
    return parts.join(",");
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
    const span = findTag(box.value, data.name);
    if (span) {
      let text = box.value.slice(0, span[0]) + box.value.slice(span[1]);
      for (const word of memory.get(data.name) || []) { text = removeWord(text, word); }
      memory.delete(data.name);
      setText(box, tidy(text));
      return;
    }
    const words = document.querySelector("#lsx_autoinsert input[type=checkbox]");
    const wanted = (!words || words.checked) ? data.words.filter((w) => !hasWord(box.value, w)) : [];
    memory.set(data.name, wanted);
    insertAt(box, ["<lora:" + data.name + ":" + data.weight + ">"].concat(wanted).join(", "));
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
  window.loraSyntax = { toggle: toggle, activeBox: activeBox };
  return [];
}
