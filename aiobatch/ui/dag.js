// The job's DAG as SVG: one node per task (coloured by state, with running/terminated/total and a
// bar), edges from each dependency. dagre (vendor/) lays it out in a worker; until then the
// section says so. Names are SVG text nodes: never parsed.

import { cssState, setText } from "./lib.js";

const SVG = "http://www.w3.org/2000/svg";
const NODE_H = 44;
const CHAR_W = 7.2; // ~ 12px system sans
const MAX_LABEL = 30;
const MIN_SCALE = 0.6; // smaller than this and names are unreadable: scroll instead

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function label(name) {
  return name.length > MAX_LABEL ? `${name.slice(0, MAX_LABEL - 1)}…` : name;
}

function nodeWidth(name) {
  return Math.round(Math.min(240, Math.max(104, label(name).length * CHAR_W + 24)));
}

function runLayout(input) {
  return new Promise((resolve, reject) => {
    let worker;
    try {
      worker = new Worker("/ui/static/dag-worker.js", { type: "module" });
    } catch (error) {
      reject(error);
      return;
    }
    worker.onmessage = (message) => {
      worker.terminate();
      if (message.data.ok) resolve(message.data.layout);
      else reject(new Error(message.data.error));
    };
    worker.onerror = (event) => {
      worker.terminate();
      reject(new Error(event.message || "layout worker failed"));
    };
    worker.postMessage(input);
  });
}

async function layoutWithFallback(input) {
  try {
    return await runLayout(input);
  } catch (error) {
    console.warn("aiobatch: layout worker unavailable, laying out on the page", error);
    const { layout } = await import("./dag-worker.js");
    return layout(input);
  }
}

export class DagView {
  constructor(container, { onSelect, tooltip, describe }) {
    this.container = container;
    this.onSelect = onSelect;
    this.tooltip = tooltip;
    this.describe = describe;
    this.nodes = new Map(); // task name -> {g, counts, ok, bad, run, width}
    this.edgesFrom = new Map(); // task name -> [path]
    this.generation = 0;
    this.selected = null;
  }

  // (Re)builds the graph for these tasks and edges; the layout arrives asynchronously.
  async build(tasks, edges) {
    const generation = ++this.generation;
    const input = {
      nodes: tasks.map((t) => ({ id: t.name, width: nodeWidth(t.name), height: NODE_H })),
      edges,
    };
    const status = document.createElement("p");
    status.className = "muted";
    status.textContent = `Laying out ${tasks.length} task${tasks.length === 1 ? "" : "s"}…`;
    this.container.replaceChildren(status);
    let layout;
    try {
      layout = await layoutWithFallback(input);
    } catch (error) {
      status.textContent = `The DAG could not be laid out: ${error.message}`;
      return false;
    }
    if (generation !== this.generation) return false;
    this.draw(tasks, input, layout);
    return true;
  }

  draw(tasks, input, layout) {
    const root = svg("svg", {
      class: "dag",
      width: Math.ceil(layout.width),
      height: Math.ceil(layout.height),
      viewBox: `0 0 ${Math.ceil(layout.width)} ${Math.ceil(layout.height)}`,
      role: "img",
      "aria-label": "task graph",
    });
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
      orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
    defs.append(marker);
    root.append(defs);

    const edgeLayer = svg("g", { class: "edges" });
    this.edgesFrom = new Map();
    for (const edge of layout.edges) {
      const d = edge.points.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`);
      const path = svg("path", { d: d.join(" "), class: "edge", "marker-end": "url(#arrow)" });
      edgeLayer.append(path);
      if (!this.edgesFrom.has(edge.from)) this.edgesFrom.set(edge.from, []);
      this.edgesFrom.get(edge.from).push(path);
    }
    root.append(edgeLayer);

    const nodeLayer = svg("g", { class: "nodes" });
    this.nodes = new Map();
    const widths = new Map(input.nodes.map((n) => [n.id, n.width]));
    for (const task of tasks) {
      const pos = layout.nodes[task.name];
      if (!pos) continue;
      const width = widths.get(task.name);
      const g = svg("g", {
        class: "node",
        transform: `translate(${(pos.x - width / 2).toFixed(1)} ${(pos.y - NODE_H / 2).toFixed(1)})`,
        tabindex: 0,
        "data-task": task.name,
      });
      g.append(svg("title", {}, task.name));
      g.append(svg("rect", { class: "box", width, height: NODE_H, rx: 7 }));
      g.append(svg("text", { class: "name", x: 10, y: 17 }, label(task.name)));
      const counts = svg("text", { class: "counts", x: 10, y: 31 });
      g.append(counts);
      const barW = width - 20;
      g.append(svg("rect", { class: "nbar", x: 10, y: 36, width: barW, height: 3, rx: 1.5 }));
      const ok = svg("rect", { class: "nbar-ok", x: 10, y: 36, width: 0, height: 3 });
      const bad = svg("rect", { class: "nbar-bad", x: 10, y: 36, width: 0, height: 3 });
      const run = svg("rect", { class: "nbar-run", x: 10, y: 36, width: 0, height: 3 });
      g.append(ok, bad, run);
      g.addEventListener("click", () => this.onSelect(task.name));
      g.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") this.onSelect(task.name);
      });
      g.addEventListener("pointermove", (e) => this.tooltip.show(this.describe(task.name), e.clientX, e.clientY));
      g.addEventListener("pointerleave", () => this.tooltip.hide());
      nodeLayer.append(g);
      this.nodes.set(task.name, { g, counts, ok, bad, run, barW, state: null });
    }
    root.append(nodeLayer);
    this.container.replaceChildren(root);
    this.root = root;
    this.size = { width: Math.ceil(layout.width), height: Math.ceil(layout.height) };
    if (!this.observer) {
      this.width = this.container.clientWidth;
      this.observer = new ResizeObserver((entries) => {
        this.width = Math.floor(entries[entries.length - 1].contentRect.width);
        this.fit();
      });
      this.observer.observe(this.container);
    }
    this.fit();
    for (const task of tasks) this.update(task);
    if (this.selected) this.select(this.selected);
  }

  // Shrinks a graph wider than its box to fit (down to MIN_SCALE; past that it scrolls).
  fit() {
    if (!this.root) return;
    const available = this.width;
    if (!available) return;
    const scale = Math.min(1, Math.max(MIN_SCALE, (available - 2) / this.size.width));
    const width = String(Math.floor(this.size.width * scale));
    const height = String(Math.floor(this.size.height * scale));
    if (this.root.getAttribute("width") !== width) this.root.setAttribute("width", width);
    if (this.root.getAttribute("height") !== height) this.root.setAttribute("height", height);
  }

  // Redraws one task's node (and its outgoing edges): class, counts, bar.
  update(task) {
    const node = this.nodes.get(task.name);
    if (!node) return;
    const state = cssState(task.status);
    if (node.state !== state) {
      node.g.classList.remove(`state-${node.state}`);
      node.g.classList.add(`state-${state}`);
      node.state = state;
      for (const path of this.edgesFrom.get(task.name) || []) {
        path.classList.toggle("met", task.status === "SUCCEEDED");
      }
    }
    setText(node.counts, `${task.running}/${task.done}/${task.total}  ${task.status.toLowerCase()}`);
    const scale = task.total ? node.barW / task.total : 0;
    let x = 10;
    for (const [rect, n] of [[node.ok, task.succeeded], [node.bad, task.failed], [node.run, task.running]]) {
      const w = (n * scale).toFixed(1);
      rect.setAttribute("x", x.toFixed(1));
      rect.setAttribute("width", w);
      x += n * scale;
    }
  }

  select(name) {
    this.selected = name;
    for (const [taskName, node] of this.nodes) node.g.classList.toggle("selected", taskName === name);
  }
}
