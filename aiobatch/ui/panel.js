// The instance panel: state, attempts with their reasons, stdout and stderr growing live
// (a follow stream while the instance runs), download links, mappings with their URIs,
// command and environment. Everything from the server goes in as text.

import {
  ApiError, explain, formatBytes, formatClock, formatDuration, h, instancePath, post, readText, request, session,
  setBadge, setText,
} from "./lib.js";

const LOG_KEEP = 256 * 1024; // characters of each log kept on the page; the link has it all
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

// Python's str.format as the runtime applies it to mapping URIs and paths.
export function expand(template, ctx) {
  return template.replace(/\{\{|\}\}|\{(job_id|job|task|index|attempt)\}/g, (m, name) => {
    if (m === "{{") return "{";
    if (m === "}}") return "}";
    return String(ctx[name]);
  });
}

class LogView {
  constructor(stream) {
    this.stream = stream;
    this.text = document.createTextNode("");
    this.pre = h("pre", { className: "log", tabIndex: 0 }, this.text);
    this.pre.dataset.stream = stream;
    this.note = h("p", { className: "muted small", hidden: true });
    this.link = h("a", { className: "download" }, "download");
    this.state = h("span", { className: "muted small" });
    this.node = h("section", { className: `logbox log-${stream}` },
      h("header", {}, h("h4", {}, stream), this.state, this.link), this.note, this.pre);
    this.controller = null;
    this.pending = [];
  }

  // Text arrives in many small pieces: it is put on the page once a frame.
  append(text) {
    this.pending.push(text);
    if (this.pending.length === 1) requestAnimationFrame(() => this.flush());
  }

  flush() {
    if (!this.pending.length) return;
    const text = this.pending.join("");
    this.pending = [];
    const pre = this.pre;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    this.text.appendData(text);
    const excess = this.text.length - LOG_KEEP;
    if (excess > 0) {
      const cut = this.text.data.indexOf("\n", excess);
      this.text.deleteData(0, cut >= 0 ? cut + 1 : excess);
      this.truncated(true);
    }
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  truncated(yes) {
    this.note.hidden = !yes;
    setText(this.note, "Earlier output is not shown here: download the full log.");
  }

  async follow(path, filename) {
    this.stop();
    this.pending = [];
    this.text.data = "";
    this.truncated(false);
    this.link.href = path;
    this.link.download = filename;
    const controller = (this.controller = new AbortController());
    const { signal } = controller;
    let offset = 0;
    try {
      // Start near the end of a long log: the server tells the size when it knows it.
      const probe = await request(`${path}?offset=0&limit=0`, { signal });
      const size = Number(probe.headers.get("X-Aiobatch-Log-Size"));
      if (Number.isFinite(size) && size > LOG_KEEP) {
        offset = size - LOG_KEEP;
        this.truncated(true);
      }
      setText(this.state, "following…");
      let first = offset > 0;
      await readText(`${path}?follow=1&offset=${offset}`, {
        signal,
        onText: (text) => {
          if (first) {
            // The first line was cut in the middle: start at the next one.
            first = false;
            const nl = text.indexOf("\n");
            text = nl >= 0 ? text.slice(nl + 1) : text;
          }
          this.append(text);
        },
      });
      setText(this.state, this.text.length ? "" : "(empty)");
    } catch (error) {
      if (signal.aborted) return;
      setText(this.state, error instanceof ApiError ? error.message : "stream lost");
    } finally {
      if (this.controller === controller) this.controller = null;
    }
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }
}

export class InstancePanel {
  constructor(root, { model, onClose, onError }) {
    this.root = root;
    this.model = model;
    this.onClose = onClose;
    this.onError = onError;
    this.current = null; // {task, index}
    this.title = h("h2", { id: "panel-title" });
    this.status = h("span", { className: "badge", id: "panel-status" });
    this.stopButton = h("button", { type: "button", className: "danger", id: "stop-instance",
      hidden: true, onclick: () => this.stopInstance() }, "Stop instance");
    session().then(({ actions }) => { this.stopButton.hidden = !actions.includes("stop"); });
    const close = h("button", { type: "button", className: "close", title: "Close (Esc)",
      "aria-label": "Close", onclick: () => this.close() }, "×");
    this.facts = h("dl", { className: "facts", id: "panel-facts" });
    this.attempts = h("tbody");
    this.mappings = h("tbody");
    this.command = h("pre", { className: "command" });
    this.env = h("tbody");
    this.stdout = new LogView("stdout");
    this.stderr = new LogView("stderr");
    root.replaceChildren(
      h("header", { className: "panel-head" }, this.title, this.status, h("span", { className: "grow" }),
        this.stopButton, close),
      this.facts,
      h("h3", {}, "Attempts"),
      h("table", { className: "attempts" },
        h("thead", {}, h("tr", {}, ...["#", "started", "ended", "took", "outcome", "exit", "reason"]
          .map((c) => h("th", {}, c)))),
        this.attempts),
      h("h3", {}, "Logs"),
      this.stdout.node,
      this.stderr.node,
      h("h3", {}, "Inputs and outputs"),
      h("table", { className: "mappings" },
        h("thead", {}, h("tr", {}, ...["", "URI", "path in the work dir", "when"].map((c) => h("th", {}, c)))),
        this.mappings),
      h("details", { className: "more" },
        h("summary", {}, "Command and environment"),
        this.command,
        h("table", { className: "env" }, this.env)),
    );
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.current) this.close();
    });
  }

  open(task, index) {
    const same = this.current && this.current.task === task && this.current.index === index;
    this.current = { task, index };
    this.root.hidden = false;
    document.body.classList.add("with-panel");
    if (same) return;
    setText(this.title, `${task} #${index}`);
    this.update();
    this.fillStatic();
    const base = instancePath(this.model.id, task, index);
    this.stdout.follow(`${base}/logs/stdout`, `${task}.${index}.stdout`);
    this.stderr.follow(`${base}/logs/stderr`, `${task}.${index}.stderr`);
  }

  close() {
    this.stdout.stop();
    this.stderr.stop();
    this.current = null;
    this.root.hidden = true;
    document.body.classList.remove("with-panel");
    this.onClose();
  }

  // Called when the model changed this instance's task: state, facts, attempts.
  update() {
    if (!this.current) return;
    const task = this.model.tasks.get(this.current.task);
    if (!task) return;
    const inst = task.instance(this.current.index);
    setBadge(this.status, inst.status);
    this.stopButton.disabled = TERMINAL.has(inst.status) || TERMINAL.has(this.model.job.status);
    const facts = [
      ["status", inst.status],
      ["attempts", String(inst.attempts)],
      ["exit code", inst.exit_code === null ? "—" : String(inst.exit_code)],
      ["duration", inst.duration_s === null ? "—" : formatDuration(inst.duration_s)],
      ["reason", inst.reason || "—"],
      ["cpu", inst.usage ? `${inst.usage.cpu.toFixed(2)} s` : "—"],
      ["peak memory", inst.usage && inst.usage.rss !== null ? formatBytes(inst.usage.rss) : "—"],
    ];
    this.facts.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k),
      h("dd", { dataset: { fact: k.replace(" ", "_") } }, v)]));
    const list = task.attempts.get(this.current.index) || [];
    const t = Date.now() / 1000;
    const rows = list.map((a) => {
      const took = a.start !== null ? (a.ended ?? t) - a.start : null;
      return h("tr", { className: `outcome-${a.outcome || "RUNNING"}` },
        h("td", {}, String(a.attempt)),
        h("td", {}, a.start !== null ? formatClock(a.start) : "—"),
        h("td", {}, a.ended ? formatClock(a.ended) : a.neverRan ? "—" : "running"),
        h("td", {}, took === null ? "" : formatDuration(took)),
        h("td", {}, a.outcome || "RUNNING"),
        h("td", {}, a.exitCode === null ? "" : String(a.exitCode)),
        h("td", { className: "reason" }, a.reason || ""));
    });
    if (!rows.length) {
      rows.push(h("tr", {}, h("td", { colSpan: 7, className: "muted" },
        inst.status === "PENDING" ? "Not started yet." : "No attempt recorded (history not loaded).")));
    }
    this.attempts.replaceChildren(...rows);
  }

  fillStatic() {
    const { task: name, index } = this.current;
    const task = this.model.tasks.get(name);
    const def = task && task.def;
    const inst = task ? task.instance(index) : null;
    const ctx = {
      job_id: this.model.id,
      job: this.model.job.name,
      task: name,
      index,
      attempt: Math.max(1, inst ? inst.attempts : 1),
    };
    const rows = [];
    if (def) {
      for (const m of def.inputs || []) {
        rows.push(h("tr", {}, h("td", {}, "input"), h("td", { className: "uri", title: m.from }, expand(m.from, ctx)),
          h("td", {}, expand(m.path, ctx)), h("td", {}, "before start")));
      }
      for (const m of def.outputs || []) {
        rows.push(h("tr", {}, h("td", {}, "output"), h("td", { className: "uri", title: m.to }, expand(m.to, ctx)),
          h("td", {}, expand(m.path, ctx)), h("td", {}, `after exit (${m.when || "success"})`)));
      }
      for (const stream of ["stdout", "stderr"]) {
        const target = def[stream];
        if (!target) continue;
        let uri = expand(target, ctx);
        if (uri.endsWith("/")) uri += `${name}.${index}.${stream}`;
        rows.push(h("tr", {}, h("td", {}, stream), h("td", { className: "uri", title: target }, uri),
          h("td", {}, "—"), h("td", {}, "after every end")));
      }
    }
    if (!rows.length) {
      rows.push(h("tr", {}, h("td", { colSpan: 4, className: "muted" },
        def ? "This task maps no storage." : "The job's definition is not available.")));
    }
    this.mappings.replaceChildren(...rows);
    const command = def ? def.command : null;
    setText(this.command, command === null || command === undefined ? "" :
      Array.isArray(command) ? JSON.stringify(command) : String(command));
    const env = { ...(this.model.definition ? this.model.definition.env : {}), ...(def ? def.env : {}) };
    this.env.replaceChildren(...Object.entries(env).map(([k, v]) =>
      h("tr", {}, h("th", {}, k), h("td", {}, String(v)))));
  }

  async stopInstance() {
    if (!this.current) return;
    const { task, index } = this.current;
    this.stopButton.disabled = true;
    try {
      await post(`${instancePath(this.model.id, task, index)}/stop`);
    } catch (error) {
      this.onError(explain(error));
      this.stopButton.disabled = false;
    }
  }
}
