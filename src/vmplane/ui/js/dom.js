// Small DOM helpers: element builder, formatting, toasts, confirmation, bars and badges.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function svg(tag, attrs = {}) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

export function badge(status) {
  return h("span", { class: "status", dataset: { status: status || "unknown" } }, status || "unknown");
}

/** "restart to apply" beside a running VM whose resize waits for a restart (`pendingRestart`), else null. */
export function pendingMark(vm) {
  if (!vm.pendingRestart) return null;
  const what = (vm.pending || []).join(", ");
  return h("span", { class: "pending-restart", title: `Waiting for a restart (power-cycle): ${what}` }, `restart to apply: ${what}`);
}

/** A horizontal bar with role=meter (value of max), and its label below. */
export function bar(value, max, label) {
  const pct = max > 0 ? Math.min(100, Math.round((value / max) * 100)) : 0;
  return h("div", {},
    h("div", { class: pct >= 90 ? "bar high" : "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": max,
      "aria-valuenow": value, "aria-label": label, "aria-valuetext": `${pct}%` },
      h("span", { style: `width:${pct}%` })),
  );
}

/** A progress bar (0-100) as a native <progress>, labelled. */
export function progress(value, label) {
  const p = h("progress", { max: 100, value: value ?? 0, "aria-label": label });
  return h("span", { class: "progress" }, p, " ", h("span", { class: "bar-label" }, `${value ?? 0}%`));
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function mib(n) { return n >= 1024 ? `${(n / 1024).toFixed(n % 1024 ? 1 : 0)} GiB` : `${n} MiB`; }

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString();
}

export function clock(iso) {
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false });
}

const LONG = 160; // characters: a longer message opens folded, with "Show all"

/** A message that may be long: shown whole (wrapped, never cut); past LONG characters folded to
 * a few lines with a "Show all" toggle. `onOpen` is called when it is unfolded. */
export function longText(message, onOpen) {
  const text = h("span", { class: "long-text" }, message);
  if (String(message).length <= LONG) return text;
  text.classList.add("folded");
  const more = h("button", { type: "button", class: "link", "aria-expanded": "false" }, "Show all");
  more.addEventListener("click", () => {
    const open = text.classList.toggle("folded") === false;
    more.setAttribute("aria-expanded", String(open));
    more.textContent = open ? "Show less" : "Show all";
    if (open && onOpen) onOpen();
  });
  return h("span", { class: "long" }, text, " ", more);
}

/** A toast; it goes after 5 s (9 s for errors), but not while the pointer or focus is on it, and
 * not once unfolded; "Dismiss" closes it at once. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  let keep = false;
  const t = h("div", { class: `toast ${kind}` });
  const close = h("button", { type: "button", class: "dismiss", "aria-label": "Dismiss", onclick: () => t.remove() }, "×");
  replace(t, longText(message, () => { keep = true; }), close);
  box.append(t);
  let hovered = false;
  t.addEventListener("pointerenter", () => { hovered = true; });
  t.addEventListener("pointerleave", () => { hovered = false; });
  const expire = () => {
    if (keep) return;
    if (hovered || t.contains(document.activeElement)) { setTimeout(expire, 2000); return; }
    t.remove();
  };
  setTimeout(expire, kind === "error" ? 9000 : 5000);
  return t;
}

/** Mark `control` as refused with `message` shown under it (and read with it); cleared when edited. */
export function fieldError(control, message) {
  const id = `${control.id}-error`;
  let el = document.getElementById(id);
  if (!el) {
    el = h("p", { class: "field-error", id });
    const box = control.closest(".field");
    if (box) box.append(el);
    else control.after(el);
    control.setAttribute("aria-describedby", [control.getAttribute("aria-describedby"), id].filter(Boolean).join(" "));
    control.addEventListener("input", () => clearFieldError(control), { once: true });
  }
  el.textContent = message;
  control.setAttribute("aria-invalid", "true");
}

export function clearFieldError(control) {
  const id = `${control.id}-error`;
  document.getElementById(id)?.remove();
  control.removeAttribute("aria-invalid");
  const rest = (control.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && x !== id);
  if (rest.length) control.setAttribute("aria-describedby", rest.join(" "));
  else control.removeAttribute("aria-describedby");
}

export function errorText(err) {
  if (err && err.body && err.body.details && err.body.details.field) return `${err.message} (field: ${err.body.details.field})`;
  return err && err.message ? err.message : String(err);
}

/** Ask in the page's own <dialog>; resolves true when confirmed. */
export function confirmAction(text, okLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

/** Calls fn at most once per `ms`, with the latest arguments collected into a Set. */
export function batcher(fn, ms = 250) {
  let pending = new Set();
  let timer = null;
  return (key) => {
    pending.add(key);
    if (timer) return;
    timer = setTimeout(() => {
      const keys = pending;
      pending = new Set();
      timer = null;
      fn(keys);
    }, ms);
  };
}

export function field(labelText, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, labelText), control, hintEl);
}

export function td(label, ...children) { return h("td", { "data-label": label }, ...children); }

/** Re-render `container` without losing the keyboard focus inside it (live lists redraw). */
export function keepFocus(container, render) {
  const keyOf = (el) => el.getAttribute("aria-label") || el.getAttribute("href") || el.textContent;
  const active = document.activeElement;
  const key = active && container.contains(active) ? keyOf(active) : null;
  render();
  if (key === null) return;
  for (const el of container.querySelectorAll("a, button, input, select, textarea")) {
    if (keyOf(el) === key) { el.focus({ preventScroll: true }); break; }
  }
}
