// Follow one job to its end: a progress bar with the job's state, and its first task error.

import { get } from "./api.js";
import { h, replace } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "partial", "cancelled"]);

/** The first error of a job's tasks (the server's reason it failed), or null. */
export function jobError(job) {
  const t = (job.tasks || []).find((x) => x.error);
  return t ? t.error : null;
}

/**
 * Show `label` with the job's progress in `box` until the job ends: a `job.*`/`task.*`
 * event about it checks at once, a poll every second covers one missed. Returns
 * { done, stop }: `done` resolves with the finished job; `stop()` ends the watch early
 * (the page went away; `done` then never resolves).
 */
export function watchJob(box, jobId, label, events) {
  const bar = h("progress", { max: 100, value: 0, "aria-label": `${label}: progress` });
  const text = h("span", { class: "bar-label" }, "queued");
  replace(box, h("div", { class: "job-watch" }, h("span", {}, `${label}: `), bar, " ", text, " ",
    h("a", { href: `#/jobs/${jobId}` }, "job")));
  let stopped = false;
  let timer = null;
  let off = () => {};
  const stop = () => { stopped = true; clearInterval(timer); off(); };
  const done = new Promise((resolve) => {
    async function check() {
      if (stopped) return;
      let job;
      try { job = await get(`/jobs/${jobId}`); } catch { return; }
      if (stopped) return;
      bar.value = job.progress;
      text.textContent = `${job.state} ${job.progress}%`;
      box.dataset.jobState = job.state;
      if (FINAL.has(job.state)) { stop(); resolve(job); }
    }
    timer = setInterval(check, 1000);
    if (events) off = events.on((ev) => { if (ev.resource === jobId || (ev.data && ev.data.jobId === jobId)) check(); });
    check();
  });
  return { done, stop };
}
