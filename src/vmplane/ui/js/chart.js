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
