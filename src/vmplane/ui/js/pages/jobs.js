// Jobs: the list with progress bars (live), and one job's tasks with their logs.

import { get, post } from "../api.js";
import { badge, batcher, errorText, h, keepFocus, longText, progress, replace, td, toast, when } from "../dom.js";
import { namesOf, vmName, vmsOfJob } from "../follow.js";

const STATES = ["queued", "running", "succeeded", "failed", "partial", "cancelled"];

export async function jobsPage(main, { events }) {
  const state = h("select", { id: "jobs-state" }, h("option", { value: "" }, "any"), STATES.map((s) => h("option", { value: s }, s)));
  const body = h("tbody");
  const note = h("p", { class: "muted" });
  replace(main,
    h("h1", {}, "Jobs"),
    h("form", { class: "row card", role: "search", "aria-label": "Filter jobs", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "jobs-state" }, "State"), state)),
    h("div", { class: "table-wrap" }, h("table", { class: "stack" },
      h("caption", { class: "visually-hidden" }, "Jobs, newest first"),
      h("thead", {}, h("tr", {}, ["Job", "Type", "VMs", "State", "Progress", "Tasks", "By", "Created"].map((c) => h("th", { scope: "col" }, c)))),
      body)),
    note);

  // which VMs each job is for, by name (each job's tasks read once; at most 6 reads at a time)
  const vmCells = new Map();
  async function fillVms(jobs) {
    const queue = jobs.slice();
    const worker = async () => {
      for (let j; (j = queue.shift());) {
        try {
          const ids = await vmsOfJob(j.id);
          const shown = await namesOf(ids);
          const cell = vmCells.get(j.id);
          if (cell) replace(cell, ids.length ? ids.map((id, i) => [i ? ", " : "", h("a", { href: `#/vms/${id}` }, shown[i])]) : "–");
        } catch { /* the job is gone: its row goes with the next load */ }
      }
    };
    await Promise.all(Array.from({ length: 6 }, worker));
  }

  async function load() {
    const page = await get(`/jobs?limit=50${state.value ? `&state=${state.value}` : ""}`);
    const vmsCell = (j) => {
      const cell = vmCells.get(j.id) || h("span", { class: "job-vms" }, "…");
      vmCells.set(j.id, cell);
      return cell;
    };
    keepFocus(body, () => replace(body, page.items.map((j) => h("tr", { dataset: { jobId: j.id } },
      td("Job", h("a", { href: `#/jobs/${j.id}` }, j.id)), td("Type", j.type), td("VMs", vmsCell(j)), td("State", badge(j.state)),
      td("Progress", progress(j.progress, `Progress of ${j.id}`)), td("Tasks", String(j.taskCount)), td("By", j.createdBy || "–"),
      td("Created", when(j.createdAt))))));
    note.textContent = page.items.length ? (page.nextPageToken ? "The 50 newest jobs." : "") : "No jobs.";
    fillVms(page.items.filter((j) => vmCells.get(j.id).textContent === "…"));
  }
  state.addEventListener("change", load);
  const refresh = batcher(load, 300);
  const off = events.on((ev) => { if (ev.type.startsWith("job.")) refresh("list"); });
  await load();
  return off;
}

export async function jobPage(main, { events }, jobId) {
  const head = h("div", { class: "toolbar" });
  const summary = h("div", { class: "card" });
  const tasks = h("div", {});
  const title = h("h1", {}, `Job ${jobId}`);
  replace(main, title, head, summary, h("h2", {}, "Tasks"), tasks);
  const open = new Set();

  async function load() {
    const job = await get(`/jobs/${jobId}`);
    const live = job.state === "queued" || job.state === "running";
    keepFocus(head, () => replace(head, badge(job.state), h("span", { class: "muted" }, job.type),
      live ? h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel job") : null,
      h("a", { href: "#/jobs" }, "All jobs")));
    replace(summary, progress(job.progress, "Job progress"),
      h("dl", { class: "props" },
        h("dt", {}, "Created"), h("dd", {}, `${when(job.createdAt)} by ${job.createdBy || "–"}`),
        h("dt", {}, "Started"), h("dd", {}, when(job.startedAt)),
        h("dt", {}, "Finished"), h("dd", {}, when(job.finishedAt))));
    const details = await Promise.all(job.tasks.slice(0, 50).map((t) => get(`/jobs/${jobId}/tasks/${t.id}`).catch(() => ({ ...t, log: [] }))));
    const vmIds = [...new Set(details.map((t) => t.resourceId).filter((r) => r && r.startsWith("vm-")))];
    await namesOf(vmIds);
    if (vmIds.length) title.textContent = `Job ${jobId}: ${job.type} of ${vmIds.map(vmName).join(", ")}`;
    keepFocus(tasks, () => replace(tasks, details.map((t) => {
      const resource = t.resourceId && t.resourceId.startsWith("vm-") ? h("a", { href: `#/vms/${t.resourceId}` }, vmName(t.resourceId)) : (t.resourceId || "–");
      const d = h("details", { open: open.has(t.id) }, h("summary", {}, `Log (${t.log.length} lines)`), h("pre", { class: "log" }, t.log.join("\n") || "(empty)"));
      d.addEventListener("toggle", () => { if (d.open) open.add(t.id); else open.delete(t.id); });
      return h("section", { class: "card", "aria-label": `Task ${t.id}` },
        h("div", { class: "toolbar" }, h("strong", {}, t.id), badge(t.state), h("span", {}, resource), h("span", { class: "muted" }, `attempts ${t.attempts}`)),
        progress(t.progress, `Progress of ${t.id}`),
        t.error ? h("p", { class: "error-text" }, longText(t.error)) : null,
        d);
    }), job.tasks.length > 50 ? h("p", { class: "muted" }, `The first 50 of ${job.tasks.length} tasks.`) : null));
  }
  async function cancel() {
    try { await post(`/jobs/${jobId}/cancel`); toast(`Cancelling ${jobId}.`); } catch (err) { toast(errorText(err), "error"); }
  }
  const refresh = batcher(load, 300);
  const off = events.on((ev) => {
    const d = ev.data || {};
    if (ev.resource === jobId || d.jobId === jobId || d.id === jobId) refresh("job");
  });
  await load();
  return off;
}
