// A tall drawing in a short scroll box: the canvas is only as big as what is visible, and
// is redrawn for the scrolled-to part (so 10,000 instances or 500 timeline bands cost one
// viewport of pixels, never a 20,000-pixel canvas).
//
// Drawing never reads the page's layout: the scroll position comes from scroll events and
// the width from a ResizeObserver, so a frame that has just changed text elsewhere on the
// page does not force the browser to lay it out again in the middle of the frame.

import { fitCanvas } from "./lib.js";

export class VirtualCanvas {
  // box: a .vscroll element; draw(ctx, top, width, height) paints content y in [top, top+height).
  constructor(box, { maxHeight, draw, onResize }) {
    this.box = box;
    this.maxHeight = maxHeight;
    this.drawContent = draw;
    this.onResize = onResize;
    this.canvas = document.createElement("canvas");
    this.spacer = document.createElement("div");
    this.spacer.className = "vspacer";
    box.replaceChildren(this.canvas, this.spacer);
    this.contentHeight = 0;
    this.viewHeight = 0;
    this.scrollTop = 0;
    this.width = box.clientWidth; // once, while the page is still empty
    this.pending = false;
    box.addEventListener("scroll", () => {
      this.scrollTop = box.scrollTop;
      this.request();
    }, { passive: true });
    new ResizeObserver((entries) => {
      const width = Math.floor(entries[entries.length - 1].contentRect.width);
      if (width > 0 && width !== this.width) {
        this.width = width;
        if (this.onResize) this.onResize(width);
        this.request();
      }
    }).observe(box);
  }

  setContentHeight(height) {
    this.contentHeight = Math.max(0, Math.ceil(height));
    this.viewHeight = Math.min(this.contentHeight, this.maxHeight);
    const maxTop = Math.max(0, this.contentHeight - this.viewHeight);
    if (this.scrollTop > maxTop) this.scrollTop = maxTop;
    const spacer = `${maxTop}px`;
    if (this.spacer.style.height !== spacer) this.spacer.style.height = spacer;
  }

  get top() {
    return this.scrollTop;
  }

  // Content y of a pointer event on the canvas.
  contentY(event) {
    return event.offsetY + this.scrollTop;
  }

  isVisible(y, height) {
    return y + height > this.scrollTop && y < this.scrollTop + this.viewHeight;
  }

  scrollTo(y) {
    const maxTop = Math.max(0, this.contentHeight - this.viewHeight);
    this.scrollTop = Math.min(maxTop, Math.max(0, y));
    this.box.scrollTop = this.scrollTop;
    this.request();
  }

  request() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  // Repaints the visible part now.
  draw() {
    const ctx = fitCanvas(this.canvas, this.width, Math.max(1, this.viewHeight));
    const top = this.scrollTop;
    ctx.clearRect(0, 0, this.width, this.viewHeight);
    ctx.save();
    ctx.translate(0, -top);
    this.drawContent(ctx, top, this.width, this.viewHeight);
    ctx.restore();
  }

  // The context translated for content coordinates, without clearing (for small updates).
  context() {
    const ratio = window.devicePixelRatio || 1;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, -this.scrollTop * ratio);
    return ctx;
  }
}
