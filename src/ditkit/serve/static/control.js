// The Control tab's condition map: a layout of boxes drawn on a canvas, or an uploaded map.
//
// A layout is ditkit's label map (src/ditkit/core/control_maps.py): black, box k filled with the
// gray level BOX_LEVELS[k], box k holding the k-th object the prompt names. The map has the
// model's image size (one map pixel per image pixel); the canvas shows it enlarged, with each
// box's number, so the drawing is precise and the numbers never reach the map that is sent.

import { blobToDataUrl, loadImage } from "./images.js";

export const BOX_LEVELS = [255, 191, 127, 63];
const VIEW = 256; // the canvas's own pixels (it is shown at this size)
const MARK = "rgb(255, 0, 255)"; // the box being drawn and the keyboard cursor: a colour no map uses
const KEY_MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

/** The objects a prompt names, in order ("two blue squares and a red circle" -> blue square,
 * blue square, red circle): the words before each shape noun, as the shapes world's captions
 * write them. Empty when the prompt names none this way. */
export function promptObjects(prompt) {
  const counts = { a: 1, an: 1, one: 1, two: 2, three: 3, four: 4 };
  const pattern = /\b(a|an|one|two|three|four)\s+((?:[a-z]+\s+){0,2}?)(circle|square|triangle)s?\b/gi;
  const out = [];
  for (const m of prompt.matchAll(pattern)) {
    const words = m[2].trim().toLowerCase();
    for (let i = 0; i < counts[m[1].toLowerCase()]; i += 1) out.push(`${words ? `${words} ` : ""}${m[3].toLowerCase()}`);
  }
  return out;
}

export class ControlPad {
  /** onChange(pad): the boxes or the upload changed. */
  constructor(canvas, { onChange = () => {} } = {}) {
    this.canvas = canvas;
    canvas.width = canvas.height = VIEW;
    this.ctx = canvas.getContext("2d");
    this.onChange = onChange;
    this.size = 64; // the map's side: the model's image size
    this.boxes = []; // [x0, y0, x1, y1] in map pixels, end-exclusive, in the prompt's order
    this.upload = null; // {name, dataUrl, image}: an uploaded map replaces the drawing
    this.drawable = true; // the boxes kind: the pointer and the keyboard draw
    this.drag = null; // {a, b}: the corners of the box being dragged
    this.anchor = null; // the keyboard's first corner
    this.cursor = { x: 32, y: 32 };
    canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
    canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
    canvas.addEventListener("pointerup", (e) => this.pointerUp(e));
    canvas.addEventListener("pointercancel", () => { this.drag = null; this.render(); });
    canvas.addEventListener("keydown", (e) => this.keyDown(e));
    canvas.addEventListener("focus", () => this.render());
    canvas.addEventListener("blur", () => this.render());
    this.render();
  }

  get full() {
    return this.boxes.length >= BOX_LEVELS.length;
  }

  /** The model's image size: a new size starts a new layout (the boxes are in its pixels). */
  setSize(size) {
    if (size !== this.size) {
      this.size = size;
      this.boxes = [];
      this.cursor = { x: size / 2, y: size / 2 };
      this.anchor = null;
      this.onChange(this);
    }
    this.render();
  }

  setDrawable(drawable) {
    this.drawable = drawable;
    this.drag = this.anchor = null;
    this.render();
  }

  /** Undo the last box (or drop the upload). */
  undo() {
    if (this.upload) this.upload = null;
    else this.boxes.pop();
    this.anchor = null;
    this.changed();
  }

  clear() {
    this.upload = null;
    this.boxes = [];
    this.anchor = null;
    this.changed();
  }

  /** An uploaded map: sent as it is (PNG bytes kept; other formats re-encoded as PNG). */
  async useUpload(file) {
    if (!file) return;
    let dataUrl = await blobToDataUrl(file);
    let image = null;
    try {
      image = await loadImage(dataUrl);
      if (file.type !== "image/png") {
        const c = document.createElement("canvas");
        c.width = image.naturalWidth;
        c.height = image.naturalHeight;
        c.getContext("2d").drawImage(image, 0, 0);
        dataUrl = c.toDataURL("image/png");
      }
    } catch {
      // not an image: send it anyway and let the server say so next to the field
    }
    this.upload = { name: file.name, dataUrl, image };
    this.changed();
  }

  isEmpty() {
    return !this.upload && this.boxes.length === 0;
  }

  /** What the job gets: the upload, or the layout label map as a PNG of the model's size. */
  toDataUrl() {
    if (this.upload) return this.upload.dataUrl;
    const map = document.createElement("canvas");
    map.width = map.height = this.size;
    const ctx = map.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.size, this.size);
    this.boxes.forEach(([x0, y0, x1, y1], k) => { // later boxes over earlier ones, as draw_boxes does
      const v = BOX_LEVELS[k];
      ctx.fillStyle = `rgb(${v}, ${v}, ${v})`;
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0); // whole pixels: no anti-aliasing, exact levels
    });
    return map.toDataURL("image/png");
  }

  changed() {
    this.render();
    this.onChange(this);
  }

  // ---- drawing ----

  /** A pointer position as a map pixel corner (0..size). */
  toMap(event) {
    const rect = this.canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(this.size, Math.max(0, Math.round(v)));
    return {
      x: clamp(((event.clientX - rect.left) * this.size) / rect.width),
      y: clamp(((event.clientY - rect.top) * this.size) / rect.height),
    };
  }

  /** Two corners -> a box [x0, y0, x1, y1] of at least one pixel, or null. */
  static box(a, b) {
    const box = [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
    return box[2] > box[0] && box[3] > box[1] ? box : null;
  }

  addBox(box) {
    if (!box || this.full) return;
    this.upload = null; // drawing replaces an uploaded layout
    this.boxes.push(box);
    this.changed();
  }

  pointerDown(event) {
    if (event.button !== 0 || !this.drawable || this.full) return;
    this.canvas.setPointerCapture(event.pointerId);
    const p = this.toMap(event);
    this.drag = { a: p, b: p };
    this.render();
  }

  pointerMove(event) {
    if (!this.drag) return;
    this.drag.b = this.toMap(event);
    this.render();
  }

  pointerUp(event) {
    if (!this.drag) return;
    this.drag.b = this.toMap(event);
    const box = ControlPad.box(this.drag.a, this.drag.b);
    this.drag = null;
    if (box) this.addBox(box);
    else this.render();
  }

  /** Keyboard: the arrows move the cursor (Shift: 4 pixels), Space or Enter sets a corner (the
   * second one makes the box), Escape drops the first corner. */
  keyDown(event) {
    if (!this.drawable) return;
    const move = KEY_MOVES[event.key];
    if (move) {
      const step = event.shiftKey ? 4 : 1;
      this.cursor.x = Math.min(this.size, Math.max(0, this.cursor.x + move[0] * step));
      this.cursor.y = Math.min(this.size, Math.max(0, this.cursor.y + move[1] * step));
    } else if (event.key === " " || event.key === "Enter") {
      if (!this.anchor) {
        if (!this.full) this.anchor = { ...this.cursor };
      } else {
        const box = ControlPad.box(this.anchor, this.cursor);
        this.anchor = null;
        this.addBox(box);
      }
    } else if (event.key === "Escape" && this.anchor) {
      this.anchor = null;
    } else {
      return;
    }
    event.preventDefault();
    this.render();
  }

  // ---- what the canvas shows ----

  render() {
    const ctx = this.ctx;
    const s = VIEW / this.size; // view pixels per map pixel
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, VIEW, VIEW);
    if (this.upload) {
      if (this.upload.image) ctx.drawImage(this.upload.image, 0, 0, VIEW, VIEW);
      return;
    }
    if (!this.drawable) {
      ctx.fillStyle = "#aaa";
      ctx.font = "16px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("Upload a condition map", VIEW / 2, VIEW / 2);
      return;
    }
    this.boxes.forEach(([x0, y0, x1, y1], k) => {
      const v = BOX_LEVELS[k];
      ctx.fillStyle = `rgb(${v}, ${v}, ${v})`;
      ctx.fillRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
    });
    this.boxes.forEach(([x0, y0], k) => { // the numbers over every box, so an overlapped one still shows its own
      const x = x0 * s + 12;
      const y = y0 * s + 12;
      ctx.fillStyle = MARK;
      ctx.beginPath();
      ctx.arc(x, y, 10, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillStyle = "#fff";
      ctx.font = "bold 13px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(String(k + 1), x, y + 1);
    });
    const pending = this.drag ? [this.drag.a, this.drag.b] : this.anchor ? [this.anchor, this.cursor] : null;
    ctx.strokeStyle = MARK;
    ctx.lineWidth = 2;
    if (pending) {
      const [a, b] = pending;
      ctx.setLineDash([6, 4]);
      ctx.strokeRect(Math.min(a.x, b.x) * s, Math.min(a.y, b.y) * s, Math.abs(b.x - a.x) * s, Math.abs(b.y - a.y) * s);
      ctx.setLineDash([]);
    }
    if (document.activeElement === this.canvas) { // the keyboard cursor: a cross at a pixel corner
      const x = this.cursor.x * s;
      const y = this.cursor.y * s;
      ctx.beginPath();
      ctx.moveTo(x - 8, y);
      ctx.lineTo(x + 8, y);
      ctx.moveTo(x, y - 8);
      ctx.lineTo(x, y + 8);
      ctx.stroke();
    }
  }
}
