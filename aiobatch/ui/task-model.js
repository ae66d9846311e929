// One task of the job page's model: every instance's state in typed arrays (so that 10,000
// instances cost a few hundred KB), and the attempts of each, for the timeline and the
// instance panel. The JobModel (model.js) applies snapshots and events to these.

import { CODE, INSTANCE_STATES, formatClock } from "./lib.js";

export const NO_EXIT = -2147483648;

// An attempt's cost as its result or event carries it (none: a new attempt has begun).
export function noteUsage(task, index, source) {
  const cpu = (source.cpu_user_s ?? 0) + (source.cpu_system_s ?? 0);
  const known = source.cpu_user_s != null || source.max_rss_bytes != null;
  if (known) task.usage.set(index, { cpu, rss: source.max_rss_bytes ?? null });
  else task.usage.delete(index);
}

// An instance's reason as shown: a retry's backoff says until when.
export function reasonText(reason, notBefore) {
  if (reason === "backoff" && notBefore) return `backoff until ${formatClock(notBefore)}`;
  return reason ?? null;
}

export class TaskModel {
  constructor(name, order) {
    this.name = name;
    this.order = order;
    this.def = null; // from /definition: command, depends_on, inputs, outputs, ...
    this.status = "PENDING";
    this.reason = null;
    this.total = 0;
    this.resize(0);
    this.attempts = new Map(); // index -> [Attempt, ...] in attempt order
    this.segments = []; // every attempt of this task that started, for the timeline
  }

  resize(total) {
    this.total = total;
    this.states = new Uint8Array(total);
    this.tries = new Uint16Array(total);
    this.exitCodes = new Int32Array(total).fill(NO_EXIT);
    this.durations = new Float64Array(total).fill(NaN);
    this.reasons = new Array(total).fill(null);
    // The reasons shown from the task's `queued` map (a queue of the executor's own, Slurm's),
    // by index, while no event or snapshot has set that instance's reason since.
    this.queued = new Map();
    // What an instance's latest ended attempt cost, by index: {cpu (s), rss (bytes)}.
    this.usage = new Map();
    this.counts = new Int32Array(INSTANCE_STATES.length);
    this.counts[CODE.PENDING] = total;
  }

  // A reason from an event or a snapshot: it replaces one shown from `queued`.
  setReason(index, text) {
    this.reasons[index] = text;
    if (this.queued.size) this.queued.delete(index);
  }

  setState(index, code) {
    const old = this.states[index];
    if (old === code) return false;
    this.counts[old] -= 1;
    this.counts[code] += 1;
    this.states[index] = code;
    return true;
  }

  get done() {
    return this.counts[CODE.SUCCEEDED] + this.counts[CODE.FAILED] + this.counts[CODE.CANCELLED];
  }

  get running() {
    return this.counts[CODE.STAGING] + this.counts[CODE.RUNNING] + this.counts[CODE.UPLOADING];
  }

  get succeeded() {
    return this.counts[CODE.SUCCEEDED];
  }

  get failed() {
    return this.counts[CODE.FAILED];
  }

  instance(index) {
    const exit = this.exitCodes[index];
    const duration = this.durations[index];
    return {
      index,
      status: INSTANCE_STATES[this.states[index]],
      attempts: this.tries[index],
      exit_code: exit === NO_EXIT ? null : exit,
      duration_s: Number.isNaN(duration) ? null : duration,
      reason: this.reasons[index],
      usage: this.usage.get(index) || null,
    };
  }
}

// One try of an instance: when it was staged, started running, ended, and how.
export class Attempt {
  constructor(task, index, attempt) {
    this.task = task;
    this.index = index;
    this.attempt = attempt;
    this.staged = null;
    this.started = null;
    this.ended = null;
    this.outcome = null; // SUCCEEDED, FAILED, CANCELLED, RETRIED (failed, tried again), INTERRUPTED
    this.reason = null;
    this.exitCode = null;
    this.duration = null;
  }

  get start() {
    return this.staged ?? this.started;
  }
}
