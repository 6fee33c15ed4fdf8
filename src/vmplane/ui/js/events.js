// The event stream (GET /api/v1/events, Server-Sent Events) read with fetch(): EventSource
// cannot send the X-API-Key header. Reconnects with Last-Event-ID, so nothing is missed.

import { apiKey } from "./api.js";

const KEEP = 500;

export class EventStream {
  constructor() {
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.recent = [];
    this.lastId = null;
    this.state = "connecting";
    this.controller = null;
    this.heads = []; // waiting for the first resume point (see head())
  }

  /** The newest event id when the stream was opened (its first `id:`), or the last one seen:
   * where the Events page starts paging back from. Null if none comes within `ms`. */
  head(ms = 5000) {
    if (this.lastId !== null) return Promise.resolve(this.lastId);
    return new Promise((resolve) => {
      const done = (id) => { clearTimeout(timer); resolve(id); };
      const timer = setTimeout(() => { this.heads = this.heads.filter((f) => f !== done); resolve(null); }, ms);
      this.heads.push(done);
    });
  }

  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  onState(fn) { this.stateListeners.add(fn); fn(this.state); return () => this.stateListeners.delete(fn); }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state);
  }

  start() {
    this.stop();
    this.controller = new AbortController();
    this.loop(this.controller.signal);
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  async loop(signal) {
    while (!signal.aborted) {
      try {
        const headers = { "X-API-Key": apiKey() || "", Accept: "text/event-stream" };
        if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
        const r = await fetch("/api/v1/events", { headers, signal, cache: "no-store" });
        if (r.status === 401) { this.setState("unauthorized"); return; }
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        this.setState("live");
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            this.block(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
      } catch (err) {
        if (signal.aborted) return;
      }
      this.setState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  /** Up to `count` events from before event `before`, oldest first: the stream resumed
   * from an earlier id and read until it reaches `before` (or goes quiet for a second). */
  async earlier(before, count = 100) {
    const controller = new AbortController();
    const found = [];
    let quiet = setTimeout(() => controller.abort(), 3000);
    try {
      const r = await fetch(`/api/v1/events?since=${Math.max(0, before - count - 1)}`,
        { headers: { "X-API-Key": apiKey() || "", Accept: "text/event-stream" }, signal: controller.signal, cache: "no-store" });
      if (!r.ok || !r.body) return found;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(quiet);
        quiet = setTimeout(() => controller.abort(), 1000);
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = parseBlock(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          if (!event) continue;
          if (event.id >= before) return found;
          found.push(event);
        }
      }
    } catch {
      // aborted after a quiet second: what came is all there is
    } finally {
      clearTimeout(quiet);
      controller.abort();
    }
    return found;
  }

  block(text) {
    const event = parseBlock(text);
    if (!event) {
      // a fresh stream opens with `id: N` and no data: the point it resumes from
      const m = /^id: ?(\d+)$/m.exec(text);
      if (m && this.lastId === null) {
        this.lastId = Number(m[1]);
        for (const f of this.heads.splice(0)) f(this.lastId);
      }
      return;
    }
    this.lastId = event.id;
    for (const f of this.heads.splice(0)) f(this.lastId);
    this.recent.push(event);
    if (this.recent.length > KEEP) this.recent.splice(0, this.recent.length - KEEP);
    for (const fn of this.listeners) {
      try { fn(event); } catch (err) { console.warn("event listener failed", err); }
    }
  }
}

/** One SSE message → the event it carries (null for comments, `retry:` and `error` messages). */
function parseBlock(text) {
  let type = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length || type === "error") return null; // "error": the server dropped us; the loop reconnects
  try { return JSON.parse(data.join("\n")); } catch { return null; }
}
