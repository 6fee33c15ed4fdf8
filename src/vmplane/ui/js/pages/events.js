// Events: a live tail of the event stream, with a type filter and pause. On arrival the latest
// page of past events is loaded (paging back from the stream's start id); "Load earlier events"
// pages further back, PAGE ids at a time.

import { clock, h, replace } from "../dom.js";

const SHOW = 200;
const PAGE = 100; // event ids per step back

function summary(ev) {
  const d = ev.data || {};
  const parts = [];
  if (d.name) parts.push(d.name);
  if (d.status) parts.push(`status ${d.status}`);
  if (d.state) parts.push(`state ${d.state}`);
  if (typeof d.progress === "number" && ev.type.startsWith("job.")) parts.push(`${d.progress}%`);
  if (d.error) parts.push(`error: ${d.error}`);
  return parts.join(" · ");
}

function link(id) {
  if (!id) return "–";
  if (id.startsWith("vm-")) return h("a", { href: `#/vms/${id}` }, id);
  if (id.startsWith("job-")) return h("a", { href: `#/jobs/${id}` }, id);
  return id;
}

export async function eventsPage(main, { events }) {
  const filter = h("input", { id: "events-filter", type: "search", placeholder: "vm. or job.completed" });
  const pause = h("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Pause");
  const list = h("ol", { class: "events-list", role: "log", "aria-label": "Events, newest first", "aria-live": "off", reversed: true });
  const count = h("p", { class: "muted" });
  const earlierBtn = h("button", { type: "button", class: "secondary" }, "Load earlier events");
  let paused = false;
  let history = []; // events from before this tab's stream, oldest first (latest page on arrival, more on request)
  const held = [];

  replace(main,
    h("h1", {}, "Events"),
    h("form", { class: "row card", role: "search", "aria-label": "Filter events", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "events-filter" }, "Type starts with"), filter),
      h("div", { class: "field" }, pause), h("div", { class: "field" }, earlierBtn)),
    count, list);

  const matches = (ev) => !filter.value.trim() || ev.type.startsWith(filter.value.trim());
  const item = (ev) => h("li", { dataset: { type: ev.type } },
    h("time", { datetime: ev.time }, clock(ev.time)), h("span", { class: "muted" }, `#${ev.id}`), h("strong", {}, ev.type),
    h("span", {}, link(ev.resource)), h("span", {}, summary(ev)));

  const status = () => `${events.recent.length} events received since sign-in${history.length ? `, ${history.length} from before loaded` : ""}; the newest first. Stream: ${events.state}.`;
  function redraw() {
    const shown = [...history, ...events.recent].filter(matches).slice(-(SHOW + history.length)).reverse();
    replace(list, shown.map(item));
    count.textContent = status();
  }
  let before = null; // the next page back holds ids below this (null: not known yet)
  async function loadEarlier() {
    if (before === null) {
      const oldest = history[0] || events.recent[0];
      const head = oldest ? oldest.id : await events.head();
      if (head === null) { count.textContent = "The event stream is not connected; no past events to show."; return; }
      before = oldest ? oldest.id : head + 1;
    }
    if (before <= 1) return;
    earlierBtn.disabled = true;
    const got = await events.earlier(before, PAGE);
    const seen = new Set(history.map((e) => e.id));
    history = [...got.filter((e) => !seen.has(e.id)), ...history];
    before = Math.max(1, before - PAGE);
    earlierBtn.disabled = before <= 1; // event ids start at 1: nothing before these
    redraw();
    if (!got.length && before > 1) count.textContent = `${status()} No events of yours among ids ${before} to ${before + PAGE - 1}; load earlier to go further back.`;
  }
  earlierBtn.addEventListener("click", loadEarlier);
  filter.addEventListener("input", redraw);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) { held.length = 0; redraw(); }
  });
  const off = events.on((ev) => {
    if (paused) { held.push(ev); count.textContent = `Paused; ${held.length} new events held.`; return; }
    if (!matches(ev)) return;
    list.prepend(item(ev));
    while (list.children.length > SHOW) list.lastElementChild.remove();
    count.textContent = status();
  });
  redraw();
  loadEarlier(); // the latest page of what happened before arrival
  return off;
}
