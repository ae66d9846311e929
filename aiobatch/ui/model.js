// The job page's model: the job, its tasks (task-model.js: every instance's state in typed
// arrays, and every attempt, for the timeline and the instance panel). Snapshots and events
// are applied here; the views read it and redraw only what the `dirty` sets name.

import { CODE, INSTANCE_STATES, JOB_TERMINAL, TASK_TERMINAL } from "./lib.js";
import { Attempt, NO_EXIT, TaskModel, noteUsage, reasonText } from "./task-model.js";


export class JobModel {
  constructor(jobId) {
    this.id = jobId;
    this.job = { id: jobId, name: "", status: "SUBMITTED", reason: null };
    this.stopping = null;
    this.tasks = new Map();
    this.order = [];
    this.edges = []; // [from, to] from the definition
    this.definition = null;
    this.lastTs = 0;
    this.dirty = { job: true, tasks: new Set(), structure: true, cells: new Map(), allCells: true, timeline: true };
    this.listeners = new Set();
  }

  // -- dirtiness (what the next frame redraws) ---------------------------------------------

  touchCell(task, index) {
    if (this.dirty.allCells) return;
    let set = this.dirty.cells.get(task);
    if (!set) this.dirty.cells.set(task, (set = new Set()));
    set.add(index);
    if (set.size > 2000) this.dirty.allCells = true;
  }

  takeDirty() {
    const dirty = this.dirty;
    this.dirty = { job: false, tasks: new Set(), structure: false, cells: new Map(), allCells: false, timeline: false };
    return dirty;
  }

  // -- the definition (edges, mappings) ----------------------------------------------------

  applyDefinition(defn) {
    this.definition = defn;
    this.edges = [];
    defn.tasks.forEach((t, i) => {
      const task = this.ensureTask(t.name, i);
      task.def = t;
      for (const dep of t.depends_on || []) this.edges.push([dep, t.name]);
    });
    this.dirty.structure = true;
  }

  ensureTask(name, order = this.order.length) {
    let task = this.tasks.get(name);
    if (!task) {
      task = new TaskModel(name, order);
      this.tasks.set(name, task);
      this.order.push(task);
      this.dirty.structure = true;
    }
    return task;
  }

  // -- snapshots: GET /v1/jobs/ID[?instances=1] ----------------------------------------------

  applySnapshot(snap) {
    const { tasks, ...job } = snap;
    Object.assign(this.job, job);
    this.dirty.job = true;
    for (const [name, result] of Object.entries(tasks)) {
      const task = this.ensureTask(name);
      if (task.total !== result.total) {
        task.resize(result.total);
        this.dirty.structure = true;
      }
      task.status = result.status;
      task.reason = result.reason;
      this.dirty.tasks.add(name);
      if (result.instances) {
        for (const inst of result.instances) this.setInstance(task, inst.index, inst);
        this.dirty.allCells = true;
      }
      this.applyQueued(task, result.queued);
    }
    this.dirty.timeline = true;
  }

  // The reasons a light snapshot has that come with no event: the tasks' waiting reasons,
  // derived on the server (no_free_slot, max_parallel), and the reasons of instances that
  // wait in their executor's own queue (Slurm's pending reasons).
  applyTaskReasons(snap, since) {
    for (const [name, result] of Object.entries(snap.tasks)) {
      const task = this.tasks.get(name);
      if (!task) continue;
      this.applyQueued(task, result.queued);
      if (task.eventTs > since) continue; // an event newer than the request won
      if (task.status !== result.status || task.reason !== result.reason) {
        task.status = result.status;
        task.reason = result.reason;
        this.dirty.tasks.add(name);
      }
    }
  }

  // A task's `queued` map (index -> reason; null when none waits) onto its STAGING instances,
  // in O(size of the map and of the last one). A reason shown from an earlier map goes when
  // its index is no longer there; a reason from an event (stopped_by_user, backoff, a
  // failure) is never replaced, as the server's instance results keep it too. An instance in
  // another state is skipped: the map may be older than the event that moved it on.
  applyQueued(task, queued) {
    const shown = task.queued;
    if (!queued && !shown.size) return;
    for (const [index, reason] of shown) {
      if (queued && Object.hasOwn(queued, index)) continue;
      shown.delete(index);
      if (task.reasons[index] === reason) this.setQueuedReason(task, index, null);
    }
    if (!queued) return;
    for (const [key, reason] of Object.entries(queued)) {
      const index = Number(key);
      if (!Number.isInteger(index) || index < 0 || index >= task.total) continue;
      if (task.states[index] !== CODE.STAGING || typeof reason !== "string") continue;
      const current = task.reasons[index];
      if (current !== null && current !== reason && !shown.has(index)) continue;
      shown.set(index, reason);
      if (current !== reason) this.setQueuedReason(task, index, reason);
    }
  }

  setQueuedReason(task, index, reason) {
    task.reasons[index] = reason;
    this.touchCell(task.name, index); // its tooltip
    this.dirty.tasks.add(task.name); // the instance panel
  }

  setInstance(task, index, inst) {
    if (index < 0 || index >= task.total) return;
    const code = CODE[inst.status] ?? CODE.PENDING;
    task.setState(index, code);
    task.tries[index] = inst.attempts ?? 0;
    task.exitCodes[index] = inst.exit_code ?? NO_EXIT;
    task.durations[index] = inst.duration_s ?? NaN;
    task.setReason(index, reasonText(inst.reason, inst.not_before));
    noteUsage(task, index, inst);
  }

  // -- events --------------------------------------------------------------------------------

  // Applies one event: to the states (a live event; the history's are older than the
  // snapshot, so state=false) and to the attempts (attempts=false while the history, which
  // must come first, is still loading).
  apply(event, { state = true, attempts = true } = {}) {
    if (event.job_id !== undefined && event.job_id !== this.id) return;
    if (state && event.ts > this.lastTs) this.lastTs = event.ts;
    switch (event.type) {
      case "InstanceStateChanged":
        if (attempts) this.recordAttempt(event);
        if (state) this.applyInstance(event);
        break;
      case "TaskStateChanged":
        if (state) this.applyTask(event);
        break;
      case "JobStateChanged":
        if (state) this.applyJob(event);
        break;
      case "JobStopRequested":
        if (state) {
          this.stopping = { state: event.state, reason: event.reason };
          this.dirty.job = true;
        }
        break;
      default:
    }
  }

  applyJob(event) {
    const job = this.job;
    const wasTerminal = JOB_TERMINAL.has(job.status);
    job.status = event.state;
    job.reason = event.reason;
    if (event.state === "RUNNING" && !job.started_at) job.started_at = event.ts;
    if (JOB_TERMINAL.has(event.state)) {
      job.ended_at = event.ts;
      this.stopping = null;
    } else if (wasTerminal) {
      job.ended_at = null; // retried
    }
    this.dirty.job = true;
    this.dirty.timeline = true;
  }

  applyTask(event) {
    const task = this.tasks.get(event.task);
    if (!task) return;
    const wasTerminal = TASK_TERMINAL.has(task.status);
    task.status = event.state;
    task.reason = event.reason;
    task.eventTs = event.ts;
    this.dirty.tasks.add(task.name);
    if (TASK_TERMINAL.has(event.state)) {
      // Instances that never started end with their task, without an event of their own
      // (the server counts them cancelled, and its snapshot shows them so).
      for (let i = 0; i < task.total; i++) {
        if (task.states[i] === CODE.PENDING) {
          task.setState(i, CODE.CANCELLED);
          task.setReason(i, event.reason);
          this.touchCell(task.name, i);
        }
      }
    } else if (wasTerminal && event.state === "PENDING") {
      // Retried: everything that did not succeed waits again (those that ran get their
      // own events with their next attempt).
      for (let i = 0; i < task.total; i++) {
        if (task.states[i] !== CODE.SUCCEEDED) {
          task.setState(i, CODE.PENDING);
          task.setReason(i, event.reason);
          this.touchCell(task.name, i);
        }
      }
    }
  }

  applyInstance(event) {
    const task = this.tasks.get(event.task);
    if (!task || event.index >= task.total) return;
    const i = event.index;
    const code = CODE[event.state] ?? CODE.PENDING;
    task.setState(i, code);
    task.tries[i] = Math.max(0, event.attempt - (code === CODE.PENDING ? 1 : 0));
    task.exitCodes[i] = event.exit_code ?? NO_EXIT;
    task.durations[i] = event.duration_s ?? NaN;
    task.setReason(i, reasonText(event.reason, event.not_before));
    noteUsage(task, i, event);
    this.touchCell(task.name, i);
    this.dirty.tasks.add(task.name);
  }

  // -- attempts (timeline, panel) ------------------------------------------------------------

  recordAttempt(event) {
    const task = this.tasks.get(event.task);
    if (!task) return;
    let list = task.attempts.get(event.index);
    if (!list) task.attempts.set(event.index, (list = []));
    const open = list.length ? list[list.length - 1] : null;
    const isOpen = open !== null && open.ended === null;
    const state = event.state;
    if (state === "STAGING" || state === "RUNNING" || state === "UPLOADING") {
      let attempt = isOpen && open.attempt === event.attempt ? open : null;
      if (attempt === null) {
        if (isOpen) this.closeAttempt(open, event.ts, "INTERRUPTED", null, event);
        attempt = new Attempt(task.name, event.index, event.attempt);
        list.push(attempt);
        task.segments.push(attempt);
      }
      if (state === "STAGING") attempt.staged ??= event.ts;
      if (state === "RUNNING") attempt.started ??= event.started_at ?? event.ts;
      if (state === "UPLOADING") {
        attempt.started ??= event.started_at ?? null;
        attempt.exitCode = event.exit_code ?? attempt.exitCode;
        attempt.duration = event.duration_s ?? attempt.duration;
      }
      attempt.start ?? (attempt.staged = event.ts);
    } else if (state === "PENDING") {
      // Back to waiting: the open attempt failed and is tried again (reason: why it failed),
      // or the runtime stopped it (interrupted), or a retried job starts over (retried).
      if (isOpen) {
        const outcome = event.reason === "interrupted" ? "INTERRUPTED" : "RETRIED";
        this.closeAttempt(open, event.ts, outcome, event.reason, event);
      }
    } else if (isOpen) {
      this.closeAttempt(open, event.ts, state, event.reason, event);
    } else if (state === "CANCELLED" || state === "FAILED") {
      // Ended without running (stopped while waiting): listed, with no time on the timeline.
      const attempt = new Attempt(task.name, event.index, event.attempt);
      attempt.outcome = state;
      attempt.reason = event.reason;
      attempt.ended = event.ts;
      attempt.neverRan = true;
      list.push(attempt);
    }
    this.dirty.timeline = true;
    this.dirty.tasks.add(task.name); // the panel lists the attempts
  }

  closeAttempt(attempt, ts, outcome, reason, event) {
    attempt.ended = ts;
    attempt.outcome = outcome;
    attempt.reason = reason;
    if (event.exit_code !== undefined && event.exit_code !== null) attempt.exitCode = event.exit_code;
    if (event.duration_s !== undefined && event.duration_s !== null) attempt.duration = event.duration_s;
  }

  // -- totals --------------------------------------------------------------------------------

  totals() {
    let total = 0;
    let done = 0;
    let running = 0;
    let succeeded = 0;
    let failed = 0;
    const counts = new Array(INSTANCE_STATES.length).fill(0);
    for (const task of this.order) {
      total += task.total;
      done += task.done;
      running += task.running;
      succeeded += task.succeeded;
      failed += task.failed;
      for (let c = 0; c < counts.length; c++) counts[c] += task.counts[c];
    }
    return { total, done, running, succeeded, failed, counts };
  }

  // The next failed instance after (task, index) in page order, or null.
  nextFailed(afterTask, afterIndex) {
    const tasks = this.order;
    if (!tasks.length) return null;
    let start = afterTask ? tasks.indexOf(this.tasks.get(afterTask)) : 0;
    if (start < 0) start = 0;
    for (let k = 0; k <= tasks.length; k++) {
      const task = tasks[(start + k) % tasks.length];
      const from = k === 0 && afterTask ? afterIndex + 1 : 0;
      const to = k === tasks.length ? Math.min(task.total, afterIndex + 1) : task.total;
      for (let i = from; i < to; i++) {
        if (task.states[i] === CODE.FAILED) return { task: task.name, index: i };
      }
    }
    return null;
  }
}
