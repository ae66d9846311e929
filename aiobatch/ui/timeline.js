// The timeline: every attempt of every task as a bar from its start to its end (or now),
// coloured by outcome; a task's attempts are packed into lanes (as many as ran at once).
// Canvas, virtualised like the grid; hover names the attempt, a click opens the instance.

import { VirtualCanvas } from "./canvas.js";
import { STATE_COLOURS, fitText, formatClock, formatDuration, now } from "./lib.js";

const GUTTER = 170;
const AXIS = 22;
const BAND_MIN = 16;
const BAND_MAX = 60;
const LANE = 7;
const FONT = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";
const OUTCOME_COLOURS = {
  SUCCEEDED: STATE_COLOURS.SUCCEEDED,
  FAILED: STATE_COLOURS.FAILED,
  RETRIED: "#f87171",
  CANCELLED: STATE_COLOURS.CANCELLED,
  INTERRUPTED: "#9ca3af",
};

function niceStep(span, pixels) {
  const target = (span * 90) / Math.max(1, pixels); // a label every ~90 px
  const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
    10800, 21600, 43200, 86400];
  return steps.find((s) => s >= target) || 86400 * Math.ceil(target / 86400);
}

export class TimelineView {
  constructor(box, { model, tooltip, onPick }) {
    this.model = model;
    this.tooltip = tooltip;
    this.onPick = onPick;
    this.bands = [];
    this.t0 = 0;
    this.t1 = 1;
    this.view = new VirtualCanvas(box, {
      maxHeight: 360,
      draw: (ctx, top, width, height) => this.paint(ctx, top, width, height),
      onResize: () => this.render(),
    });
    const canvas = this.view.canvas;
    canvas.className = "timeline-canvas";
    canvas.addEventListener("pointermove", (e) => this.hover(e));
    canvas.addEventListener("pointerleave", () => this.tooltip.hide());
    canvas.addEventListener("click", (e) => {
      const seg = this.hit(e.offsetX, this.view.contentY(e));
      if (seg) this.onPick(seg.task, seg.index);
    });
  }

  get empty() {
    return this.bands.every((b) => b.lanes.length === 0);
  }

  // Packs every task's attempts into lanes and repaints.
  render() {
    const job = this.model.job;
    const t = now();
    let first = Infinity;
    let last = -Infinity;
    this.bands = [];
    let y = AXIS;
    for (const task of this.model.order) {
      const segs = task.segments.filter((s) => s.start !== null);
      segs.sort((a, b) => a.start - b.start);
      const lanes = [];
      const free = new LaneHeap(); // lanes by the end of their last bar
      for (const seg of segs) {
        const end = seg.ended ?? t;
        first = Math.min(first, seg.start);
        last = Math.max(last, end);
        let lane;
        if (free.size && free.peekEnd() <= seg.start) lane = free.pop();
        else {
          lane = lanes.length;
          lanes.push([]);
        }
        lanes[lane].push(seg);
        free.push(end, lane);
      }
      const laneH = lanes.length ? Math.max(1, Math.min(LANE, (BAND_MAX - 4) / lanes.length)) : LANE;
      const height = Math.max(BAND_MIN, Math.ceil(lanes.length * laneH) + 6);
      this.bands.push({ task, y, height, lanes, laneH });
      y += height;
    }
    this.t0 = Number.isFinite(first) ? Math.min(first, job.started_at || first) : job.started_at || t;
    const end = job.ended_at && JOB_ENDED.has(job.status) ? Math.max(job.ended_at, last) : Math.max(t, last);
    this.t1 = Math.max(end, this.t0 + 1);
    this.view.setContentHeight(y + 4);
    this.view.draw();
  }

  x(ts, width) {
    return GUTTER + ((ts - this.t0) / (this.t1 - this.t0)) * (width - GUTTER - 12);
  }

  tsAt(x, width) {
    return this.t0 + ((x - GUTTER) / (width - GUTTER - 12)) * (this.t1 - this.t0);
  }

  paint(ctx, top, width, height) {
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const bottom = top + height;
    const t = now();
    // grid lines
    const step = niceStep(this.t1 - this.t0, width - GUTTER);
    ctx.strokeStyle = "#eef0f3";
    ctx.lineWidth = 1;
    for (let s = 0; this.t0 + s <= this.t1 + 1e-9; s += step) {
      const x = Math.round(this.x(this.t0 + s, width)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, top + AXIS);
      ctx.lineTo(x, bottom);
      ctx.stroke();
    }
    for (const band of this.bands) {
      if (band.y + band.height < top || band.y > bottom) continue;
      ctx.fillStyle = "#1f2937";
      ctx.fillText(fitText(ctx, band.task.name, GUTTER - 16), 6, band.y + Math.min(band.height, 18) / 2 + 1);
      ctx.strokeStyle = "#f1f3f5";
      ctx.beginPath();
      ctx.moveTo(0, band.y + band.height - 0.5);
      ctx.lineTo(width, band.y + band.height - 0.5);
      ctx.stroke();
      band.lanes.forEach((lane, k) => {
        const y = band.y + 3 + k * band.laneH;
        const h = Math.max(1, band.laneH - (band.laneH > 3 ? 1.5 : 0));
        for (const seg of lane) {
          const x0 = this.x(seg.start, width);
          const x1 = Math.max(x0 + 1.5, this.x(seg.ended ?? t, width));
          if (seg.started !== null && seg.staged !== null && seg.started > seg.staged) {
            const xs = this.x(seg.started, width);
            ctx.fillStyle = STATE_COLOURS.STAGING;
            ctx.fillRect(x0, y, Math.max(0, xs - x0), h);
            ctx.fillStyle = seg.outcome ? OUTCOME_COLOURS[seg.outcome] || "#9ca3af" : STATE_COLOURS.RUNNING;
            ctx.fillRect(xs, y, Math.max(1, x1 - xs), h);
          } else {
            ctx.fillStyle = seg.outcome ? OUTCOME_COLOURS[seg.outcome] || "#9ca3af" : STATE_COLOURS.RUNNING;
            ctx.fillRect(x0, y, x1 - x0, h);
          }
        }
      });
    }
    // the axis stays at the top of the view
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, top, width, AXIS);
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "#d0d5dd";
    ctx.beginPath();
    ctx.moveTo(0, top + AXIS - 0.5);
    ctx.lineTo(width, top + AXIS - 0.5);
    ctx.stroke();
    ctx.fillText(`from ${formatClock(this.t0).slice(0, 8)}`, 6, top + AXIS / 2);
    for (let s = step; this.t0 + s <= this.t1 + 1e-9; s += step) {
      const x = this.x(this.t0 + s, width);
      const text = `+${formatDuration(s)}`;
      const w = ctx.measureText(text).width;
      if (x + w / 2 < width) ctx.fillText(text, x - w / 2, top + AXIS / 2);
    }
  }

  hit(x, y) {
    const width = this.view.width;
    const band = this.bands.find((b) => y >= b.y && y < b.y + b.height);
    if (!band || x < GUTTER) return null;
    const lane = band.lanes[Math.floor((y - band.y - 3) / band.laneH)];
    if (!lane) return null;
    const ts = this.tsAt(x, width);
    const slack = (3 * (this.t1 - this.t0)) / (width - GUTTER); // 3 px either side
    const t = now();
    let best = null;
    for (const seg of lane) {
      if (seg.start - slack <= ts && ts <= (seg.ended ?? t) + slack) best = seg;
    }
    return best;
  }

  hover(event) {
    const seg = this.hit(event.offsetX, this.view.contentY(event));
    if (!seg) {
      this.tooltip.hide();
      this.view.canvas.style.cursor = "default";
      return;
    }
    this.view.canvas.style.cursor = "pointer";
    const end = seg.ended ?? now();
    const lines = [
      `${seg.task} #${seg.index}  attempt ${seg.attempt}`,
      `${formatClock(seg.start)} → ${seg.ended ? formatClock(seg.ended) : "running"}  (${formatDuration(end - seg.start)})`,
      `outcome: ${seg.outcome || "running"}`,
    ];
    if (seg.exitCode !== null) lines.push(`exit code: ${seg.exitCode}`);
    if (seg.reason) lines.push(`reason: ${seg.reason}`);
    this.tooltip.show(lines.join("\n"), event.clientX, event.clientY);
  }
}

const JOB_ENDED = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

// A binary min-heap of (end, lane): the lane that frees up first, in O(log n).
class LaneHeap {
  constructor() {
    this.ends = [];
    this.lanes = [];
  }

  get size() {
    return this.ends.length;
  }

  peekEnd() {
    return this.ends[0];
  }

  push(end, lane) {
    const { ends, lanes } = this;
    let i = ends.length;
    ends.push(end);
    lanes.push(lane);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (ends[parent] <= ends[i]) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop() {
    const { ends, lanes } = this;
    const top = lanes[0];
    const lastEnd = ends.pop();
    const lastLane = lanes.pop();
    if (ends.length) {
      ends[0] = lastEnd;
      lanes[0] = lastLane;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < ends.length && ends[l] < ends[m]) m = l;
        if (r < ends.length && ends[r] < ends[m]) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }

  swap(a, b) {
    [this.ends[a], this.ends[b]] = [this.ends[b], this.ends[a]];
    [this.lanes[a], this.lanes[b]] = [this.lanes[b], this.lanes[a]];
  }
}
