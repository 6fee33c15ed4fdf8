// The native API (/api/v1) with the API key the user entered, kept in sessionStorage.

const KEY = "vmplane.apiKey";

export function apiKey() { return sessionStorage.getItem(KEY); }
export function setApiKey(key) { sessionStorage.setItem(KEY, key); }
export function forgetApiKey() { sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, body) {
    const msg = body && typeof body === "object" && body.error ? body.error : `HTTP ${status}`;
    super(msg);
    this.status = status;
    this.body = body;
    this.field = body && body.details ? body.details.field : undefined;
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

export async function api(method, path, body, { key } = {}) {
  const headers = { "X-API-Key": key || apiKey() || "", Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch("/api/v1" + path, init);
  const text = await r.text();
  let data = text;
  if (text && (r.headers.get("content-type") || "").includes("json")) data = JSON.parse(text);
  if (!r.ok) {
    if (r.status === 401 && !key) onUnauthorized();
    throw new ApiError(r.status, data);
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body = {}) => api("POST", path, body);
export const put = (path, body) => api("PUT", path, body);
export const del = (path, body) => api("DELETE", path, body);

/** Every item of a paged list (follows nextPageToken). */
export async function listAll(path, max = 5000) {
  const items = [];
  let token = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=500${token ? `&pageToken=${encodeURIComponent(token)}` : ""}`);
    items.push(...page.items);
    token = page.nextPageToken;
  } while (token && items.length < max);
  return items;
}
