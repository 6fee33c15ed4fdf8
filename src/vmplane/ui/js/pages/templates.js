// Templates: the list (own and shared), import from a URL, upload an image file (the browser's
// upload progress, then the import job's), delete (asks first; the server's reason when it refuses).
// ISOs (the ISO library VMs boot from their CD-ROM): the list, upload with progress, import from
// a URL, delete (refused while a VM's CD-ROM holds one: the server names the VMs).

import { ApiError, del, listAll, post, upload } from "../api.js";
import { clearErrors, showError } from "../formerrors.js";
import { jobError, watchJob } from "../jobwatch.js";
import { badge, batcher, bytes, confirmAction, errorText, field, h, keepFocus, mib, replace, td, toast, when } from "../dom.js";

/** A template name from a file name: its stem, with what a name may not hold made "-". */
export function nameFromFile(fileName) {
  const stem = fileName.replace(/\.(qcow2|img|raw|vmdk|vhdx|vhd)$/i, "");
  return stem.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 63);
}

/** The form's fields name, os, loginUser, and where each one's error goes. */
function identityFields(prefix) {
  const name = h("input", { name: "name", required: true, maxlength: 63, pattern: "[A-Za-z0-9][A-Za-z0-9._-]*", autocomplete: "off", id: `${prefix}-name` });
  const os = h("input", { name: "os", value: "linux", required: true, maxlength: 32, autocomplete: "off", id: `${prefix}-os` });
  const login = h("input", { name: "loginUser", maxlength: 64, autocomplete: "off", placeholder: "from the OS", id: `${prefix}-loginUser` });
  return { name, os, login };
}

export async function templatesPage(main, { events }) {
  const body = h("tbody");
  const note = h("p", { class: "muted" });
  const deleting = h("div", { role: "status" });
  const watches = new Set();
  const watch = (box, jobId, label) => {
    const w = watchJob(box, jobId, label, events);
    watches.add(w);
    w.done.then(() => watches.delete(w));
    return w.done;
  };

  // --- import from a URL
  const urlIds = identityFields("tpl-url");
  const url = h("input", { name: "sourceUrl", id: "tpl-url-sourceUrl", type: "url", required: true, maxlength: 2048, placeholder: "an http(s) URL of the image file", autocomplete: "off" });
  const urlAlert = h("div", { role: "alert" });
  const urlJob = h("div", { class: "job-box", id: "tpl-url-job" });
  const urlForm = h("form", { class: "card", "aria-labelledby": "tpl-url-title" },
    h("h2", { id: "tpl-url-title" }, "Import from a URL"),
    urlAlert,
    field("Image URL", url, "http(s), fetched by the server through its outbound policy; qcow2, raw, vmdk, vhdx or vhd."),
    h("div", { class: "row" }, field("Name", urlIds.name), field("OS", urlIds.os), field("Login user", urlIds.login)),
    h("button", { type: "submit" }, "Import"),
    urlJob);
  urlForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(urlForm, urlAlert);
    const spec = { name: urlIds.name.value.trim(), os: urlIds.os.value.trim(), sourceUrl: url.value.trim() };
    if (urlIds.login.value.trim()) spec.loginUser = urlIds.login.value.trim();
    let r;
    try { r = await post("/templates", spec); } catch (err) { showError(urlForm, urlAlert, err, "tpl-url"); return; }
    toast(`Importing ${spec.name} (job ${r.jobId}).`);
    load();
    const job = await watch(urlJob, r.jobId, `Import of ${spec.name}`);
    if (job.state === "succeeded") toast(`Template ${spec.name} is ready.`);
    else replace(urlAlert, h("p", { class: "alert" }, `Import of ${spec.name} ${job.state}: ${jobError(job) || "see the job"}`));
    load();
  });

  // --- upload a file
  const upIds = identityFields("tpl-up");
  const file = h("input", { name: "file", id: "tpl-up-file", type: "file", required: true, accept: ".qcow2,.img,.raw,.vmdk,.vhdx,.vhd" });
  const upAlert = h("div", { role: "alert" });
  const upBar = h("progress", { max: 100, value: 0, "aria-label": "Upload progress" });
  const upText = h("span", { class: "bar-label", id: "tpl-up-progress" });
  const upProgress = h("div", { class: "job-watch", hidden: true }, h("span", {}, "Upload: "), upBar, " ", upText);
  const upJob = h("div", { class: "job-box", id: "tpl-up-job" });
  const upSubmit = h("button", { type: "submit" }, "Upload");
  const upCancel = h("button", { type: "button", class: "secondary", hidden: true }, "Cancel upload");
  let aborter = null;
  upCancel.addEventListener("click", () => aborter && aborter.abort());
  file.addEventListener("change", () => {
    if (file.files[0] && !upIds.name.value) upIds.name.value = nameFromFile(file.files[0].name);
  });
  const upForm = h("form", { class: "card", "aria-labelledby": "tpl-up-title" },
    h("h2", { id: "tpl-up-title" }, "Upload an image file"),
    upAlert,
    field("Image file", file, "qcow2, raw, vmdk, vhdx or vhd from this computer; checked and converted by the server like a URL's."),
    h("div", { class: "row" }, field("Name", upIds.name), field("OS", upIds.os), field("Login user", upIds.login)),
    h("div", { class: "toolbar" }, upSubmit, upCancel),
    upProgress,
    upJob);
  upForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(upForm, upAlert);
    const f = file.files[0];
    if (!f) { showError(upForm, upAlert, new ApiError(400, { error: "choose an image file", details: { field: "file" } }), "tpl-up"); return; }
    const name = upIds.name.value.trim();
    const q = new URLSearchParams({ name, os: upIds.os.value.trim() });
    if (upIds.login.value.trim()) q.set("loginUser", upIds.login.value.trim());
    upProgress.hidden = false;
    upBar.value = 0;
    upText.textContent = `0 of ${bytes(f.size)}`;
    upSubmit.disabled = true;
    upCancel.hidden = false;
    aborter = new AbortController();
    let r;
    try {
      r = await upload(`/templates/upload?${q}`, f, (loaded, total) => {
        const pct = total ? Math.floor((loaded * 100) / total) : 0;
        upBar.value = pct;
        upText.textContent = `${bytes(loaded)} of ${bytes(total)} (${pct}%)`;
      }, { signal: aborter.signal });
    } catch (err) {
      upProgress.hidden = true;
      showError(upForm, upAlert, err, "tpl-up");
      return;
    } finally {
      upSubmit.disabled = false;
      upCancel.hidden = true;
      aborter = null;
    }
    upText.textContent = `${bytes(f.size)} sent (100%)`;
    toast(`Uploaded ${f.name}; importing ${name} (job ${r.jobId}).`);
    file.value = "";
    upIds.name.value = "";
    load();
    const job = await watch(upJob, r.jobId, `Import of ${name}`);
    if (job.state === "succeeded") toast(`Template ${name} is ready.`);
    else replace(upAlert, h("p", { class: "alert" }, `Import of ${name} ${job.state}: ${jobError(job) || "see the job"}`));
    load();
  });

  // --- ISOs
  const isoBody = h("tbody");
  const isoNote = h("p", { class: "muted" });
  const isoAlert = h("div", { role: "alert" });
  const isoFile = h("input", { name: "body", id: "iso-up-body", type: "file", accept: ".iso" });
  const isoUrl = h("input", { name: "sourceUrl", id: "iso-up-sourceUrl", type: "url", maxlength: 2048, placeholder: "or an http(s) URL the server fetches", autocomplete: "off" });
  const isoName = h("input", { name: "name", id: "iso-up-name", required: true, maxlength: 63, pattern: "[A-Za-z0-9][A-Za-z0-9._-]*", autocomplete: "off" });
  const isoSha = h("input", { name: "sha256", id: "iso-up-sha256", maxlength: 64, autocomplete: "off", placeholder: "optional: checked before the ISO is offered" });
  const isoBar = h("progress", { max: 100, value: 0, "aria-label": "ISO upload progress" });
  const isoText = h("span", { class: "bar-label", id: "iso-up-progress" });
  const isoProgress = h("div", { class: "job-watch", hidden: true }, h("span", {}, "Upload: "), isoBar, " ", isoText);
  const isoJob = h("div", { class: "job-box", id: "iso-up-job" });
  isoFile.addEventListener("change", () => {
    if (isoFile.files[0] && !isoName.value) isoName.value = isoFile.files[0].name.replace(/\.iso$/i, "").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 63);
  });
  const isoForm = h("form", { class: "card", "aria-labelledby": "iso-up-title" },
    h("h2", { id: "iso-up-title" }, "Add an ISO"),
    isoAlert,
    field("ISO file", isoFile, "An installer or live system (ISO 9660) from this computer, or a URL below."),
    field("ISO URL", isoUrl),
    h("div", { class: "row" }, field("Name", isoName), field("SHA-256", isoSha)),
    h("button", { type: "submit" }, "Add ISO"),
    isoProgress,
    isoJob);
  isoForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(isoForm, isoAlert);
    const f = isoFile.files[0];
    const name = isoName.value.trim();
    const sha = isoSha.value.trim();
    try {
      if (f) {
        const q = new URLSearchParams({ name });
        if (sha) q.set("sha256", sha);
        isoProgress.hidden = false;
        const iso = await upload(`/isos/upload?${q}`, f, (loaded, total) => {
          const pct = total ? Math.floor((loaded * 100) / total) : 0;
          isoBar.value = pct;
          isoText.textContent = `${bytes(loaded)} of ${bytes(total)} (${pct}%)`;
        });
        toast(`ISO ${iso.name} is ready.`);
      } else {
        const r = await post("/isos", { name, sourceUrl: isoUrl.value.trim(), ...(sha ? { sha256: sha } : {}) });
        loadIsos();
        const job = await watch(isoJob, r.jobId, `Import of ISO ${name}`);
        if (job.state === "succeeded") toast(`ISO ${name} is ready.`);
        else replace(isoAlert, h("p", { class: "alert" }, `Import of ${name} ${job.state}: ${jobError(job) || "see the job"}`));
      }
      isoFile.value = ""; isoName.value = ""; isoSha.value = ""; isoUrl.value = "";
    } catch (err) {
      showError(isoForm, isoAlert, err, "iso-up");
    } finally {
      isoProgress.hidden = true;
    }
    loadIsos();
  });

  async function removeIso(i) {
    if (!(await confirmAction(`Delete ISO ${i.name}?`, "Delete"))) return;
    try { await del(`/isos/${i.id}`); } catch (err) { toast(errorText(err), "error"); return; }
    toast(`ISO ${i.name} deleted.`);
    loadIsos();
  }

  async function loadIsos() {
    const items = await listAll("/isos");
    keepFocus(isoBody, () => replace(isoBody, items.map((i) => h("tr", { dataset: { isoId: i.id } },
      td("Name", h("strong", {}, i.name), h("div", { class: "muted" }, i.id)),
      td("Status", badge(i.status), i.error ? h("div", { class: "error-text" }, i.error) : null),
      td("Size", i.sizeBytes ? bytes(i.sizeBytes) : "–"),
      td("Owner", i.shared ? "shared" : "own"),
      td("Source", i.sourceUrl ? h("span", { class: "muted", title: i.sourceUrl }, shortUrl(i.sourceUrl)) : "uploaded"),
      td("Created", when(i.createdAt)),
      td("Actions", h("button", { type: "button", class: "secondary", "aria-label": `Delete ISO ${i.name}`,
        disabled: i.status === "importing", onclick: () => removeIso(i) }, "Delete"))))));
    isoNote.textContent = items.length ? "" : "No ISOs.";
  }

  // --- the list
  async function remove(t) {
    if (!(await confirmAction(`Delete template ${t.name}? VMs cannot be made from it any more.`, "Delete"))) return;
    let r;
    try { r = await del("/templates", { templateIds: [t.id] }); } catch (err) { toast(errorText(err), "error"); return; }
    const job = await watch(deleting, r.jobId, `Delete of ${t.name}`);
    if (job.state === "succeeded") { toast(`Template ${t.name} deleted.`); replace(deleting); }
    else replace(deleting, h("p", { class: "alert", role: "alert" }, `${t.name} was not deleted: ${jobError(job) || job.state}`));
    load();
  }

  async function load() {
    const items = await listAll("/templates");
    keepFocus(body, () => replace(body, items.map((t) => h("tr", { dataset: { templateId: t.id } },
      td("Name", h("strong", {}, t.name), h("div", { class: "muted" }, t.id)),
      td("Status", badge(t.status), t.error ? h("div", { class: "error-text" }, t.error) : null),
      td("OS", t.os), td("Login user", t.loginUser),
      td("Size", t.sizeMb ? mib(t.sizeMb) : "–"),
      td("Owner", t.shared ? "shared" : "own"),
      td("Source", t.sourceUrl ? h("span", { class: "muted", title: t.sourceUrl }, shortUrl(t.sourceUrl)) : "uploaded"),
      td("Created", when(t.createdAt)),
      td("Actions", h("button", { type: "button", class: "secondary", "aria-label": `Delete template ${t.name}`,
        disabled: t.status === "importing" || t.status === "deleting", onclick: () => remove(t) }, "Delete"))))));
    note.textContent = items.length ? "" : "No templates.";
  }

  replace(main,
    h("h1", {}, "Templates"),
    h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "templates" },
      h("caption", { class: "visually-hidden" }, "Templates you may create VMs from"),
      h("thead", {}, h("tr", {}, ["Name", "Status", "OS", "Login user", "Size", "Owner", "Source", "Created", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      body)),
    note,
    deleting,
    h("div", { class: "grid" }, upForm, urlForm),
    h("h2", { id: "isos-title" }, "ISOs"),
    h("div", { class: "table-wrap" }, h("table", { class: "stack", id: "isos" },
      h("caption", { class: "visually-hidden" }, "ISOs VMs may boot from their CD-ROM"),
      h("thead", {}, h("tr", {}, ["Name", "Status", "Size", "Owner", "Source", "Created", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      isoBody)),
    isoNote,
    isoForm);

  const refresh = batcher(() => Promise.all([load(), loadIsos()]).catch((err) => console.warn(err)), 300);
  const off = events.on((ev) => { if (ev.type.startsWith("job.")) refresh("list"); });
  await Promise.all([load(), loadIsos()]);
  return () => {
    off();
    for (const w of watches) w.stop();
    if (aborter) aborter.abort();
  };
}

function shortUrl(u) {
  try { const p = new URL(u); return `${p.host}${p.pathname.length > 30 ? "/…" + p.pathname.slice(-28) : p.pathname}`; } catch { return u.slice(0, 40); }
}
