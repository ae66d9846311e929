// The jobs page: /ui/jobs#status=FAILED&label=team=ml&offset=50. A page of jobs, newest first,
// filtered by status and by labels (a job must have all of them); kept current by the all-jobs event stream: a job's new status shows in the next
// frame, and the page (counts, new jobs) is fetched again at most once a second.

import {
  API, ApiError, JOB_STATES, JOB_TERMINAL, $, cssState, explain, formatAge, formatDuration, formatTime,
  frameScheduler, getJSON, h, jobDuration, notice, progressBar, readNdjson, setBadge,
  setProgress, setText,
} from "./lib.js";

const PAGE = 50;
const REFRESH_MS = 1000; // at most one page fetch a second, however busy the stream
const RECONNECT_MS = 2000;

const state = { status: "", labels: [], offset: 0 };
let jobs = []; // the page shown
const rows = new Map(); // job id -> {tr, ...cells}
const dirtyJobs = new Set();
let refreshTimer = null;
let lastRefresh = 0;
let loading = null;
const schedule = frameScheduler(renderDirty);

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const status = (params.get("status") || "").toUpperCase();
  state.status = JOB_STATES.includes(status) ? status : "";
  const offset = Number.parseInt(params.get("offset") || "0", 10);
  state.offset = Number.isFinite(offset) && offset > 0 ? offset : 0;
  state.labels = params.getAll("label");
  $("#status-filter").value = state.status;
  $("#label-filter").value = state.labels.join(", ");
}

// "team=ml, run=nightly": KEY=VALUE filters split at commas (the service checks each one and
// says which is malformed). A value with a comma can be asked for through the API, not here.
// "team=ml, app=a,b" is two filters: a comma starts a new one only where a label key and
// "=" follow (keys have no comma), so a value may hold commas.
const NEXT_LABEL = /,\s*(?=[A-Za-z0-9][A-Za-z0-9._\/-]{0,62}=)/;

function parseLabels(text) {
  return text.split(NEXT_LABEL).map((part) => part.trim()).filter((part) => part !== "");
}

function writeHash() {
  const params = new URLSearchParams();
  if (state.status) params.set("status", state.status);
  for (const label of state.labels) params.append("label", label);
  if (state.offset) params.set("offset", String(state.offset));
  const hash = params.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname);
}

async function load() {
  if (loading) {
    loading.again = true;
    return;
  }
  loading = { again: false };
  lastRefresh = performance.now();
  const params = new URLSearchParams({ limit: String(PAGE + 1), offset: String(state.offset) });
  if (state.status) params.set("status", state.status);
  for (const label of state.labels) params.append("label", label);
  try {
    const page = await getJSON(`${API}/jobs?${params}`);
    const more = page.length > PAGE;
    jobs = page.slice(0, PAGE);
    renderPage(more);
    notice(null);
  } catch (error) {
    notice(explain(error));
    if (error instanceof ApiError && error.status === 401) setLive("signed out", "error");
  } finally {
    const again = loading.again;
    loading = null;
    if (again) load();
  }
}

// Fetches the page again soon: at most once per REFRESH_MS.
function refreshSoon() {
  if (refreshTimer !== null) return;
  const wait = Math.max(0, REFRESH_MS - (performance.now() - lastRefresh));
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    load();
  }, wait);
}

function renderPage(more) {
  const body = $("#job-rows");
  const seen = new Set();
  const trs = jobs.map((job) => {
    seen.add(job.id);
    let row = rows.get(job.id);
    if (!row) {
      row = makeRow(job);
      rows.set(job.id, row);
    }
    row.job = job;
    fillRow(row);
    return row.tr;
  });
  for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
  body.replaceChildren(...trs);
  $("#empty").hidden = jobs.length > 0;
  const which = state.status ? `${state.status.toLowerCase()} jobs` : "jobs";
  const text = state.labels.length
    ? `No ${which} with these labels.`
    : state.status ? `No ${which}.` : "No jobs yet.";
  setText($("#empty"), text);
  const first = jobs.length ? state.offset + 1 : 0;
  setText($("#range"), jobs.length ? `${first}–${state.offset + jobs.length}` : "");
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = !more;
  document.body.dataset.state = "ready";
}

function makeRow(job) {
  const href = `/ui/jobs/${encodeURIComponent(job.id)}`;
  const name = h("a", { href });
  const labels = h("span", { className: "labels muted" });
  const status = h("span", { className: "badge" });
  const reason = h("span", { className: "reason" });
  const bar = progressBar();
  const counts = h("span", { className: "mono" });
  const age = h("span", {});
  const duration = h("span", { className: "mono" });
  const tr = h("tr", { dataset: { job: job.id } },
    h("td", { className: "job-name" }, name, " ", labels),
    h("td", {}, status, " ", reason),
    h("td", { className: "bar-cell" }, bar),
    h("td", { className: "num" }, counts),
    h("td", {}, age),
    h("td", { className: "num" }, duration),
    h("td", { className: "mono muted" }, h("a", { href, className: "id-link" }, job.id)));
  return { tr, name, labels, status, reason, bar, counts, age, duration, job };
}

function fillRow(row) {
  const { job } = row;
  setText(row.name, job.name);
  // As text, never markup: a label value is whatever the submitter wrote.
  const labels = Object.entries(job.labels || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  setText(row.labels, labels.map(([key, value]) => `${key}=${value}`).join(" "));
  setBadge(row.status, job.status);
  setText(row.reason, job.reason || "");
  const total = job.total || 0;
  const done = job.done || 0;
  setProgress(row.bar, { total, succeeded: done });
  row.bar.className = `bar job-bar state-${cssState(job.status)}`;
  setText(row.counts, total ? `${done}/${total}` : "");
  setText(row.age, formatAge(job.submitted_at));
  row.age.title = formatTime(job.submitted_at);
  setText(row.duration, formatDuration(jobDuration(job)));
}

function renderDirty() {
  for (const id of dirtyJobs) {
    const row = rows.get(id);
    if (row) fillRow(row);
  }
  dirtyJobs.clear();
}

function onEvents(events) {
  let refresh = false;
  for (const event of events) {
    if (event.type === "JobSubmitted") {
      if (state.offset === 0 && (!state.status || state.status === "SUBMITTED")) refresh = true;
      continue;
    }
    const row = rows.get(event.job_id);
    if (event.type === "JobStateChanged") {
      if (row) {
        const job = row.job;
        job.status = event.state;
        job.reason = event.reason;
        if (event.state === "RUNNING" && !job.started_at) job.started_at = event.ts;
        job.ended_at = JOB_TERMINAL.has(event.state) ? event.ts : null;
        dirtyJobs.add(event.job_id);
      }
      // The filter may now take the job in or out of the page.
      if (state.status) refresh = true;
    }
    if (row) refresh = true; // progress: the page's counts are fetched again
  }
  if (dirtyJobs.size) schedule();
  if (refresh) refreshSoon();
}

async function follow() {
  for (;;) {
    setLive("connecting…", "connecting");
    try {
      await readNdjson(`${API}/events`, {
        onOpen: () => {
          setLive("live", "live");
          load(); // anything that happened while not subscribed
        },
        onEvents,
      });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        notice(explain(error));
        setLive("signed out", "error");
        return;
      }
    }
    setLive("reconnecting…", "error");
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function setLive(text, kind) {
  const node = $("#live");
  setText(node, text);
  node.className = `live live-${kind}`;
}

$("#status-filter").addEventListener("change", (e) => {
  state.status = e.target.value;
  state.offset = 0;
  writeHash();
  load();
});
$("#label-filter").addEventListener("change", (e) => {
  state.labels = parseLabels(e.target.value);
  state.offset = 0;
  writeHash();
  load();
});
$("#prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE);
  writeHash();
  load();
});
$("#next").addEventListener("click", () => {
  state.offset += PAGE;
  writeHash();
  load();
});
window.addEventListener("hashchange", () => {
  readHash();
  load();
});

// Ages and running durations move on by themselves.
setInterval(() => {
  for (const row of rows.values()) {
    setText(row.age, formatAge(row.job.submitted_at));
    if (!JOB_TERMINAL.has(row.job.status)) setText(row.duration, formatDuration(jobDuration(row.job)));
  }
}, 1000);

readHash();
load();
follow();
