// VM detail: resources, NICs, live stats charts, the serial console, the display (noVNC), snapshots,
// backups, firewall.

import { del, get, post, put } from "../api.js";
import { Chart, HistoryChart } from "../chart.js";
import { SerialConsole } from "../console.js";
import { GraphicalConsole } from "../display.js";
import { editPanel } from "./vmedit.js";
import { followJob, rememberVms } from "../follow.js";
import { badge, batcher, bytes, confirmAction, errorText, field, h, keepFocus, longText, mib, pendingMark, replace, td, toast, when } from "../dom.js";

// [action, label, why it is not offered now (null: offered)]
const UNPLACED = "It is on no node (never placed): delete it, or create it again once a node has room.";
const ACTIONS = [
  ["start", "Start", (vm) => (vm.status !== "stopped" && vm.status !== "error" ? `Start needs a stopped VM; it is ${vm.status}.` : vm.nodeId ? null : UNPLACED)],
  ["stop", "Stop", (vm) => (vm.status === "running" || vm.status === "starting" ? null : `It is ${vm.status}.`)],
  ["shutdown", "Shut down", (vm) => (vm.status === "running" ? null : `It is ${vm.status}.`)],
  ["reboot", "Reboot", (vm) => (vm.status === "running" ? null : `It is ${vm.status}.`)],
  ["power-cycle", "Restart", (vm) => (!["running", "stopped", "error"].includes(vm.status) ? `It is ${vm.status}.` : vm.nodeId ? null : UNPLACED)],
];

export async function vmPage(main, { events, navigate }, vmId, { display: openDisplay = false } = {}) {
  let vm = await get(`/vms/${vmId}`);
  rememberVms([vm]);
  const title = h("h1", {}, vm.name, vm.displayName && vm.displayName !== vm.name ? h("span", { class: "muted" }, ` (${vm.displayName})`) : null);
  const status = h("span", { id: "vm-status" });
  const actions = h("div", { class: "toolbar", role: "group", "aria-label": "Power" });
  const overview = h("dl", { class: "props" });
  const nics = h("div", {});
  const charts = {
    cpu: new Chart("CPU", { max: 100, format: (v) => `${v.toFixed(1)}%` }),
    mem: new Chart("Memory used", { format: (v) => mib(Math.round(v)) }),
    net: new Chart("Network", { series: ["rx", "tx"], format: (v) => `${bytes(v)}/s` }),
    disk: new Chart("Disk", { series: ["read", "write"], format: (v) => `${bytes(v)}/s` }),
  };
  const statsNote = h("p", { class: "muted", role: "status" });
  const history = vmHistory(vm.id);
  const serial = new SerialConsole(vm.id);
  const display = new GraphicalConsole(vm.id);
  const snapshots = h("div", {});
  const backups = h("div", {});
  const firewall = h("div", {});
  const edit = editPanel(vm, { events });

  const section = (id, heading, ...body) =>
    h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, heading), ...body);

  replace(main,
    h("div", { class: "toolbar" }, title, status),
    actions,
    h("div", { class: "grid" },
      section("s-overview", "Overview", overview),
      section("s-nics", "Network interfaces", nics)),
    section("s-edit", "Edit", edit.el),
    section("s-stats", "Statistics", statsNote, h("div", { class: "charts" }, Object.values(charts).map((c) => c.el))),
    section("s-history", "Last hour", history.el),
    section("s-console", "Serial console", serial.el),
    section("s-display", "Display", display.el),
    h("div", { class: "grid" },
      section("s-snapshots", "Snapshots", snapshots),
      section("s-backups", "Backups", backups)),
    section("s-firewall", "Firewall", firewall));

  // the template by name (its id only when it is gone or not readable)
  let template = null;
  const templateLabel = () => (!vm.templateId ? "–" : template && template.id === vm.templateId ? template.name : vm.templateId);
  async function loadTemplate() {
    if (!vm.templateId || (template && template.id === vm.templateId)) return;
    try { template = await get(`/templates/${encodeURIComponent(vm.templateId)}`); drawVm(); } catch { /* deleted: the id stays */ }
  }

  function drawVm() {
    edit.update(vm);
    serial.setVm(vm);
    display.setVm(vm);
    replace(status, badge(vm.status), " ", pendingMark(vm));
    keepFocus(actions, () => replace(actions,
      ACTIONS.map(([action, label, whyNot]) => {
        const why = whyNot(vm);
        return h("button", { type: "button", disabled: why !== null, title: why, onclick: () => power(action, label) }, label);
      }),
      h("button", { type: "button", class: "danger", onclick: remove }, "Delete")));
    const r = vm.resources;
    replace(overview, ...[
      ["Status", badge(vm.status)], ["Pending restart", pendingMark(vm)], ["Error", vm.error ? h("span", { class: "error-text" }, longText(vm.error)) : null], ["ID", vm.id], ["UUID", vm.uuid], ["Node", vm.nodeId || "–"],
      ["vCPUs", String(r.cpu)], ["Memory", mib(r.ramMb)], ["Disk", `${r.diskGb} GB`],
      ["Template", templateLabel()], ["From snapshot", vm.snapshotId], ["Uptime", vm.uptime || "–"],
      ["Tags", vm.tags.join(", ") || "–"],
      ["SSH", vm.ssh ? `ssh -p ${vm.ssh.port} ${vm.ssh.user}@${vm.ssh.host}` : null],
      ["Forwarded ports", (vm.expose || []).map((e) => `${e.hostPort ?? "?"}→${e.port}/${e.protocol}`).join(", ") || null],
      ["Created", when(vm.createdAt)],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    replace(nics, vm.nics.length === 0 ? h("p", { class: "muted" }, "No network interfaces.") :
      h("table", { class: "stack" },
        h("thead", {}, h("tr", {}, ["Network", "MAC", "Addresses"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, vm.nics.map((n) => h("tr", {}, td("Network", n.network), td("MAC", n.mac), td("Addresses", n.ipAddresses.join(", ") || "–"))))));
  }

  async function power(action, label) {
    try {
      const r = await post(`/vms/${vm.id}/${action}`);
      toast(`${label} ${vm.name}: requested.`);
      followJob(events, r.jobId, { vmNames: { [vm.id]: vm.name } });
    } catch (err) { toast(errorText(err), "error"); }
  }

  async function remove() {
    if (!(await confirmAction(`Delete ${vm.name}? Its disk is removed.`, "Delete"))) return;
    try {
      const r = await del(`/vms/${vm.id}`);
      toast(`Deleting ${vm.name}.`);
      followJob(events, r.jobId, { vmNames: { [vm.id]: vm.name } });
      navigate("#/vms");
    } catch (err) { toast(errorText(err), "error"); }
  }

  // --- stats: polled every 2 s while the VM runs; rates from the counters' differences
  let last = null;
  let statsTimer = null;
  let statsOff = false;
  let samples = 0;
  async function sample() {
    if (vm.status !== "running" || statsOff) {
      if (last || samples) for (const c of Object.values(charts)) c.clear(); // a stopped VM has no current figures
      last = null;
      samples = 0;
      if (!statsOff) statsNote.textContent = "Statistics appear while the VM runs.";
      return;
    }
    try {
      const s = await get(`/vms/${vm.id}/stats`);
      if (vm.status !== "running") return; // stopped while asking: keep the charts empty
      const now = performance.now();
      charts.cpu.add(s.cpuPercent);
      charts.mem.add(s.memoryMb);
      if (last) {
        const dt = Math.max(0.001, (now - last.t) / 1000);
        const rate = (a, b) => Math.max(0, (a - b) / dt);
        charts.net.add(rate(s.netRxBytes, last.s.netRxBytes), rate(s.netTxBytes, last.s.netTxBytes));
        charts.disk.add(rate(s.diskReadBytes, last.s.diskReadBytes), rate(s.diskWriteBytes, last.s.diskWriteBytes));
      }
      last = { s, t: now };
      if (++samples % 5 === 0) refresh("vm"); // keeps the uptime and addresses current
      statsNote.textContent = `Updated every 2 s · memory ${s.memorySource === "guest" ? "as the guest reports it" : "is host RSS (the guest reports none)"}, total ${mib(s.memoryTotalMb)} · up ${Math.round(s.uptimeSeconds)} s`;
    } catch (err) {
      if (err.status === 409) { statsOff = true; statsNote.textContent = `No statistics: ${err.message}`; }
    }
  }
  statsTimer = setInterval(sample, 2000);
  sample();

  // --- snapshots
  async function loadSnapshots() {
    const { items } = await get(`/snapshots?vmId=${encodeURIComponent(vm.id)}`);
    const nameIn = h("input", { name: "snapshotName", required: true, maxlength: 63, autocomplete: "off" });
    const form = h("form", { class: "row" }, field("New snapshot name", nameIn), h("div", { class: "field" }, h("button", { type: "submit" }, "Take snapshot")));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const r = await post(`/vms/${vm.id}/snapshots`, { name: nameIn.value.trim() });
        toast(`Snapshot ${nameIn.value.trim()} started (job ${r.jobId}).`);
        nameIn.value = "";
      } catch (err) { toast(errorText(err), "error"); }
    });
    keepFocus(snapshots, () => replace(snapshots, form, items.length === 0 ? h("p", { class: "muted" }, "No snapshots.") :
      h("table", { class: "stack" },
        h("thead", {}, h("tr", {}, ["Name", "Status", "Size", "Taken", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, items.map((s) => h("tr", {},
          td("Name", s.name), td("Status", badge(s.status)), td("Size", bytes(s.sizeBytes)), td("Taken", when(s.createdAt)),
          td("Actions",
            h("button", { type: "button", class: "secondary", "aria-label": `Revert to ${s.name}`, onclick: () => revert(s) }, "Revert"), " ",
            h("button", { type: "button", class: "secondary", "aria-label": `Delete snapshot ${s.name}`, onclick: () => dropSnapshot(s) }, "Delete"))))))));
  }
  async function revert(s) {
    if (!(await confirmAction(`Revert ${vm.name} to snapshot ${s.name}? Changes since then are lost.`, "Revert"))) return;
    try { const r = await post(`/vms/${vm.id}/revert`, { snapshotId: s.id }); toast(`Reverting (job ${r.jobId}).`); } catch (err) { toast(errorText(err), "error"); }
  }
  async function dropSnapshot(s) {
    if (!(await confirmAction(`Delete snapshot ${s.name}?`, "Delete"))) return;
    try { const r = await del(`/snapshots/${s.id}`); toast(`Deleting snapshot (job ${r.jobId}).`); } catch (err) { toast(errorText(err), "error"); }
  }

  // --- backups
  async function loadBackups() {
    const data = await get(`/vms/${vm.id}/backups`);
    const notes = h("input", { name: "notes", maxlength: 1000, autocomplete: "off" });
    const form = h("form", { class: "row" }, field("Notes", notes), h("div", { class: "field" }, h("button", { type: "submit", disabled: data.backupInProgress }, "Back up now")));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try { const r = await post(`/vms/${vm.id}/backups`, { notes: notes.value }); toast(`Backup started (job ${r.jobId}).`); notes.value = ""; } catch (err) { toast(errorText(err), "error"); }
    });
    keepFocus(backups, () => replace(backups, form,
      data.backupInProgress ? h("p", { class: "muted" }, "A backup is in progress.") : null,
      data.restoreInProgress ? h("p", { class: "muted" }, "A restore is in progress.") : null,
      data.items.length === 0 ? h("p", { class: "muted" }, "No backups.") :
        h("table", { class: "stack" },
          h("thead", {}, h("tr", {}, ["Taken", "Status", "Notes", "Size", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, data.items.map((b) => h("tr", {},
            td("Taken", when(b.createdAt)), td("Status", badge(b.status), b.error ? h("div", { class: "error-text" }, b.error) : null),
            td("Notes", b.notes || "–"), td("Size", bytes(b.logicalBytes)),
            td("Actions",
              h("button", { type: "button", class: "secondary", "aria-label": `Restore backup of ${when(b.createdAt)}`, disabled: b.status !== "succeeded", onclick: () => restore(b) }, "Restore"), " ",
              h("button", { type: "button", class: "secondary", "aria-label": `Delete backup of ${when(b.createdAt)}`, onclick: () => dropBackup(b) }, "Delete"))))))));
  }
  async function restore(b) {
    if (!(await confirmAction(`Restore ${vm.name}'s disk from the backup of ${when(b.createdAt)}? Its current disk is replaced.`, "Restore"))) return;
    try { const r = await post(`/vms/${vm.id}/restore`, { backupId: b.id }); toast(`Restoring (job ${r.jobId}).`); } catch (err) { toast(errorText(err), "error"); }
  }
  async function dropBackup(b) {
    if (!(await confirmAction("Delete this backup?", "Delete"))) return;
    try { const r = await del(`/backups/${b.id}`); toast(`Deleting backup (job ${r.jobId}).`); } catch (err) { toast(errorText(err), "error"); }
  }

  // --- firewall
  async function loadFirewall() {
    const fw = await get(`/vms/${vm.id}/firewall`);
    const enabled = h("input", { type: "checkbox", id: "fw-enabled", checked: fw.enabled });
    const policy = (name, value) => h("select", { name }, ["ACCEPT", "DROP", "REJECT"].map((p) => h("option", { value: p, selected: p === value }, p)));
    const pin = policy("policyIn", fw.policyIn);
    const pout = policy("policyOut", fw.policyOut);
    const options = h("form", { class: "row", "aria-label": "Firewall options" },
      h("div", { class: "field" }, h("label", { class: "inline", for: "fw-enabled" }, enabled, "Enabled")),
      field("Inbound policy", pin), field("Outbound policy", pout),
      h("div", { class: "field" }, h("button", { type: "submit" }, "Save options")));
    options.addEventListener("submit", async (e) => {
      e.preventDefault();
      try { await put(`/vms/${vm.id}/firewall`, { enabled: enabled.checked, policyIn: pin.value, policyOut: pout.value }); toast("Firewall options saved."); loadFirewall(); } catch (err) { toast(errorText(err), "error"); }
    });
    const sel = (name, values) => h("select", { name }, values.map((v) => h("option", { value: v }, v || "any")));
    const rType = sel("type", ["in", "out"]);
    const rAction = sel("action", ["ACCEPT", "DROP", "REJECT"]);
    const rProto = sel("proto", ["tcp", "udp", "icmp", "icmpv6", ""]);
    const rPort = h("input", { name: "dport", size: 10, placeholder: "22 or 80,443" });
    const rSource = h("input", { name: "source", size: 16, placeholder: "10.0.0.0/8" });
    const rComment = h("input", { name: "comment", size: 16, maxlength: 256 });
    const add = h("form", { class: "row", "aria-label": "Add a firewall rule" },
      field("Direction", rType), field("Action", rAction), field("Protocol", rProto), field("Port", rPort), field("Source", rSource), field("Comment", rComment),
      h("div", { class: "field" }, h("button", { type: "submit" }, "Add rule")));
    add.addEventListener("submit", async (e) => {
      e.preventDefault();
      const rule = { type: rType.value, action: rAction.value, enable: 1 };
      if (rProto.value) rule.proto = rProto.value;
      for (const [k, el] of [["dport", rPort], ["source", rSource], ["comment", rComment]]) if (el.value.trim()) rule[k] = el.value.trim();
      try { await post(`/vms/${vm.id}/firewall/rules`, rule); toast("Rule added."); loadFirewall(); } catch (err) { toast(errorText(err), "error"); }
    });
    keepFocus(firewall, () => replace(firewall, options,
      fw.rules.length === 0 ? h("p", { class: "muted" }, "No rules.") :
        h("table", { class: "stack" },
          h("caption", {}, "Rules (the first enabled rule that matches decides)"),
          h("thead", {}, h("tr", {}, ["#", "Direction", "Action", "Protocol", "Port", "Source", "Comment", ""].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, fw.rules.map((r) => h("tr", {},
            td("#", String(r.pos)), td("Direction", r.type), td("Action", r.action), td("Protocol", r.proto || "any"),
            td("Port", r.dport || "any"), td("Source", r.source || "any"), td("Comment", r.comment || ""),
            td("", h("button", { type: "button", class: "secondary", "aria-label": `Delete rule ${r.pos}`, onclick: async () => {
              try { await del(`/vms/${vm.id}/firewall/rules/${r.pos}`); toast("Rule deleted."); loadFirewall(); } catch (err) { toast(errorText(err), "error"); }
            } }, "Delete")))))),
      h("h3", {}, "Add a rule"), add));
  }

  const soft = (p) => p.catch((err) => console.warn(err));
  const refresh = batcher(async (what) => {
    if (what.has("vm")) {
      try { vm = await get(`/vms/${vm.id}`); drawVm(); } catch (err) {
        if (err.status === 404) { toast(`${vm.name} was deleted.`); navigate("#/vms"); return; }
      }
    }
    if (what.has("jobs")) { soft(loadSnapshots()); soft(loadBackups()); }
  }, 200);

  const off = events.on((ev) => {
    if (ev.type.startsWith("vm.") && ev.resource === vm.id) {
      if (ev.data && ev.data.status) { vm = { ...vm, status: ev.data.status, error: ev.data.error ?? vm.error }; drawVm(); }
      refresh("vm");
    } else if (ev.type.startsWith("job.") || ev.type.startsWith("task.")) {
      refresh("jobs");
    }
  });
  // what changed between the first GET and this subscription came as events nobody heard
  // (a create that failed while the page loaded stayed "starting"): read the VM once more
  refresh("vm");

  drawVm();
  if (openDisplay) { // #/vms/ID/display (`vmplane vm display`): the display, connected
    document.getElementById("s-display").scrollIntoView();
    if (!display.unavailable) display.connect();
  }
  soft(loadTemplate());
  await Promise.all([soft(loadSnapshots()), soft(loadBackups()), soft(loadFirewall())]);
  return () => { off(); clearInterval(statsTimer); serial.dispose(); display.dispose(); edit.stop(); history.dispose(); };
}

/** #/vms/ID/display: the VM's page, at its display, connected. */
export function vmDisplayPage(main, ctx, vmId) {
  return vmPage(main, ctx, vmId, { display: true });
}

// --- history: the stored samples of the last hour (GET /vms/{id}/stats/history), then the new
// ones every sampling period, so the graphs continue live; gaps where the VM did not run.
function vmHistory(vmId) {
  const charts = {
    cpu: new HistoryChart("CPU", { max: 100, format: (v) => `${v.toFixed(1)}%` }),
    mem: new HistoryChart("Memory used", { format: (v) => mib(Math.round(v)) }),
    net: new HistoryChart("Network", { series: ["rx", "tx"], format: (v) => `${bytes(v)}/s` }),
    disk: new HistoryChart("Disk", { series: ["read", "write"], format: (v) => `${bytes(v)}/s` }),
  };
  const note = h("p", { class: "muted", role: "status" });
  const el = h("div", { id: "vm-history" }, note, h("div", { class: "charts" }, Object.values(charts).map((c) => c.el)));
  let since = null;
  let timer = null;
  let gone = false;
  async function load() {
    try {
      const r = await get(`/vms/${vmId}/stats/history${since ? `?since=${encodeURIComponent(since)}` : ""}`);
      if (gone) return;
      const point = (i) => Date.parse(i.at);
      const items = r.items;
      for (const c of Object.values(charts)) c.gapMs = Math.max(30_000, 3 * r.intervalSeconds * 1000);
      charts.cpu.extend(items.map((i) => [point(i), [i.cpuPercent]]));
      charts.mem.extend(items.map((i) => [point(i), [i.memoryMb]]));
      charts.net.extend(items.map((i) => [point(i), [i.netRxBps, i.netTxBps]]));
      charts.disk.extend(items.map((i) => [point(i), [i.diskReadBps, i.diskWriteBps]]));
      if (items.length) since = items[items.length - 1].at;
      const n = charts.cpu.points.length;
      note.textContent = n ? `${n} samples, one every ${r.intervalSeconds} s while the VM runs.` : "No samples in the last hour: they are recorded while the VM runs.";
      clearTimeout(timer);
      timer = setTimeout(load, Math.max(2, r.intervalSeconds || 10) * 1000);
    } catch (err) {
      note.textContent = `No history: ${errorText(err)}`;
    }
  }
  load();
  return { el, dispose: () => { gone = true; clearTimeout(timer); } };
}
