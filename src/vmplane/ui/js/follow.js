// Jobs by what they are for: the VMs a job's tasks act on, by name; and, for a job this tab
// started, a toast when it ends that says how it went (a 202 only means "accepted").

import { get } from "./api.js";
import { toast } from "./dom.js";

const names = new Map(); // VM id -> name, from every VM this tab has seen
const jobVms = new Map(); // job id -> Promise of the VM ids its tasks act on (tasks never change)

export function rememberVms(vms) { for (const v of vms) if (v && v.id && v.name) names.set(v.id, v.name); }
export function vmName(id) { return names.get(id) || id; }
export const knownVmName = (id) => names.has(id);

const vmIdsOf = (job) => [...new Set((job.tasks || []).map((t) => t.resourceId).filter((r) => r && r.startsWith("vm-")))];

/** The ids of the VMs a job acts on (read once per job). */
export function vmsOfJob(jobId) {
  if (!jobVms.has(jobId)) {
    const p = get(`/jobs/${encodeURIComponent(jobId)}`).then(vmIdsOf);
    p.catch(() => jobVms.delete(jobId));
    jobVms.set(jobId, p);
  }
  return jobVms.get(jobId);
}

/** Names for VM ids; ids this tab has not seen are looked up (a deleted VM keeps its id). */
export async function namesOf(ids) {
  await Promise.all(ids.filter((id) => !names.has(id)).map((id) =>
    get(`/vms/${encodeURIComponent(id)}`).then((vm) => rememberVms([vm])).catch((err) => {
      if (err.status === 404) names.set(id, id); // deleted (ids are never reused): do not ask again
    })));
  return ids.map(vmName);
}

// [what it did, what it tried] per job type, for the outcome toast
const VERBS = {
  "vm-create": ["Created", "create"], "vm-start": ["Started", "start"], "vm-stop": ["Stopped", "stop"],
  "vm-shutdown": ["Shut down", "shut down"], "vm-reboot": ["Rebooted", "reboot"], "vm-power-cycle": ["Restarted", "restart"],
  "vm-delete": ["Deleted", "delete"], "vm-revert": ["Reverted", "revert"], "vm-restore": ["Restored", "restore"],
  "vm-update": ["Updated", "update"], "snapshot-create": ["Took a snapshot of", "take a snapshot of"],
  "snapshot-delete": ["Deleted a snapshot of", "delete a snapshot of"], "backup-create": ["Backed up", "back up"],
  "backup-delete": ["Deleted a backup of", "delete a backup of"],
};
const FINAL = new Set(["job.completed", "job.failed", "job.cancelled"]);
const list = (xs) => xs.join(", ");

/** The sentence for a finished job: what it did to which VMs (by name), and what failed, why. */
export async function outcome(job) {
  const [did, tried] = VERBS[job.type] || [`${job.type}:`, job.type];
  const tasks = job.tasks || [];
  const vmOf = (t) => (t.resourceId && t.resourceId.startsWith("vm-") ? t.resourceId : null);
  await namesOf([...new Set(tasks.map(vmOf).filter(Boolean))]);
  const label = (t) => (vmOf(t) ? vmName(vmOf(t)) : t.resourceId || t.id);
  const ok = tasks.filter((t) => t.state === "succeeded").map(label);
  const bad = tasks.filter((t) => t.state === "failed" || t.state === "cancelled");
  if (job.state === "succeeded") return { kind: "info", text: `${did} ${list(ok) || "(nothing)"}.` };
  if (job.state === "cancelled" && !bad.some((t) => t.error)) return { kind: "error", text: `Cancelled: ${tried} ${list(tasks.map(label))}.` };
  if (bad.length === 1 && !ok.length) return { kind: "error", text: `Could not ${tried} ${label(bad[0])}: ${bad[0].error || bad[0].state}` };
  const why = bad.map((t) => `${label(t)}: ${t.error || t.state}`).join("; ");
  const lead = `Could not ${tried} ${list(bad.map(label))} (${why}).`;
  return { kind: "error", text: ok.length ? `${did} ${list(ok)}. ${lead}` : lead };
}

/** Toast how job `jobId` ends, when it ends (followed on the tab's event stream). `vmNames`:
 * {id: name} of the VMs it acts on, when the caller knows them. */
export function followJob(events, jobId, { vmNames = {} } = {}) {
  rememberVms(Object.entries(vmNames).map(([id, name]) => ({ id, name })));
  let done = false;
  const finish = async () => {
    if (done) return;
    done = true;
    off();
    try {
      const { kind, text } = await outcome(await get(`/jobs/${encodeURIComponent(jobId)}`));
      toast(text, kind);
    } catch (err) {
      toast(`Job ${jobId} ended; its outcome could not be read: ${err.message || err}`, "error");
    }
  };
  const off = events.on((ev) => { if (ev.resource === jobId && FINAL.has(ev.type)) finish(); });
  if (events.recent.some((ev) => ev.resource === jobId && FINAL.has(ev.type))) finish(); // ended before we listened
}
