// The job page: /ui/jobs/<id>. Loads the definition, a snapshot and the history, then
// follows the job's event stream. Events are applied to the model as they arrive; the page
// is redrawn at most once per animation frame, and only what the events touched.

import { DagView } from "./dag.js";
import { GridView } from "./grid.js";
import {
  ApiError, JOB_TERMINAL, Tooltip, $, API, explain, formatDuration, frameScheduler, getJSON,
  jobDuration, jobPath, notice, post, readNdjson, session, setText,
} from "./lib.js";
import { JobModel } from "./model.js";
import { InstancePanel } from "./panel.js";
import { TaskRows, describeTask, renderHead, renderTotals } from "./summary.js";
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
const taskRows = new TaskRows($("#task-rows"), { onSelect: (name) => selectTask(name) });
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
    taskRows.build(model.order);
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
  if (dirty.job) renderHead(model);
  for (const name of dirty.tasks) {
    const task = model.tasks.get(name);
    if (!task) continue;
    taskRows.update(task);
    dag.update(task);
  }
  if (dirty.job || dirty.tasks.size) renderTotals(model);
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

// -- interaction --------------------------------------------------------------------------------

function selectTask(name) {
  selectedTask = name;
  dag.select(name);
  grid.selectTask(name);
  taskRows.select(name);
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
