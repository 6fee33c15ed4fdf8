// Create VM: template, size, ISO, boot order, firmware, node, SSH key, user-data.

import { ApiError, listAll, post } from "../api.js";
import { clearFieldError, errorText, field, fieldError, h, longText, replace, toast } from "../dom.js";
import { followJob } from "../follow.js";

const SIZES = [
  ["small", "Small: 1 vCPU, 512 MiB, 10 GB", 1, 512, 10],
  ["medium", "Medium: 2 vCPU, 2 GiB, 20 GB", 2, 2048, 20],
  ["large", "Large: 4 vCPU, 8 GiB, 50 GB", 4, 8192, 50],
];

// The server's rule for a VM name (domain/names.py NAME_RE): a DNS label. Chromium compiles
// `pattern` with the `v` flag, where a literal "-" in a class must be escaped.
const NAME_PATTERN = "[A-Za-z0-9](?:[A-Za-z0-9\\-]{0,61}[A-Za-z0-9])?";
const NAME_HINT = "1 to 63 letters, digits and dashes (-), starting and ending with a letter or digit.";

export async function createPage(main, { navigate, events }) {
  const [templates, nodes, isos] = await Promise.all([listAll("/templates"), listAll("/nodes"), listAll("/isos")]);
  const usable = templates.filter((t) => t.status !== "error");

  const name = h("input", { name: "name", required: true, maxlength: 63, pattern: NAME_PATTERN, autocomplete: "off" });
  const template = h("select", { name: "template" },
    h("option", { value: "" }, "none (an empty disk)"),
    usable.map((t) => h("option", { value: t.id }, `${t.name} (${t.os}${t.status !== "ready" ? `, ${t.status}` : ""})`)));
  const tiny = usable.find((t) => t.name === "tiny-linux") || usable[0];
  if (tiny) template.value = tiny.id;
  // whom the keys are for: the chosen template's login user (the VM's ssh.user)
  const keysFor = () => {
    const t = usable.find((x) => x.id === template.value);
    return t ? `One key per line; you log in with them as ${t.loginUser} (the template's login user).` : "One key per line.";
  };
  const size = h("select", { name: "size" }, SIZES.map(([v, label]) => h("option", { value: v }, label)), h("option", { value: "custom" }, "Custom"));
  const cpu = h("input", { name: "cpu", type: "number", min: 1, max: 512, value: 1, required: true });
  const ram = h("input", { name: "ramMb", type: "number", min: 64, step: 64, value: 512, required: true });
  const disk = h("input", { name: "diskGb", type: "number", min: 1, value: 10, required: true });
  size.addEventListener("change", () => {
    const s = SIZES.find(([v]) => v === size.value);
    if (s) [cpu.value, ram.value, disk.value] = [s[2], s[3], s[4]];
  });
  for (const el of [cpu, ram, disk]) el.addEventListener("input", () => { size.value = "custom"; });
  const node = h("select", { name: "node" }, h("option", { value: "" }, "any (placement decides)"),
    nodes.map((n) => h("option", { value: n.id, disabled: n.status !== "online" || n.cordoned }, `${n.hostname} (${n.driver}${n.cordoned ? ", cordoned" : ""})`)));
  // an ISO in the CD-ROM (an installer: with no template the disk is blank), boot order, firmware
  const iso = h("select", { name: "isoId" }, h("option", { value: "" }, "none (an empty drive)"),
    isos.filter((i) => i.status === "ready").map((i) => h("option", { value: i.id }, `${i.name}${i.shared ? " (shared)" : ""}`)));
  const bootOrder = h("select", { name: "bootOrder" },
    h("option", { value: "disk,cdrom" }, "disk, then CD-ROM"), h("option", { value: "cdrom,disk" }, "CD-ROM, then disk"));
  const firmware = h("select", { name: "firmware" }, h("option", { value: "bios" }, "BIOS"), h("option", { value: "uefi" }, "UEFI"));
  iso.addEventListener("change", () => {
    if (iso.value) { template.value = ""; bootOrder.value = "cdrom,disk"; }
  });
  const sshKey = h("textarea", { name: "sshKeys", rows: 3, spellcheck: "false", placeholder: "ssh-ed25519 AAAA… user@host" });
  const userData = h("textarea", { name: "userData", rows: 6, spellcheck: "false", placeholder: "#cloud-config\n…" });
  const tags = h("input", { name: "tags", autocomplete: "off" });
  const start = h("input", { type: "checkbox", name: "start", checked: true, id: "create-start" });
  const alert = h("div", { role: "alert" });
  const submit = h("button", { type: "submit" }, "Create VM");

  const form = h("form", { class: "create card", "aria-labelledby": "create-title", novalidate: false },
    alert,
    field("Name", name, NAME_HINT),
    field("Template", template),
    h("fieldset", {}, h("legend", {}, "Size"),
      field("Preset", size),
      h("div", { class: "row" }, field("vCPUs", cpu), field("Memory (MiB)", ram), field("Disk (GB)", disk))),
    h("fieldset", {}, h("legend", {}, "Boot"),
      field("ISO in the CD-ROM", iso, "An installer or live system from the ISO library (Templates page); choosing one empties Template: the disk is blank, to install on."),
      h("div", { class: "row" }, field("Boot order", bootOrder), field("Firmware", firmware))),
    field("Node", node),
    field("SSH public keys", sshKey, keysFor()),
    field("User-data", userData, "#cloud-config or a #! script, given to cloud-init (NoCloud)."),
    field("Tags", tags, "Comma-separated."),
    h("div", { class: "field" }, h("label", { class: "inline", for: "create-start" }, start, "Start it once created")),
    submit);

  template.addEventListener("change", () => {
    const hint = form.querySelector(`#${sshKey.id}-hint`);
    if (hint) hint.textContent = keysFor();
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    replace(alert);
    for (const el of form.querySelectorAll("[aria-invalid]")) clearFieldError(el);
    const spec = {
      name: name.value.trim(),
      resources: { cpu: Number(cpu.value), ramMb: Number(ram.value), diskGb: Number(disk.value) },
      start: start.checked,
    };
    if (template.value) spec.templateId = template.value;
    if (node.value) spec.nodeId = node.value;
    if (iso.value) spec.cdrom = { isoId: iso.value };
    if (bootOrder.value !== "disk,cdrom") spec.bootOrder = bootOrder.value.split(",");
    if (firmware.value !== "bios") spec.firmware = firmware.value;
    const keys = sshKey.value.split("\n").map((k) => k.trim()).filter(Boolean);
    if (keys.length) spec.sshKeys = keys;
    if (userData.value.trim()) spec.cloudInit = { userData: userData.value };
    const tagList = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (tagList.length) spec.tags = tagList;
    submit.disabled = true;
    try {
      const r = await post("/vms", spec);
      // the toast that says how it went comes when the job ends (follow.js), not now
      followJob(events, r.jobId, { vmNames: { [r.vmIds[0]]: spec.name }, verb: "create" });
      navigate(`#/vms/${r.vmIds[0]}`);
    } catch (err) {
      submit.disabled = false;
      replace(alert, h("p", { class: "alert" }, "Not created: ", longText(errorText(err))));
      const bad = form.querySelector(`[name="${refusedField(err)}"]`);
      if (bad) { fieldError(bad, err.message); bad.focus(); } else alert.focus?.();
    }
  });

  replace(main, h("h1", { id: "create-title" }, "Create a VM"), form);
}

/** The form field (its `name`) a refusal is about: the API's field (`resources.ramMb` -> ramMb),
 * or `name` for a name already taken (409 naming the names). */
function refusedField(err) {
  if (!(err instanceof ApiError)) return null;
  if (err.field) return String(err.field).split(".").pop();
  if (err.body && err.body.details && Array.isArray(err.body.details.names)) return "name";
  return null;
}
