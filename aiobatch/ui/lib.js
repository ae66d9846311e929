// Shared by the pages: the API (cookies, CSRF), NDJSON streams, DOM building, formatting.
//
// Every string that comes from the server goes into the page as text (textContent,
// createTextNode, SVG text nodes, canvas fillText): nothing here parses HTML.

export const API = "/v1";

// -- states ---------------------------------------------------------------------------------

// Instance states, in the order of their codes (the instance grid stores codes).
export const INSTANCE_STATES = [
  "PENDING", "STAGING", "RUNNING", "UPLOADING", "SUCCEEDED", "FAILED", "CANCELLED",
];
export const CODE = Object.fromEntries(INSTANCE_STATES.map((s, i) => [s, i]));
export const ACTIVE_CODES = [CODE.STAGING, CODE.RUNNING, CODE.UPLOADING];
export const DONE_CODES = [CODE.SUCCEEDED, CODE.FAILED, CODE.CANCELLED];
export const JOB_TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
export const TASK_TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"]);
export const JOB_STATES = ["SUBMITTED", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELLED"];

// Cell colours of the grid and the timeline (the CSS has the same for badges and nodes).
export const STATE_COLOURS = {
  PENDING: "#e4e7ec",
  READY: "#c7d2fe",
  STAGING: "#a5b4fc",
  RUNNING: "#3b82f6",
  UPLOADING: "#06b6d4",
  SUCCEEDED: "#22c55e",
  FAILED: "#ef4444",
  CANCELLED: "#f59e0b",
  SKIPPED: "#d0d5dd",
  SUSPENDED: "#eab308",
  SUBMITTED: "#c7d2fe",
};
export const CODE_COLOURS = INSTANCE_STATES.map((s) => STATE_COLOURS[s]);

// -- HTTP -----------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

function csrfToken() {
  // The server names its cookies after its port: each listener has its own.
  const port = location.port || (location.protocol === "https:" ? "443" : "80");
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === `aiobatch_csrf_${port}`) return decodeURIComponent(rest.join("="));
  }
  return null;
}

async function failure(response) {
  let type = "HTTPError";
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      type = body.error.type || type;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, type, message);
}

export async function request(path, { method = "GET", signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    const token = csrfToken();
    if (token !== null) headers["X-Aiobatch-CSRF"] = token;
  }
  const response = await fetch(path, { method, headers, credentials: "same-origin", signal });
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export async function post(path) {
  return (await request(path, { method: "POST" })).json();
}

// What this page's session may do (GET /v1/session): asked once, shared by the page's parts.
// Until it answers (or if it fails) the page offers no action: the server decides anyway.
let sessionAnswer = null;
export function session() {
  if (sessionAnswer === null) {
    sessionAnswer = getJSON(`${API}/session`).catch(() => ({ scope: "read", actions: [] }));
  }
  return sessionAnswer;
}

export function jobPath(jobId) {
  return `${API}/jobs/${encodeURIComponent(jobId)}`;
}

export function instancePath(jobId, task, index) {
  return `${jobPath(jobId)}/tasks/${encodeURIComponent(task)}/instances/${index}`;
}

// Reads an application/x-ndjson response and calls onEvents with each chunk's parsed lines
// (a batch, so that a burst costs one call). Resolves when the stream ends.
export async function readNdjson(path, { signal, onOpen, onEvents }) {
  const response = await request(path, { signal });
  if (onOpen) onOpen();
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    rest += decoder.decode(value, { stream: true });
    const lines = rest.split("\n");
    rest = lines.pop();
    const events = [];
    for (const line of lines) {
      if (line.trim() === "") continue;
      try {
        events.push(JSON.parse(line));
      } catch {
        console.warn("aiobatch: unreadable event line", line.slice(0, 200));
      }
    }
    if (events.length) onEvents(events);
  }
}

// Reads a byte stream (a log) and calls onText with each decoded piece.
export async function readText(path, { signal, onText }) {
  const response = await request(path, { signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const text = decoder.decode(value, { stream: true });
    if (text) onText(text);
  }
  const last = decoder.decode();
  if (last) onText(last);
  return response;
}

// -- DOM ------------------------------------------------------------------------------------

// h("td", {className: "x", title: name}, "text", child): properties are set as properties,
// children are nodes or text (never parsed as HTML).
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

export function badge(status) {
  return h("span", { className: `badge state-${cssState(status)}` }, status);
}

export function setBadge(node, status) {
  node.className = `badge state-${cssState(status)}`;
  setText(node, status);
}

// Only known state names become class names; anything else is "unknown".
export function cssState(status) {
  return Object.hasOwn(STATE_COLOURS, status) ? status : "unknown";
}

// A progress bar: <div class="bar"><span class="done"/><span class="running"/></div>.
export function progressBar() {
  return h("div", { className: "bar" }, h("span", { className: "fill ok" }),
    h("span", { className: "fill bad" }), h("span", { className: "fill running" }));
}

export function setProgress(bar, { total, succeeded = 0, failed = 0, running = 0 }) {
  const pct = (n) => (total > 0 ? `${(100 * n) / total}%` : "0%");
  const [ok, bad, run] = bar.children;
  if (ok.style.width !== pct(succeeded)) ok.style.width = pct(succeeded);
  if (bad.style.width !== pct(failed)) bad.style.width = pct(failed);
  if (run.style.width !== pct(running)) run.style.width = pct(running);
}

// The one tooltip of a page: a div that follows the pointer; its text is set as text.
export class Tooltip {
  constructor() {
    this.node = h("div", { className: "tooltip", hidden: true, role: "tooltip" });
    document.body.append(this.node);
  }

  show(text, clientX, clientY) {
    setText(this.node, text);
    this.node.hidden = false;
    const { innerWidth, innerHeight } = window;
    const rect = this.node.getBoundingClientRect();
    let x = clientX + 14;
    let y = clientY + 14;
    if (x + rect.width > innerWidth - 4) x = clientX - rect.width - 10;
    if (y + rect.height > innerHeight - 4) y = clientY - rect.height - 10;
    this.node.style.transform = `translate(${Math.max(0, x)}px, ${Math.max(0, y)}px)`;
  }

  hide() {
    this.node.hidden = true;
  }
}

// A message line at the top of the page (errors, lost connection).
export function notice(text, kind = "error") {
  const box = $("#notice");
  if (!box) return;
  if (!text) {
    box.hidden = true;
    return;
  }
  box.className = `notice ${kind}`;
  setText(box, text);
  box.hidden = false;
}

export function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    return "Not signed in: open the address with its ?token=… again (aiobatch status JOB prints it).";
  }
  if (error instanceof ApiError) return `${error.type}: ${error.message}`;
  return `Cannot reach the aiobatch server (${error.message || error}).`;
}

// -- formatting -----------------------------------------------------------------------------

export function now() {
  return Date.now() / 1000;
}

export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  if (seconds < 0) seconds = 0;
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  if (seconds < 60) return `${Math.round(seconds)}s`;
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

export function formatAge(ts) {
  if (!ts) return "";
  return `${formatDuration(now() - ts)} ago`;
}

export function formatTime(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function formatClock(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.` +
    `${pad(d.getMilliseconds(), 3)}`;
}

export function jobDuration(job) {
  if (!job.started_at) return null;
  return (job.ended_at || now()) - job.started_at;
}

// Runs fn in an animation frame, at most once per frame and at most once per minGapMs
// (however often it is asked for): a busy stream costs a bounded number of redraws.
export function frameScheduler(fn, minGapMs = 0) {
  let pending = false;
  let last = -Infinity;
  const run = (t) => {
    pending = false;
    last = performance.now();
    fn(t);
  };
  return () => {
    if (pending) return;
    pending = true;
    const wait = last + minGapMs - performance.now();
    if (wait > 1) setTimeout(() => requestAnimationFrame(run), wait);
    else requestAnimationFrame(run);
  };
}

// Sizes a canvas to its CSS box times the device pixel ratio; returns the 2d context,
// scaled so that drawing is in CSS pixels.
export function fitCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(width * ratio));
  const hgt = Math.max(1, Math.round(height * ratio));
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== hgt) canvas.height = hgt;
  const cssW = `${width}px`;
  const cssH = `${height}px`;
  if (canvas.style.width !== cssW) canvas.style.width = cssW;
  if (canvas.style.height !== cssH) canvas.style.height = cssH;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return ctx;
}

// Shortens text drawn on a canvas to maxWidth, with an ellipsis.
export function fitText(ctx, text, maxWidth) {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(`${text.slice(0, mid)}…`).width <= maxWidth) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}
