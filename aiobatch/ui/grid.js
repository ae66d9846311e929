// The instance grid: one small cell per instance, grouped by task, coloured by state, drawn
// on a canvas (virtualised: only the visible rows are painted). Hover names the instance,
// a click opens it.

import { VirtualCanvas } from "./canvas.js";
import { CODE_COLOURS, fitText, formatDuration } from "./lib.js";

const GUTTER = 170; // task names
const PITCH = 11; // cell + gap
const CELL = 9;
const PAD = 7; // between tasks
const MIN_BLOCK = 18;
const FONT = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";

export class GridView {
  constructor(box, { model, tooltip, onPick }) {
    this.model = model;
    this.tooltip = tooltip;
    this.onPick = onPick;
    this.blocks = [];
    this.byTask = new Map();
    this.perRow = 1;
    this.selected = null; // {task, index}
    this.selectedTask = null;
    this.view = new VirtualCanvas(box, {
      maxHeight: 440,
      draw: (ctx, top, width, height) => this.paint(ctx, top, width, height),
      onResize: () => this.layout(),
    });
    const canvas = this.view.canvas;
    canvas.className = "grid-canvas";
    canvas.addEventListener("pointermove", (e) => this.hover(e));
    canvas.addEventListener("pointerleave", () => this.tooltip.hide());
    canvas.addEventListener("click", (e) => {
      const hit = this.hit(e.offsetX, this.view.contentY(e));
      if (hit) this.onPick(hit.task, hit.index);
    });
  }

  // Recomputes where each task's block of cells goes (after the tasks or the width changed).
  layout() {
    const width = this.view.width || 800;
    this.perRow = Math.max(8, Math.floor((width - GUTTER - 8) / PITCH));
    this.blocks = [];
    this.byTask = new Map();
    let y = 4;
    for (const task of this.model.order) {
      const rows = Math.max(1, Math.ceil(task.total / this.perRow));
      const height = Math.max(MIN_BLOCK, rows * PITCH) + PAD;
      const block = { task, y, rows, height };
      this.blocks.push(block);
      this.byTask.set(task.name, block);
      y += height;
    }
    this.view.setContentHeight(y);
  }

  redraw() {
    this.view.draw();
  }

  // Repaints just these cells (Map task -> Set of indexes), if they are in view.
  redrawCells(cells) {
    const ctx = this.view.context();
    for (const [name, indexes] of cells) {
      const block = this.byTask.get(name);
      if (!block || !this.view.isVisible(block.y, block.height)) continue;
      for (const index of indexes) this.paintCell(ctx, block, index);
    }
  }

  paint(ctx, top, width, height) {
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const bottom = top + height;
    let i = this.firstBlock(top);
    for (; i < this.blocks.length && this.blocks[i].y < bottom; i++) {
      const block = this.blocks[i];
      const { task } = block;
      if (task.name === this.selectedTask) {
        ctx.fillStyle = "#eef2ff";
        ctx.fillRect(0, block.y - 3, width, block.height - 1);
      }
      ctx.fillStyle = "#1f2937";
      const label = `${task.name}`;
      ctx.fillText(fitText(ctx, label, GUTTER - 58), 6, block.y + CELL / 2 + 1);
      ctx.fillStyle = "#6b7280";
      const count = `${task.total}`;
      ctx.fillText(count, GUTTER - 12 - ctx.measureText(count).width, block.y + CELL / 2 + 1);
      const firstRow = Math.max(0, Math.floor((top - block.y) / PITCH));
      const lastRow = Math.min(block.rows - 1, Math.floor((bottom - block.y) / PITCH));
      const from = firstRow * this.perRow;
      const to = Math.min(task.total, (lastRow + 1) * this.perRow);
      for (let index = from; index < to; index++) this.paintCell(ctx, block, index, true);
    }
  }

  paintCell(ctx, block, index, fresh = false) {
    const { task } = block;
    if (index >= task.total) return;
    const col = index % this.perRow;
    const row = Math.floor(index / this.perRow);
    const x = GUTTER + col * PITCH;
    const y = block.y + row * PITCH;
    if (!fresh) {
      ctx.fillStyle = task.name === this.selectedTask ? "#eef2ff" : "#ffffff";
      ctx.fillRect(x - 1, y - 1, PITCH, PITCH);
    }
    ctx.fillStyle = CODE_COLOURS[task.states[index]];
    ctx.fillRect(x, y, CELL, CELL);
    const sel = this.selected;
    if (sel && sel.task === task.name && sel.index === index) {
      ctx.strokeStyle = "#111827";
      ctx.lineWidth = 2;
      ctx.strokeRect(x - 0.5, y - 0.5, CELL + 1, CELL + 1);
    }
  }

  firstBlock(top) {
    let lo = 0;
    let hi = this.blocks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.blocks[mid].y <= top) lo = mid;
      else hi = mid - 1;
    }
    return Math.max(0, lo);
  }

  hit(x, y) {
    if (!this.blocks.length || x < GUTTER) return null;
    const block = this.blocks[this.firstBlock(y)];
    if (!block || y < block.y) return null;
    const col = Math.floor((x - GUTTER) / PITCH);
    const row = Math.floor((y - block.y) / PITCH);
    if (col >= this.perRow || row >= block.rows) return null;
    const index = row * this.perRow + col;
    if (index >= block.task.total) return null;
    return { task: block.task.name, index };
  }

  hover(event) {
    const hit = this.hit(event.offsetX, this.view.contentY(event));
    if (!hit) {
      this.tooltip.hide();
      this.view.canvas.style.cursor = "default";
      return;
    }
    this.view.canvas.style.cursor = "pointer";
    const inst = this.model.tasks.get(hit.task).instance(hit.index);
    const lines = [`${hit.task} #${hit.index}  ${inst.status}`, `attempts: ${inst.attempts}`];
    if (inst.exit_code !== null) lines.push(`exit code: ${inst.exit_code}`);
    if (inst.duration_s !== null) lines.push(`duration: ${formatDuration(inst.duration_s)}`);
    if (inst.reason) lines.push(`reason: ${inst.reason}`);
    this.tooltip.show(lines.join("\n"), event.clientX, event.clientY);
  }

  select(task, index) {
    this.selected = task === null ? null : { task, index };
    this.view.request();
  }

  selectTask(name) {
    this.selectedTask = name;
    const block = this.byTask.get(name);
    if (block && !this.view.isVisible(block.y, Math.min(block.height, 40))) this.view.scrollTo(block.y - 4);
    this.view.request();
  }

  // Where a cell is in the page (for tests and for scrolling it into view).
  reveal(task, index) {
    const block = this.byTask.get(task);
    if (!block) return;
    const y = block.y + Math.floor(index / this.perRow) * PITCH;
    if (!this.view.isVisible(y, PITCH)) this.view.scrollTo(y - 40);
  }

  cellCentre(task, index) {
    const block = this.byTask.get(task);
    if (!block) return null;
    const x = GUTTER + (index % this.perRow) * PITCH + CELL / 2;
    const y = block.y + Math.floor(index / this.perRow) * PITCH + CELL / 2 - this.view.top;
    return { x, y };
  }
}
