// The VM page's Edit panel: name, display name, CPU, RAM and disk (grow only) through
// PATCH /api/v1/vms/{id}. A running VM takes a new CPU or RAM at its next restart: what waits
// (`pending`) is marked here, with "Restart to apply" (POST /vms/{id}/power-cycle). The server's
// errors show next to the field they name.

import { api, post } from "../api.js";
import { clearErrors, showError } from "../formerrors.js";
import { jobError, watchJob } from "../jobwatch.js";
import { errorText, field, h, replace, toast } from "../dom.js";

const LABELS = { cpu: "vCPUs", ramMb: "memory", diskGb: "disk" };

/**
 * The panel for `vm`. Returns { el, update(vm), stop() }: `update` shows a newer record (the
 * inputs keep what the user is typing; untouched ones follow the record), `stop` ends a job watch.
 */
export function editPanel(initial, { events }) {
  let vm = initial;
  const prefix = "vm-edit";
  const input = (name, attrs) => h("input", { name, id: `${prefix}-${name}`, autocomplete: "off", ...attrs });
  const inputs = {
    name: input("name", { required: true, maxlength: 63, pattern: "[A-Za-z0-9]([A-Za-z0-9\\-]{0,61}[A-Za-z0-9])?" }),
    displayName: input("displayName", { maxlength: 64, placeholder: "the name" }),
    cpu: input("cpu", { type: "number", min: 1, max: 512, step: 1, required: true }),
    ramMb: input("ramMb", { type: "number", min: 64, step: 64, required: true }),
    diskGb: input("diskGb", { type: "number", min: 1, step: 1, required: true }),
  };
  const current = (v) => ({
    name: v.name, displayName: v.displayName && v.displayName !== v.name ? v.displayName : "",
    cpu: String(v.resources.cpu), ramMb: String(v.resources.ramMb), diskGb: String(v.resources.diskGb),
  });
  const touched = new Set();
  for (const [k, el] of Object.entries(inputs)) el.addEventListener("input", () => touched.add(k));

  const alert = h("div", { role: "alert" });
  const pending = h("div", { id: "vm-edit-pending", role: "status" });
  const jobBox = h("div", { class: "job-box", id: "vm-edit-job" });
  const save = h("button", { type: "submit" }, "Save changes");
  const reset = h("button", { type: "button", class: "secondary" }, "Undo edits");
  const form = h("form", { id: "vm-edit", "aria-label": "Edit this VM" },
    alert,
    h("div", { class: "row" }, field("Name", inputs.name), field("Display name", inputs.displayName)),
    h("div", { class: "row" },
      field("vCPUs", inputs.cpu), field("Memory (MiB)", inputs.ramMb),
      field("Disk (GB)", inputs.diskGb, "grow only: a disk cannot shrink")),
    h("div", { class: "toolbar" }, save, reset),
    jobBox,
    pending);

  let watch = null;
  const stop = () => { if (watch) watch.stop(); watch = null; };

  function fill(all) {
    const now = current(vm);
    for (const [k, el] of Object.entries(inputs)) {
      if (all || !touched.has(k)) el.value = now[k];
      el.dataset.current = now[k];
    }
    if (all) touched.clear();
    inputs.diskGb.min = String(vm.resources.diskGb);
  }

  function drawPending() {
    if (!vm.pendingRestart) { replace(pending); return; }
    const what = (vm.pending || []).map((p) => LABELS[p] || p).join(", ");
    const restart = h("button", { type: "button", id: "vm-edit-restart" }, "Restart to apply");
    restart.addEventListener("click", async () => {
      restart.disabled = true;
      try {
        const r = await post(`/vms/${vm.id}/power-cycle`);
        toast(`Restarting ${vm.name} to apply ${what} (job ${r.jobId}).`);
      } catch (err) { restart.disabled = false; toast(errorText(err), "error"); }
    });
    replace(pending, h("p", { class: "pending-restart" },
      `Pending: the new ${what} ${vm.pending.length > 1 ? "take" : "takes"} effect when the VM restarts (a guest reboot is not enough). `,
      restart));
  }

  /** The changed fields as PATCH's body, or null when nothing changed. */
  function changes() {
    const now = current(vm);
    const body = {};
    const resources = {};
    if (inputs.name.value.trim() !== now.name) body.name = inputs.name.value.trim();
    const dn = inputs.displayName.value.trim();
    if (dn !== now.displayName) body.displayName = dn || body.name || vm.name; // empty: follow the name again
    for (const k of ["cpu", "ramMb", "diskGb"]) {
      if (inputs[k].value.trim() !== now[k]) resources[k] = Number(inputs[k].value);
    }
    if (Object.keys(resources).length) body.resources = resources;
    return Object.keys(body).length ? body : null;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form, alert);
    const body = changes();
    if (!body) { replace(alert, h("p", { class: "muted" }, "Nothing changed.")); return; }
    save.disabled = true;
    let r;
    try { r = await api("PATCH", `/vms/${vm.id}`, body); } catch (err) {
      save.disabled = false;
      showError(form, alert, err, prefix);
      return;
    }
    stop();
    watch = watchJob(jobBox, r.jobId, "Saving", events);
    const job = await watch.done;
    watch = null;
    save.disabled = false;
    if (job.state === "succeeded") {
      touched.clear(); // the inputs follow the record again from its next update (what was typed is in it now)
      toast(`${vm.name}: changes saved.`);
    }
    else replace(alert, h("p", { class: "alert" }, `The change ${job.state}: ${jobError(job) || "see the job"}`));
  });
  reset.addEventListener("click", () => { clearErrors(form, alert); fill(true); });

  fill(true);
  drawPending();
  return {
    el: form,
    update(next) { vm = next; fill(false); drawPending(); },
    stop,
  };
}
