// Nodes: capacity bars per node and for the cluster.

import { get, listAll, post } from "../api.js";
import { badge, bar, batcher, confirmAction, errorText, h, keepFocus, mib, replace, toast, when } from "../dom.js";

function capacity(r, label) {
  return h("div", { class: "capacity" },
    [["CPU", r.cpuUsed, r.cpuTotal, `${r.cpuUsed} of ${r.cpuTotal} vCPUs`],
      ["Memory", r.ramMbUsed, r.ramMbTotal, `${mib(r.ramMbUsed)} of ${mib(r.ramMbTotal)}`],
      ["Disk", r.diskGbUsed, r.diskGbTotal, `${r.diskGbUsed} of ${r.diskGbTotal} GB`]].map(([name, used, total, text]) =>
      h("div", { class: "field" }, h("div", {}, name), bar(used, total, `${label} ${name} used`), h("div", { class: "bar-label" }, text))));
}

export async function nodesPage(main, { events }) {
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
        h("button", { type: "button", class: "secondary", "aria-label": `Drain ${n.hostname}`, onclick: () => drain(n) }, "Drain"))))));
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
  return off;
}
