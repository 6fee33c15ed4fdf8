// A small line chart in SVG: the last N samples of one or two series.

import { h, svg } from "./dom.js";

export class Chart {
  constructor(title, { max = null, format = (v) => String(v), series = ["value"], size = 60 } = {}) {
    this.title = title;
    this.fixedMax = max;
    this.format = format;
    this.series = series;
    this.size = size;
    this.samples = series.map(() => []);
    this.lines = series.map((_, i) => svg("polyline", { class: i ? "second" : "", points: "" }));
    this.plot = svg("svg", { viewBox: `0 0 ${size - 1} 100`, preserveAspectRatio: "none", role: "img", "aria-label": `${title}: no data yet` });
    for (const l of this.lines) this.plot.append(l);
    this.value = h("span", { class: "muted" }, "–");
    this.el = h("div", { class: "chart" }, h("figure", {}, h("figcaption", {}, h("span", {}, title), this.value), this.plot));
  }

  /** Forget every sample (the VM stopped: no current figures to show). */
  clear() {
    this.samples = this.series.map(() => []);
    for (const l of this.lines) l.setAttribute("points", "");
    this.value.textContent = "–";
    this.plot.setAttribute("aria-label", `${this.title}: no data`);
  }

  add(...values) {
    values.forEach((v, i) => {
      const s = this.samples[i];
      s.push(v);
      if (s.length > this.size) s.shift();
    });
    const max = this.fixedMax ?? Math.max(1, ...this.samples.flat()) * 1.15;
    this.samples.forEach((s, i) => {
      const offset = this.size - s.length;
      this.lines[i].setAttribute("points", s.map((v, j) => `${offset + j},${(100 - (v / max) * 100).toFixed(1)}`).join(" "));
    });
    const text = values.map((v, i) => (this.series.length > 1 ? `${this.series[i]} ` : "") + this.format(v)).join(" · ");
    this.value.textContent = text;
    this.plot.setAttribute("aria-label", `${this.title}: now ${text}`);
  }
}

// A line chart of a time window (the last hour by default) from stored samples: points are
// placed by their time, not their order, and a series breaks where samples are missing (the
// VM was stopped) instead of drawing a line across the gap.
export class HistoryChart {
  constructor(title, { max = null, format = (v) => String(v), series = ["value"], windowSeconds = 3600, gapSeconds = 30 } = {}) {
    this.title = title;
    this.fixedMax = max;
    this.format = format;
    this.series = series;
    this.windowMs = windowSeconds * 1000;
    this.gapMs = gapSeconds * 1000;
    this.points = []; // [time in ms, [value | null per series]], oldest first
    this.paths = series.map((_, i) => svg("path", { class: i ? "second" : "", d: "" }));
    this.plot = svg("svg", { viewBox: "0 0 1000 100", preserveAspectRatio: "none", role: "img", "aria-label": `${title}: no samples yet` });
    for (const p of this.paths) this.plot.append(p);
    this.value = h("span", { class: "muted" }, "–");
    const axis = h("div", { class: "axis muted", "aria-hidden": "true" }, h("span", {}, `−${Math.round(windowSeconds / 60)} min`), h("span", {}, "now"));
    this.el = h("div", { class: "chart history-chart", dataset: { points: "0" } },
      h("figure", {}, h("figcaption", {}, h("span", {}, title), this.value), this.plot, axis));
  }

  /** Add samples ([time in ms, values]), newer than those held; draws once. */
  extend(samples) {
    const newest = this.points.length ? this.points[this.points.length - 1][0] : -Infinity;
    for (const [t, values] of samples) if (t > newest) this.points.push([t, values]);
    this.draw();
  }

  draw(now = Date.now()) {
    const from = now - this.windowMs;
    while (this.points.length && this.points[0][0] < from) this.points.shift();
    const shown = this.points.flatMap(([, vs]) => vs).filter((v) => v !== null && v !== undefined);
    const max = this.fixedMax ?? Math.max(1, ...shown) * 1.15;
    const x = (t) => (((t - from) / this.windowMs) * 1000).toFixed(1);
    const y = (v) => (100 - (Math.min(v, max) / max) * 100).toFixed(1);
    this.series.forEach((_, i) => {
      let d = "";
      let prev = null;
      for (const [t, vs] of this.points) {
        const v = vs[i];
        if (v === null || v === undefined) { prev = null; continue; }
        // a run's first point also gets a zero-length segment: drawn as a dot (round caps) when alone
        d += prev === null || t - prev > this.gapMs ? `M${x(t)},${y(v)} l0,0 ` : `L${x(t)},${y(v)} `;
        prev = t;
      }
      this.paths[i].setAttribute("d", d.trim());
    });
    this.el.dataset.points = String(this.points.length);
    const last = this.points[this.points.length - 1];
    if (!last) {
      this.value.textContent = "–";
      this.plot.setAttribute("aria-label", `${this.title}: no samples in the window`);
      return;
    }
    const text = last[1].map((v, i) => (this.series.length > 1 ? `${this.series[i]} ` : "") + (v === null || v === undefined ? "–" : this.format(v))).join(" · ");
    this.value.textContent = text;
    this.plot.setAttribute("aria-label", `${this.title}: ${this.points.length} samples in the last ${Math.round(this.windowMs / 60000)} min, latest ${text}`);
  }
}
