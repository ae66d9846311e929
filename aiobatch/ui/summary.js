// The job page's summary: its head (name, state, facts, which actions may be taken), the
// totals with the legend of instance states, and the table of tasks. Each is drawn from the
// model when the frame's `dirty` sets say it changed.

import {
  CODE, INSTANCE_STATES, JOB_TERMINAL, STATE_COLOURS, $, formatDuration, formatTime, h,
  jobDuration, progressBar, setBadge, setProgress, setText,
} from "./lib.js";

export function renderHead(model) {
  const job = model.job;
  document.title = `${job.name || job.id} · aiobatch`;
  setText($("#job-name"), job.name);
  setText($("#crumb-job"), job.name);
  setBadge($("#job-status"), job.status);
  const stopping = model.stopping && !JOB_TERMINAL.has(job.status)
    ? `stopping (${model.stopping.reason})` : "";
  setText($("#job-reason"), stopping || job.reason || "");
  setText($("#job-id"), job.id);
  const submitted = $("#job-submitted");
  setText(submitted, formatTime(job.submitted_at));
  setText($("#job-duration"), formatDuration(jobDuration(job)));
  const active = !JOB_TERMINAL.has(job.status) && !model.stopping;
  $("#btn-stop").disabled = !active;
  $("#btn-suspend").disabled = !(active && job.status === "RUNNING");
  $("#btn-resume").disabled = !(active && job.status === "SUSPENDED");
  $("#btn-retry").disabled = !(job.status === "FAILED" || job.status === "CANCELLED");
}

let jobBar = null;
let legendItems = null;

export function renderTotals(model) {
  const totals = model.totals();
  if (!jobBar) {
    jobBar = progressBar();
    $("#job-progress-bar").replaceWith(jobBar);
    jobBar.id = "job-progress-bar";
  }
  setProgress(jobBar, totals);
  setText($("#job-progress"), `${totals.running}/${totals.done}/${totals.total}` +
    (totals.failed ? `  ·  ${totals.failed} failed` : ""));
  if (!legendItems) {
    legendItems = INSTANCE_STATES.map((state) => {
      const count = h("span", { className: "count" });
      const swatch = h("i", { className: "swatch" });
      swatch.style.background = STATE_COLOURS[state];
      $("#legend").append(h("span", { className: "legend-item" }, swatch, state.toLowerCase(), " ", count));
      return count;
    });
  }
  INSTANCE_STATES.forEach((_, code) => setText(legendItems[code], String(totals.counts[code])));
  $("#next-failed").disabled = totals.counts[CODE.FAILED] === 0;
}

// The table of tasks: a row per task, in the model's order, kept across rebuilds.
export class TaskRows {
  constructor(body, { onSelect }) {
    this.body = body;
    this.onSelect = onSelect;
    this.rows = new Map(); // task name -> row cells
  }

  build(order) {
    const fresh = [];
    for (const task of order) {
      let row = this.rows.get(task.name);
      if (!row) {
        const status = h("span", { className: "badge" });
        const counts = h("span", { className: "mono" });
        const bar = progressBar();
        const reason = h("span", { className: "reason" });
        const tr = h("div", { className: "task-row", role: "row", dataset: { task: task.name },
          onclick: () => this.onSelect(task.name) },
          h("span", { className: "task-name", role: "cell", title: task.name }, task.name),
          h("span", { className: "status", role: "cell" }, status),
          h("span", { className: "num", role: "cell" }, counts),
          h("span", { className: "bar-cell", role: "cell" }, bar),
          h("span", { className: "why", role: "cell" }, reason));
        row = { tr, status, counts, bar, reason };
        this.rows.set(task.name, row);
      }
      fresh.push(row.tr);
    }
    this.body.replaceChildren(...fresh);
  }

  update(task) {
    const row = this.rows.get(task.name);
    if (!row) return;
    setBadge(row.status, task.status);
    setText(row.counts, `${task.running}/${task.done}/${task.total}`);
    setProgress(row.bar, task);
    const failed = task.failed ? `${task.failed} failed` : "";
    setText(row.reason, [task.reason, failed].filter(Boolean).join(" · "));
  }

  select(name) {
    for (const [taskName, row] of this.rows) row.tr.classList.toggle("selected", taskName === name);
  }
}

// A task's tooltip on the graph.
export function describeTask(task) {
  if (!task) return "";
  const lines = [`${task.name}  ${task.status}`, `${task.running}/${task.done}/${task.total} running/terminated/total`];
  if (task.failed) lines.push(`${task.failed} failed`);
  if (task.reason) lines.push(`reason: ${task.reason}`);
  if (task.def && task.def.depends_on && task.def.depends_on.length) {
    const conditions = task.def.conditions || {};
    const byIndex = new Set(task.def.by_index || []);
    const after = task.def.depends_on.map((dep) =>
      byIndex.has(dep) ? `${dep} (by index)` : conditions[dep] ? `${dep} (${conditions[dep]})` : dep);
    lines.push(`after: ${after.join(", ")}`);
  }
  return lines.join("\n");
}
