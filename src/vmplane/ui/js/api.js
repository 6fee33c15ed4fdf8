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

/** An image the API serves (a VM's screenshot) as a data: URL, which the page's Content-Security-Policy
 *  lets an <img> show (an <img src> of the API itself could not send the API key). */
export async function image(path) {
  const r = await fetch("/api/v1" + path, { headers: { "X-API-Key": apiKey() || "" } });
  if (!r.ok) {
    const text = await r.text();
    let data = text;
    try { data = JSON.parse(text); } catch { /* not JSON: keep the text */ }
    if (r.status === 401) onUnauthorized();
    throw new ApiError(r.status, data);
  }
  const blob = await r.blob();
  return await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
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

/**
 * POST a file as the raw request body with XMLHttpRequest, whose upload events give the
 * browser's own progress (fetch() has none): onProgress(loaded, total). Resolves with the
 * JSON answer; rejects with ApiError (or an Error when the connection failed or was aborted).
 * `signal` (an AbortSignal) aborts the upload.
 */
export function upload(path, file, onProgress, { signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1" + path);
    xhr.setRequestHeader("X-API-Key", apiKey() || "");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.addEventListener("load", () => {
      let data = xhr.responseText;
      if ((xhr.getResponseHeader("content-type") || "").includes("json")) data = JSON.parse(data);
      if (xhr.status >= 200 && xhr.status < 300) return resolve(data);
      if (xhr.status === 401) onUnauthorized();
      reject(new ApiError(xhr.status, data));
    });
    xhr.addEventListener("error", () => reject(new Error("the upload failed: the connection was lost")));
    xhr.addEventListener("abort", () => reject(new Error("the upload was cancelled")));
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(file);
  });
}
