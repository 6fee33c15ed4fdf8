// Nodes: capacity bars per node and for the cluster; each node's last hour (expandable).

import { get, listAll, post } from "../api.js";
import { HistoryChart } from "../chart.js";
import { badge, bar, batcher, confirmAction, errorText, h, keepFocus, mib, replace, toast, when } from "../dom.js";

function capacity(r, label) {
  return h("div", { class: "capacity" },
    [["CPU", r.cpuUsed, r.cpuTotal, `${r.cpuUsed} of ${r.cpuTotal} vCPUs`],
      ["Memory", r.ramMbUsed, r.ramMbTotal, `${mib(r.ramMbUsed)} of ${mib(r.ramMbTotal)}`],
      ["Disk", r.diskGbUsed, r.diskGbTotal, `${r.diskGbUsed} of ${r.diskGbTotal} GB`]].map(([name, used, total, text]) =>
      h("div", { class: "field" }, h("div", {}, name), bar(used, total, `${label} ${name} used`), h("div", { class: "bar-label" }, text))));
}

// A node's last hour from its stored samples (GET /nodes/{id}/stats/history): claimed vCPUs and
// RAM and, for a node on the control plane's host, its measured CPU and memory use. Loaded when
// opened, then the new samples every sampling period while it stays open.
function nodeHistory(n) {
  const charts = {
    cpu: new HistoryChart("vCPUs claimed", { format: (v) => `${v}` }),
    ram: new HistoryChart("RAM claimed", { format: (v) => mib(v) }),
    host: new HistoryChart("Host use", { max: 100, series: ["CPU", "memory"], format: (v) => `${v.toFixed(0)}%` }),
  };
  const note = h("p", { class: "muted", role: "status" });
  const body = h("div", { class: "charts" }, charts.cpu.el, charts.ram.el);
  const el = h("details", { class: "history", id: `history-${n.id}` },
    h("summary", {}, `Last hour on ${n.hostname}`), note, body);
  let since = null;
  let timer = null;
  let hasHost = false;
  async function load() {
    clearTimeout(timer);
    if (!el.open || !el.isConnected) return;
    try {
      const r = await get(`/nodes/${encodeURIComponent(n.id)}/stats/history${since ? `?since=${encodeURIComponent(since)}` : ""}`);
      const t = (i) => Date.parse(i.at);
      for (const c of Object.values(charts)) c.gapMs = Math.max(30_000, 3 * r.intervalSeconds * 1000);
      charts.cpu.extend(r.items.map((i) => [t(i), [i.cpuUsed]]));
      charts.ram.extend(r.items.map((i) => [t(i), [i.ramMbUsed]]));
      const host = r.items.filter((i) => i.hostCpuPercent !== null || i.hostMemoryPercent !== null);
      if (host.length && !hasHost) { hasHost = true; body.append(charts.host.el); }
      charts.host.extend(host.map((i) => [t(i), [i.hostCpuPercent, i.hostMemoryPercent]]));
      if (r.items.length) since = r.items[r.items.length - 1].at;
      const count = charts.cpu.points.length;
      note.textContent = count ? `${count} samples, one every ${r.intervalSeconds} s.` : "No samples in the last hour yet.";
      timer = setTimeout(load, Math.max(2, r.intervalSeconds || 10) * 1000);
    } catch (err) {
      note.textContent = `No history: ${errorText(err)}`;
    }
  }
  el.addEventListener("toggle", load);
  return { el, dispose: () => clearTimeout(timer) };
}

export async function nodesPage(main, { events }) {
  const histories = new Map(); // node id -> its history (kept across redraws, open or not)
  const cluster = h("section", { class: "card", "aria-labelledby": "cluster-h" });
  const grid = h("div", { class: "grid" });
  replace(main, h("h1", {}, "Nodes"), cluster, grid);

  async function load() {
    const [nodes, total] = await Promise.all([listAll("/nodes"), get("/cluster/resources")]);
    replace(cluster, h("h2", { id: "cluster-h" }, `Cluster (${nodes.length} node${nodes.length === 1 ? "" : "s"})`), capacity(total, "Cluster"));
    keepFocus(grid, () => replace(grid, nodes.map((n) => h("section", { class: "card", "aria-labelledby": `node-${n.id}` },
      h("div", { class: "toolbar" }, h("h2", { id: `node-${n.id}` }, n.hostname), badge(n.status), n.cordoned ? badge("cordoned") : null),
      h("p", { class: "muted" }, `${n.id} · ${n.driver}${n.driver !== n.hypervisor ? ` (${n.hypervisor})` : ""} · heartbeat ${when(n.heartbeatAt)}`),
      capacity(n.resources, n.hostname),
      h("div", { class: "toolbar", role: "group", "aria-label": `Actions on ${n.hostname}` },
        n.cordoned
          ? h("button", { type: "button", class: "secondary", "aria-label": `Uncordon ${n.hostname}`, onclick: () => act(n, "uncordon") }, "Uncordon")
          : h("button", { type: "button", class: "secondary", "aria-label": `Cordon ${n.hostname}`, onclick: () => act(n, "cordon") }, "Cordon"),
        h("button", { type: "button", class: "secondary", "aria-label": `Drain ${n.hostname}`, onclick: () => drain(n) }, "Drain")),
      historyOf(n).el))));
  }
  function historyOf(n) {
    if (!histories.has(n.id)) histories.set(n.id, nodeHistory(n));
    return histories.get(n.id);
  }
  async function act(n, action) {
    try { await post(`/nodes/${n.id}/${action}`); toast(`${n.hostname}: ${action}ed.`); load(); } catch (err) { toast(errorText(err), "error"); }
  }
  async function drain(n) {
    if (!(await confirmAction(`Drain ${n.hostname}? It is cordoned and its stopped VMs move to other nodes.`, "Drain"))) return;
    try {
      const r = await post(`/nodes/${n.id}/drain`);
      toast(r.jobId ? `Draining ${n.hostname} (job ${r.jobId}).` : `${n.hostname} cordoned; no VM to move.`);
      load();
    } catch (err) { toast(errorText(err), "error"); }
  }
  const refresh = batcher(load, 500);
  const off = events.on((ev) => { if (ev.type.startsWith("node.") || ev.type.startsWith("vm.")) refresh("all"); });
  await load();
  return () => { off(); for (const hist of histories.values()) hist.dispose(); };
}
