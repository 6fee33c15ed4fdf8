// Events: a live tail of the event stream, with a type filter and pause.

import { clock, h, replace } from "../dom.js";

const SHOW = 200;

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
  let history = []; // events from before sign-in, oldest first (loaded on request)
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
  earlierBtn.addEventListener("click", async () => {
    const oldest = history[0] || events.recent[0];
    if (!oldest) { count.textContent = "No event yet to go back from; events appear here as they happen."; return; }
    earlierBtn.disabled = true;
    const got = await events.earlier(oldest.id);
    history = [...got, ...history];
    earlierBtn.disabled = got.length === 0 || got[0].id <= 1; // nothing before these
    redraw();
  });
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
  return off;
}
