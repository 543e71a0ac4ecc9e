// The inpainting mask: painted with a brush on a canvas laid over the input image.
//
// The canvas has the image's own size (one canvas pixel = one image pixel) and holds magenta strokes on
// transparency, shown half opaque over the image. toDataUrl() turns it into ditkit's mask
// convention: a PNG of the image's size, WHITE where the region is to be filled, black elsewhere.

const STROKE = "rgb(255, 0, 255)"; // a colour the shapes world does not use
const UNDO_LIMIT = 30;
const KEY_MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

export class MaskPainter {
  /** brush(): the brush diameter in image pixels; ring: the element that shows the keyboard cursor. */
  constructor(canvas, brush, ring) {
    this.canvas = canvas;
    this.ring = ring;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.brush = brush;
    this.undoStack = [];
    this.last = null; // the previous point of the stroke being drawn
    this.cursor = { x: canvas.width / 2, y: canvas.height / 2 }; // keyboard painting
    canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
    canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
    canvas.addEventListener("pointerup", () => (this.last = null));
    canvas.addEventListener("pointercancel", () => (this.last = null));
    canvas.addEventListener("keydown", (e) => this.keyDown(e));
    canvas.addEventListener("focus", () => this.showRing());
  }

  /** A new image: a new, empty mask of its size. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.undoStack = [];
    this.cursor = { x: width / 2, y: height / 2 };
    this.showRing();
  }

  clear() {
    this.remember();
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  undo() {
    const previous = this.undoStack.pop();
    if (previous) this.ctx.putImageData(previous, 0, 0);
  }

  isEmpty() {
    const { data } = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return false;
    return true;
  }

  /** White (fill) where anything was painted, black elsewhere; hard edges, as ditkit's masks. */
  toDataUrl() {
    const { width, height } = this.canvas;
    const painted = this.ctx.getImageData(0, 0, width, height);
    const out = new ImageData(width, height);
    for (let i = 0; i < painted.data.length; i += 4) {
      const value = painted.data[i + 3] > 0 ? 255 : 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = value;
      out.data[i + 3] = 255;
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    return canvas.toDataURL("image/png");
  }

  remember() {
    const { width, height } = this.canvas;
    this.undoStack.push(this.ctx.getImageData(0, 0, width, height));
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
  }

  /** A pointer position in image pixels (the canvas is scaled by CSS). */
  toImage(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * this.canvas.width) / rect.width,
      y: ((event.clientY - rect.top) * this.canvas.height) / rect.height,
    };
  }

  pointerDown(event) {
    if (event.button !== 0) return;
    this.canvas.setPointerCapture(event.pointerId);
    this.remember();
    this.last = this.toImage(event);
    this.paint(this.last, this.last);
  }

  pointerMove(event) {
    if (!this.last) return;
    const point = this.toImage(event);
    this.paint(this.last, point);
    this.last = point;
  }

  keyDown(event) {
    const move = KEY_MOVES[event.key];
    const step = Math.max(1, this.brush() / 2);
    if (move) {
      const from = { ...this.cursor };
      this.cursor.x = Math.min(this.canvas.width, Math.max(0, this.cursor.x + move[0] * step));
      this.cursor.y = Math.min(this.canvas.height, Math.max(0, this.cursor.y + move[1] * step));
      if (event.shiftKey) this.paint(from, this.cursor); // Shift+arrow paints as it moves
      this.showRing();
    } else if (event.key === " " || event.key === "Enter") {
      this.remember();
      this.paint(this.cursor, this.cursor);
    } else {
      return;
    }
    event.preventDefault();
  }

  /** Place the ring at the keyboard cursor, as large as the brush (in % of the shown canvas). */
  showRing() {
    const { width, height } = this.canvas;
    this.ring.style.left = `${(100 * this.cursor.x) / width}%`;
    this.ring.style.top = `${(100 * this.cursor.y) / height}%`;
    this.ring.style.width = `${(100 * this.brush()) / width}%`;
    this.ring.style.height = `${(100 * this.brush()) / height}%`;
  }

  /** A round-capped line from a to b (a dot when a is b). */
  paint(a, b) {
    const ctx = this.ctx;
    ctx.strokeStyle = STROKE;
    ctx.lineWidth = this.brush();
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }
}
