// The job page: /ui/jobs/<id>. Loads the definition, a snapshot and the history, then
// follows the job's event stream. Events are applied to the model as they arrive; the page
// is redrawn at most once per animation frame, and only what the events touched.

import { DagView } from "./dag.js";
import { GridView } from "./grid.js";
import {
  ApiError, CODE, INSTANCE_STATES, JOB_TERMINAL, STATE_COLOURS, Tooltip, $, API, explain,
  formatDuration, formatTime, frameScheduler, getJSON, h, jobDuration, jobPath, notice, post,
  progressBar, readNdjson, session, setBadge, setProgress, setText,
} from "./lib.js";
import { JobModel } from "./model.js";
import { InstancePanel } from "./panel.js";
import { TimelineView } from "./timeline.js";

const HISTORY_PAGE = 5000;
const POLL_MS = 2000; // the waiting reasons (derived on the server, not sent as events)
const TICK_MS = 500; // durations and the timeline's running bars
const RECONNECT_MS = 2000;
const CONFIRM_MS = 4000;
const OPEN_TIMEOUT_MS = 15000;

const jobId = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
const model = new JobModel(jobId);
const tooltip = new Tooltip();
const MIN_FRAME_GAP_MS = 50; // at most 20 redraws a second, however busy the job
const schedule = frameScheduler(render, MIN_FRAME_GAP_MS);
const rows = new Map(); // task name -> row cells

let stream = null; // {controller}
let historyLoaded = false;
let lateAttempts = []; // live instance events that arrived while the history was loading
let timelineDirty = true;
let selectedTask = null;
let dagShape = "";

const dag = new DagView($("#dag"), {
  onSelect: (name) => selectTask(name),
  tooltip,
  describe: (name) => describeTask(model.tasks.get(name)),
});
const grid = new GridView($("#grid"), { model, tooltip, onPick: (task, index) => openInstance(task, index) });
// Where the pointer rests on the grid, so that the tooltip of the cell under it follows the
// model: a state comes with an event and a queue reason with a poll, not with the pointer.
let gridPointer = null;
grid.view.canvas.addEventListener("pointermove", (e) => {
  gridPointer = { offsetX: e.offsetX, offsetY: e.offsetY, clientX: e.clientX, clientY: e.clientY };
});
grid.view.canvas.addEventListener("pointerleave", () => {
  gridPointer = null;
});
const timeline = new TimelineView($("#timeline"), { model, tooltip, onPick: (task, index) => openInstance(task, index) });
const panel = new InstancePanel($("#panel"), {
  model,
  onClose: () => grid.select(null),
  onError: (text) => notice(text),
});

// What the page did, for the benchmark (and for a look in the console).
const stats = { events: 0, renders: 0, renderMs: 0, maxRenderMs: 0, firstRender: null, dagDrawn: null };

// For the browser tests and for poking around in the console.
window.aiobatch = { model, grid, timeline, panel, dag, stats };

// -- loading and following --------------------------------------------------------------------

async function connect(definition = null) {
  if (stream) stream.controller.abort();
  const controller = new AbortController();
  const current = (stream = { controller, buffer: [], live: false });
  setLive("connecting…", "connecting");
  let opened;
  const open = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no answer in 15 s")), OPEN_TIMEOUT_MS);
    opened = () => {
      clearTimeout(timer);
      resolve();
    };
  });
  const ended = readNdjson(`${API}/events?job=${encodeURIComponent(jobId)}`, {
    signal: controller.signal,
    onOpen: () => opened(),
    onEvents: (events) => {
      if (current.live) applyEvents(events);
      else current.buffer.push(...events);
    },
  });
  ended.catch(() => opened()); // a refused stream: the snapshot below says why
  await Promise.race([open, ended.then(() => undefined)]);
  performance.mark("aiobatch:subscribed");
  // Subscribed: the snapshot has everything before, the stream everything after.
  const [defn, snapshot] = await Promise.all([definition, getJSON(`${jobPath(jobId)}?instances=1`)]);
  if (current !== stream) return;
  performance.mark("aiobatch:snapshot");
  if (defn) model.applyDefinition(defn);
  model.applySnapshot(snapshot);
  current.live = true;
  applyEvents(current.buffer);
  current.buffer = [];
  schedule();
  follow(current, ended);
}

async function follow(current, ended) {
  setLive("live", "live");
  document.body.dataset.state = "live";
  try {
    await ended;
  } catch (error) {
    if (current.controller.signal.aborted) return;
    if (error instanceof ApiError) {
      notice(explain(error));
      setLive("disconnected", "error");
      return;
    }
  }
  if (current !== stream) return;
  if (JOB_TERMINAL.has(model.job.status)) {
    setLive("ended", "ended");
    document.body.dataset.state = "ended";
    schedule();
    return;
  }
  // The stream broke (server restarting, network): start over in a moment.
  setLive("reconnecting…", "error");
  setTimeout(() => {
    if (current === stream) connect().catch(failed);
  }, RECONNECT_MS);
}

function applyEvents(events) {
  stats.events += events.length;
  for (const event of events) {
    if (!historyLoaded && event.type === "InstanceStateChanged") {
      model.apply(event, { attempts: false }); // recorded once the history is in
      lateAttempts.push(event);
    } else {
      model.apply(event);
    }
  }
  schedule();
}

async function loadHistory() {
  let after = 0;
  const seen = new Set();
  try {
    for (;;) {
      const page = await getJSON(`${jobPath(jobId)}/history?after=${after}&limit=${HISTORY_PAGE}`);
      for (const { seq, event } of page) {
        after = Math.max(after, seq);
        if (event.type === "InstanceStateChanged") seen.add(eventKey(event));
        model.apply(event, { state: false });
      }
      if (page.length < HISTORY_PAGE) break;
    }
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) console.warn("aiobatch: history", error);
    setText($("#timeline-note"), "no history from this server: only attempts seen live are shown");
  }
  historyLoaded = true;
  for (const event of lateAttempts) {
    if (!seen.has(eventKey(event))) model.apply(event, { state: false });
  }
  lateAttempts = [];
  timelineDirty = true;
  schedule();
}

function eventKey(e) {
  return `${e.task}|${e.index}|${e.attempt}|${e.state}|${e.ts}`;
}

async function pollReasons() {
  if (document.hidden || JOB_TERMINAL.has(model.job.status) || !stream || !stream.live) return;
  const since = model.lastTs;
  try {
    model.applyTaskReasons(await getJSON(jobPath(jobId)), since);
    schedule();
  } catch {
    // the stream's own error handling says what is wrong
  }
}

// Only the actions this page's session may take are shown (a log-view link: none, and no
// way to the list of jobs, which it may not see).
session().then(({ actions, job }) => {
  for (const button of document.querySelectorAll(".actions button")) {
    button.hidden = !actions.includes(button.dataset.action);
  }
  $("#crumb-jobs").hidden = job != null;
});

async function start() {
  document.body.dataset.state = "loading";
  try {
    // Asked for at once, applied before the first snapshot (it gives the tasks' order).
    // Without it (an older server) the page shows no edges and no mappings; an auth or
    // unknown-job error shows from the snapshot's request as well.
    const definition = getJSON(`${jobPath(jobId)}/definition`).catch((error) => {
      console.warn("aiobatch: no job definition", error);
      return null;
    });
    await connect(definition);
  } catch (error) {
    failed(error);
    return;
  }
  loadHistory();
  setInterval(pollReasons, POLL_MS);
  setInterval(tick, TICK_MS);
}

function failed(error) {
  document.body.dataset.state = "error";
  setLive("offline", "error");
  if (error instanceof ApiError && error.type === "JobNotFound") {
    notice(`No job ${jobId} here.`);
  } else {
    notice(explain(error));
  }
}

function setLive(text, kind) {
  const node = $("#live");
  setText(node, text);
  node.className = `live live-${kind}`;
}

// -- drawing ------------------------------------------------------------------------------------

function render() {
  const started = performance.now();
  draw();
  const took = performance.now() - started;
  stats.renders += 1;
  stats.renderMs += took;
  stats.maxRenderMs = Math.max(stats.maxRenderMs, took);
  if (stats.firstRender === null && model.order.length) {
    stats.firstRender = performance.now();
    performance.mark("aiobatch:first-render");
  }
}

function draw() {
  const dirty = model.takeDirty();
  if (dirty.structure) {
    buildRows();
    grid.layout();
    dirty.allCells = true;
    timelineDirty = true;
    for (const task of model.order) dirty.tasks.add(task.name);
    const shape = JSON.stringify([model.order.map((t) => t.name), model.edges]);
    if (shape !== dagShape) {
      dagShape = shape;
      dag.build(model.order, model.edges).then((drawn) => {
        if (drawn) {
          stats.dagDrawn = performance.now();
          performance.mark("aiobatch:dag-drawn");
        }
      });
    }
  }
  if (dirty.job) renderHead();
  for (const name of dirty.tasks) {
    const task = model.tasks.get(name);
    if (!task) continue;
    updateRow(task);
    dag.update(task);
  }
  if (dirty.job || dirty.tasks.size) renderTotals();
  if (dirty.allCells) grid.redraw();
  else if (dirty.cells.size) grid.redrawCells(dirty.cells);
  if (gridPointer && (dirty.allCells || dirty.cells.size)) refreshGridTooltip(dirty);
  if (dirty.timeline) timelineDirty = true;
  if (panel.current && (dirty.job || dirty.tasks.has(panel.current.task))) panel.update();
}

function refreshGridTooltip(dirty) {
  const hit = grid.hit(gridPointer.offsetX, grid.view.contentY(gridPointer));
  if (hit && (dirty.allCells || dirty.cells.get(hit.task)?.has(hit.index))) grid.hover(gridPointer);
}

function tick() {
  if (!JOB_TERMINAL.has(model.job.status)) setText($("#job-duration"), formatDuration(jobDuration(model.job)));
  const running = model.job.status === "RUNNING" || model.job.status === "SUSPENDED";
  if (timelineDirty || running) {
    timelineDirty = false;
    timeline.render();
  }
}

function renderHead() {
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

function renderTotals() {
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

function buildRows() {
  const body = $("#task-rows");
  const fresh = [];
  for (const task of model.order) {
    let row = rows.get(task.name);
    if (!row) {
      const status = h("span", { className: "badge" });
      const counts = h("span", { className: "mono" });
      const bar = progressBar();
      const reason = h("span", { className: "reason" });
      const tr = h("div", { className: "task-row", role: "row", dataset: { task: task.name },
        onclick: () => selectTask(task.name) },
        h("span", { className: "task-name", role: "cell", title: task.name }, task.name),
        h("span", { className: "status", role: "cell" }, status),
        h("span", { className: "num", role: "cell" }, counts),
        h("span", { className: "bar-cell", role: "cell" }, bar),
        h("span", { className: "why", role: "cell" }, reason));
      row = { tr, status, counts, bar, reason };
      rows.set(task.name, row);
    }
    fresh.push(row.tr);
  }
  body.replaceChildren(...fresh);
}

function updateRow(task) {
  const row = rows.get(task.name);
  if (!row) return;
  setBadge(row.status, task.status);
  setText(row.counts, `${task.running}/${task.done}/${task.total}`);
  setProgress(row.bar, task);
  const failed = task.failed ? `${task.failed} failed` : "";
  setText(row.reason, [task.reason, failed].filter(Boolean).join(" · "));
}

function describeTask(task) {
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

// -- interaction --------------------------------------------------------------------------------

function selectTask(name) {
  selectedTask = name;
  dag.select(name);
  grid.selectTask(name);
  for (const [taskName, row] of rows) row.tr.classList.toggle("selected", taskName === name);
}

function openInstance(task, index) {
  if (selectedTask !== task) selectTask(task);
  grid.select(task, index);
  grid.reveal(task, index);
  panel.open(task, index);
}

$("#next-failed").addEventListener("click", () => {
  const from = panel.current || { task: null, index: -1 };
  const next = model.nextFailed(from.task, from.index);
  if (next) openInstance(next.task, next.index);
});

const armed = new Map(); // button -> timer of the "really?" step

for (const button of document.querySelectorAll(".actions button")) {
  const labelText = button.textContent;
  button.addEventListener("click", async () => {
    const action = button.dataset.action;
    if (action === "stop" && !armed.has(button)) {
      // Stopping cannot be undone (retry re-runs, it does not resume): ask once more.
      button.textContent = "Really stop?";
      button.classList.add("armed");
      armed.set(button, setTimeout(() => disarm(button, labelText), CONFIRM_MS));
      return;
    }
    disarm(button, labelText);
    button.disabled = true;
    try {
      const result = await post(`${jobPath(jobId)}/${action}`);
      notice(null);
      if (action === "retry" && result.changed) {
        model.job.status = result.status;
        model.job.ended_at = null;
        model.dirty.job = true;
        await connect();
      }
    } catch (error) {
      notice(explain(error));
    } finally {
      model.dirty.job = true;
      schedule();
    }
  });
}

function disarm(button, labelText) {
  clearTimeout(armed.get(button));
  armed.delete(button);
  button.textContent = labelText;
  button.classList.remove("armed");
}

start();
