// VMs: the list with live status (from the event stream), live CPU and memory (each running VM's
// latest stored sample, `stats` of `GET /vms`, polled every sampling period), sortable columns,
// filters and bulk start/stop/delete; a thumbnail of each running VM's screen (its screenshot,
// fetched when its row is on screen, again every THUMB_MS at most).

import { del, get, image, listAll, post } from "../api.js";
import { badge, batcher, confirmAction, errorText, h, keepFocus, mib, pendingMark, replace, td, toast, when } from "../dom.js";

const STATUSES = ["provisioning", "starting", "running", "stopping", "stopped", "error", "deleting"];
const STATS_POLL_MS = 10_000; // the sampler's default period (stats_sample_seconds)
const THUMB_MS = 30_000; // a screen thumbnail is fetched again after this long (slowly: each is a screendump)

// Sortable columns: header, key (a value, or null: no figure, sorted last), first direction.
const cmpText = (a, b) => a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });
const SORTS = {
  name: ["Name", (vm) => vm.name, cmpText, "ascending"],
  status: ["Status", (vm) => vm.status, cmpText, "ascending"],
  node: ["Node", (vm) => vm.nodeId || null, cmpText, "ascending"],
  cpu: ["CPU", (vm) => (vm.stats ? vm.stats.cpuPercent : null), (a, b) => a - b, "descending"],
  memory: ["Memory used", (vm) => (vm.stats ? vm.stats.memoryMb : null), (a, b) => a - b, "descending"],
  created: ["Created", (vm) => vm.createdAt, cmpText, "descending"],
};

/** Sort in place by the column `key`; VMs without the figure (stopped: no CPU) go last either way. */
export function sortVms(list, key, direction) {
  const [, value, cmp] = SORTS[key];
  const sign = direction === "descending" ? -1 : 1;
  return list.sort((a, b) => {
    const va = value(a);
    const vb = value(b);
    if (va === null || vb === null) return va === vb ? cmpText(a.name, b.name) : va === null ? 1 : -1;
    return sign * cmp(va, vb) || cmpText(a.name, b.name);
  });
}

export async function vmsPage(main, { events }) {
  const vms = new Map();
  const selected = new Set();
  for (const vm of await listAll("/vms")) vms.set(vm.id, vm);
  const nodes = await listAll("/nodes");

  const name = h("input", { id: "filter-name", type: "search", placeholder: "part of a name" });
  const status = h("select", { id: "filter-status" }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s }, s)));
  const node = h("select", { id: "filter-node" }, h("option", { value: "" }, "any"), nodes.map((n) => h("option", { value: n.id }, n.hostname)));
  const tag = h("input", { id: "filter-tag", type: "search", placeholder: "a tag" });
  const count = h("span", { class: "muted", "aria-live": "polite" });
  const startBtn = h("button", { type: "button", onclick: () => power("start") }, "Start");
  const stopBtn = h("button", { type: "button", onclick: () => power("stop") }, "Stop");
  const deleteBtn = h("button", { type: "button", class: "danger", onclick: remove }, "Delete");
  const selectAll = h("input", { type: "checkbox", id: "select-all" });
  const body = h("tbody");
  const empty = h("p", { class: "muted" });
  const sort = { key: sessionStorage.getItem("vmplane.vms.sort") || "name", direction: sessionStorage.getItem("vmplane.vms.dir") || "ascending" };
  if (!SORTS[sort.key]) sort.key = "name";
  if (sort.direction !== "descending") sort.direction = "ascending";
  const headers = {};
  // the same order from a control, for small screens (the table's header is hidden there)
  const sortSelect = h("select", { id: "sort-by" }, Object.entries(SORTS).flatMap(([key, [label]]) =>
    ["ascending", "descending"].map((dir) => h("option", { value: `${key}:${dir}` }, `${label} ${dir === "ascending" ? "▲" : "▼"}`))));
  sortSelect.addEventListener("change", () => {
    const [key, dir] = sortSelect.value.split(":");
    sort.direction = dir;
    sort.key = key;
    remember();
  });
  const header = (label) => {
    const key = Object.keys(SORTS).find((k) => SORTS[k][0] === label);
    if (!key) return h("th", { scope: "col" }, label);
    const th = h("th", { scope: "col", dataset: { sort: key } },
      h("button", { type: "button", class: "sort", onclick: () => sortBy(key) }, label));
    headers[key] = th;
    return th;
  };

  const filters = h("form", { class: "row", role: "search", "aria-label": "Filter VMs", onsubmit: (e) => e.preventDefault() },
    h("div", { class: "field" }, h("label", { for: "filter-name" }, "Name"), name),
    h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), status),
    h("div", { class: "field" }, h("label", { for: "filter-node" }, "Node"), node),
    h("div", { class: "field" }, h("label", { for: "filter-tag" }, "Tag"), tag),
    h("div", { class: "field" }, h("label", { for: "sort-by" }, "Sort by"), sortSelect));
  for (const el of [name, status, node, tag]) el.addEventListener("input", draw);

  replace(main,
    h("div", { class: "toolbar" }, h("h1", {}, "Virtual machines"), h("span", { class: "spacer" }),
      h("a", { class: "button", href: "#/create" }, "Create VM")),
    h("div", { class: "card" }, filters),
    h("div", { class: "toolbar", role: "group", "aria-label": "Actions on the selected VMs" },
      h("label", { class: "inline", for: "select-all" }, selectAll, "Select all shown"), startBtn, stopBtn, deleteBtn, count),
    h("div", { class: "table-wrap" },
      h("table", { class: "stack", id: "vm-table" },
        h("caption", { class: "visually-hidden" }, "Virtual machines"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Selected")), ["Name", "Status", "Node", "vCPU", "CPU", "Memory", "Memory used", "Disk", "Addresses", "Uptime", "Created", "Tags"].map(header))),
        body)),
    empty);

  selectAll.addEventListener("change", () => {
    for (const vm of shown()) {
      if (selectAll.checked) selected.add(vm.id); else selected.delete(vm.id);
    }
    draw();
  });

  function sortBy(key) {
    sort.direction = sort.key === key ? (sort.direction === "ascending" ? "descending" : "ascending") : SORTS[key][3];
    sort.key = key;
    remember();
  }

  function remember() {
    sessionStorage.setItem("vmplane.vms.sort", sort.key);
    sessionStorage.setItem("vmplane.vms.dir", sort.direction);
    draw();
  }

  function shown() {
    const q = name.value.trim().toLowerCase();
    return sortVms([...vms.values()].filter((vm) =>
      (!q || vm.name.toLowerCase().includes(q) || (vm.displayName || "").toLowerCase().includes(q)) &&
      (!status.value || vm.status === status.value) &&
      (!node.value || vm.nodeId === node.value) &&
      (!tag.value.trim() || vm.tags.includes(tag.value.trim()))), sort.key, sort.direction);
  }

  // screen thumbnails: vm id -> { src (a data: URL, or null: the VM's node has no display), at, loading }
  const thumbs = new Map();
  const onScreen = new Set();
  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const id = e.target.dataset.thumb;
      if (e.isIntersecting) { onScreen.add(id); loadThumb(id); } else onScreen.delete(id);
    }
  });
  function thumb(vm) {
    if (vm.status !== "running") return null;
    const t = thumbs.get(vm.id);
    const img = h("img", { class: "thumb", alt: "", dataset: { thumb: vm.id }, src: t?.src || "data:,", hidden: !t?.src });
    // the box keeps its size while the image is hidden, so it can be seen coming on screen
    const box = h("span", { class: `thumb-box${t && !t.src && !t.loading ? " none" : ""}`, dataset: { thumb: vm.id } }, img);
    seen.observe(box);
    return box;
  }
  async function loadThumb(id) {
    const t = thumbs.get(id);
    if (t && (t.loading || Date.now() - t.at < THUMB_MS)) return;
    thumbs.set(id, { src: t?.src ?? null, at: t?.at ?? 0, loading: true });
    let src = null;
    try { src = await image(`/vms/${id}/screenshot`); } catch { /* not running any more, or no display: none shown */ }
    // none (no display on its node, or it stopped): asked again only ten times as seldom
    thumbs.set(id, { src, at: src ? Date.now() : Date.now() + 9 * THUMB_MS, loading: false });
    for (const img of body.querySelectorAll("img[data-thumb]")) {
      if (img.dataset.thumb !== id) continue;
      if (src) img.src = src;
      img.hidden = !src;
      img.parentElement.classList.toggle("none", !src); // no screen to show: no room kept for one
    }
  }
  const thumbTimer = setInterval(() => { for (const id of onScreen) loadThumb(id); }, THUMB_MS);

  function row(vm) {
    const box = h("input", { type: "checkbox", "aria-label": `Select ${vm.name}`, checked: selected.has(vm.id) });
    box.addEventListener("change", () => { if (box.checked) selected.add(vm.id); else selected.delete(vm.id); updateActions(); });
    const ips = vm.nics.flatMap((n) => n.ipAddresses);
    return h("tr", { dataset: { vmId: vm.id } },
      h("td", { class: "select", "data-label": "" }, box),
      td("Name", h("a", { href: `#/vms/${vm.id}` }, thumb(vm), vm.name),
        vm.displayName && vm.displayName !== vm.name ? h("div", { class: "muted" }, vm.displayName) : null),
      td("Status", badge(vm.status), vm.error ? h("div", { class: "error-text" }, vm.error) : null,
        vm.pendingRestart ? h("div", {}, pendingMark(vm)) : null),
      td("Node", vm.nodeId || "–"),
      td("vCPU", String(vm.resources.cpu)),
      td("CPU", vm.stats ? `${vm.stats.cpuPercent.toFixed(1)}%` : "–"),
      td("Memory", mib(vm.resources.ramMb)),
      td("Memory used", vm.stats ? mib(vm.stats.memoryMb) : "–"),
      td("Disk", `${vm.resources.diskGb} GB`),
      td("Addresses", ips.join(", ") || "–"),
      td("Uptime", vm.uptime || "–"),
      td("Created", h("time", { datetime: vm.createdAt, title: when(vm.createdAt) }, vm.createdAt.slice(0, 16).replace("T", " "))),
      td("Tags", vm.tags.join(", ") || "–"));
  }

  function draw() {
    sortSelect.value = `${sort.key}:${sort.direction}`;
    for (const [key, th] of Object.entries(headers)) {
      if (key === sort.key) th.setAttribute("aria-sort", sort.direction); else th.removeAttribute("aria-sort");
    }
    const list = shown();
    for (const id of [...selected]) if (!vms.has(id)) selected.delete(id);
    seen.disconnect();
    onScreen.clear();
    keepFocus(body, () => replace(body, list.map(row)));
    empty.textContent = vms.size === 0 ? "No VMs yet." : list.length === 0 ? "No VM matches the filters." : "";
    selectAll.checked = list.length > 0 && list.every((vm) => selected.has(vm.id));
    updateActions();
  }

  function updateActions() {
    const n = selected.size;
    for (const b of [startBtn, stopBtn, deleteBtn]) b.disabled = n === 0;
    count.textContent = `${n} selected · ${shown().length} of ${vms.size} shown`;
  }

  async function power(action) {
    const ids = [...selected];
    const results = await Promise.allSettled(ids.map((id) => post(`/vms/${id}/${action}`)));
    const failed = results.filter((r) => r.status === "rejected");
    const ok = ids.length - failed.length;
    if (ok) toast(`${action === "start" ? "Start" : "Stop"} requested for ${ok} VM${ok > 1 ? "s" : ""}.`);
    for (const f of failed) toast(errorText(f.reason), "error");
  }

  async function remove() {
    const ids = [...selected];
    const names = ids.map((id) => vms.get(id)?.name || id).join(", ");
    if (!(await confirmAction(`Delete ${ids.length} VM${ids.length > 1 ? "s" : ""} (${names})? Their disks are removed.`, "Delete"))) return;
    try {
      const r = await del("/vms", { vmIds: ids });
      toast(`Deleting ${ids.length} VM${ids.length > 1 ? "s" : ""} (job ${r.jobId}).`);
      selected.clear();
      draw();
    } catch (err) {
      toast(errorText(err), "error");
    }
  }

  const refresh = batcher(async (ids) => {
    for (const id of ids) {
      try {
        const known = vms.get(id);
        const fresh = await get(`/vms/${id}`); // no `stats` here: keep the latest sample while it runs
        vms.set(id, { ...fresh, stats: fresh.status === "running" && known ? known.stats : null });
      } catch (err) {
        if (err.status === 404) vms.delete(id);
      }
    }
    draw();
  });

  const off = events.on((ev) => {
    if (!ev.type.startsWith("vm.") || !ev.resource) return;
    if (ev.type === "vm.deleted") { vms.delete(ev.resource); draw(); return; }
    const known = vms.get(ev.resource);
    if (known && ev.data && ev.data.status) { // show the new status at once; the rest follows
      vms.set(ev.resource, { ...known, status: ev.data.status, error: ev.data.error ?? known.error });
      draw();
    }
    refresh(ev.resource);
  });

  // live CPU and memory: the running VMs' latest samples (one list query; the sampler writes them)
  async function pollStats() {
    try {
      const latest = new Map((await listAll("/vms?status=running")).map((vm) => [vm.id, vm.stats]));
      for (const [id, vm] of vms) vms.set(id, { ...vm, stats: latest.get(id) ?? null });
      draw();
    } catch { /* the next poll tries again */ }
  }
  const statsTimer = setInterval(pollStats, STATS_POLL_MS);

  draw();
  return () => { off(); clearInterval(statsTimer); clearInterval(thumbTimer); seen.disconnect(); };
}
