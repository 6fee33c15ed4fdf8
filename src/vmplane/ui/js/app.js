// The console's shell: login, navigation (hash routes), the shared event stream.

import { ApiError, api, apiKey, forgetApiKey, setApiKey, whenUnauthorized } from "./api.js";
import { h, replace } from "./dom.js";
import { EventStream } from "./events.js";
import { vmsPage } from "./pages/vms.js";
import { createPage } from "./pages/create.js";
import { vmDisplayPage, vmPage } from "./pages/vm.js";
import { jobsPage, jobPage } from "./pages/jobs.js";
import { nodesPage } from "./pages/nodes.js";
import { eventsPage } from "./pages/events.js";
import { templatesPage } from "./pages/templates.js";

const ROUTES = [
  [/^#\/vms$/, vmsPage, "vms"],
  [/^#\/create$/, createPage, "create"],
  [/^#\/vms\/([A-Za-z0-9-]+)$/, vmPage, "vms"],
  [/^#\/vms\/([A-Za-z0-9-]+)\/display$/, vmDisplayPage, "vms"],
  [/^#\/jobs$/, jobsPage, "jobs"],
  [/^#\/jobs\/([A-Za-z0-9-]+)$/, jobPage, "jobs"],
  [/^#\/templates$/, templatesPage, "templates"],
  [/^#\/nodes$/, nodesPage, "nodes"],
  [/^#\/events$/, eventsPage, "events"],
];

const main = document.getElementById("main");
const events = new EventStream();
let cleanup = null;

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

const ctx = { events, navigate };

function setSignedIn(on) {
  document.getElementById("nav").hidden = !on;
  document.getElementById("session").hidden = !on;
}

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* the page is gone anyway */ } cleanup = null; }
  if (!apiKey()) return showLogin();
  setSignedIn(true);
  const hash = location.hash || "#/vms";
  let match = null;
  let page = null;
  let nav = null;
  for (const [re, fn, name] of ROUTES) {
    match = hash.match(re);
    if (match) { page = fn; nav = name; break; }
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main);
  if (!page) {
    replace(main, h("h1", { tabindex: -1 }, "Not found"), h("p", {}, h("a", { href: "#/vms" }, "Back to the VMs")));
    main.querySelector("h1").focus();
    return;
  }
  try {
    cleanup = (await page(main, ctx, ...match.slice(1))) || null;
  } catch (err) {
    replace(main, h("h1", { tabindex: -1 }, "Something went wrong"), h("p", { class: "alert", role: "alert" }, err.message || String(err)));
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
    document.title = `${heading.textContent} · vmplane`;
  }
}

function showLogin(message) {
  events.stop();
  setSignedIn(false);
  const input = h("input", { id: "api-key", name: "apiKey", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "api-key-hint", spellcheck: "false" });
  const alert = h("div", { role: "alert" });
  if (message) replace(alert, h("p", { class: "alert" }, message));
  const form = h("form", { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title", tabindex: -1 }, "Sign in to vmplane"),
    alert,
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("p", { class: "hint", id: "api-key-hint" },
        "An API key (vmp_…). The bootstrap key is in the data directory's admin-api-key file. ",
        "It is kept for this browser tab only.")),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    try {
      await api("GET", "/vms?limit=1", undefined, { key });
    } catch (err) {
      const text = err instanceof ApiError && err.status === 401 ? "That API key was not accepted." : `Could not sign in: ${err.message}`;
      replace(alert, h("p", { class: "alert" }, text));
      input.focus();
      return;
    }
    setApiKey(key);
    events.start();
    if (!location.hash || location.hash === "#/login") location.hash = "#/vms";
    else route();
  });
  replace(main, form);
  document.title = "Sign in · vmplane";
  input.focus();
}

whenUnauthorized(() => {
  forgetApiKey();
  showLogin("Your API key is no longer accepted; sign in again.");
});

document.getElementById("logout").addEventListener("click", () => {
  forgetApiKey();
  events.stop();
  showLogin();
});

const streamState = document.getElementById("stream-state");
events.onState((state) => {
  streamState.dataset.state = state;
  streamState.textContent = { live: "Live", reconnecting: "Reconnecting…", connecting: "Connecting…", unauthorized: "Signed out" }[state] || state;
});

window.addEventListener("hashchange", route);
if (apiKey()) events.start();
route();
