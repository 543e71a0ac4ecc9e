// Input images: a slot (image, image B) holds one picture from a sample, the gallery or an upload.

/** Built-in sample scenes in the style of the shapes world (white ground, flat colours), drawn here
 * so the page needs no file and works offline. */
const SAMPLES = [
  {
    label: "Sample: a red circle and a blue square",
    draw(ctx) {
      ctx.fillStyle = "rgb(220, 38, 38)";
      ctx.beginPath();
      ctx.arc(18, 32, 11, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillStyle = "rgb(40, 90, 230)";
      ctx.fillRect(36, 22, 20, 20);
    },
  },
  {
    label: "Sample: a green triangle",
    draw(ctx) {
      ctx.fillStyle = "rgb(40, 170, 70)";
      ctx.beginPath();
      ctx.moveTo(32, 12);
      ctx.lineTo(52, 50);
      ctx.lineTo(12, 50);
      ctx.closePath();
      ctx.fill();
    },
  },
];
const SAMPLE_SIZE = 64;

function sampleDataUrl(sample) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SAMPLE_SIZE;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, SAMPLE_SIZE, SAMPLE_SIZE);
  sample.draw(ctx);
  return canvas.toDataURL("image/png");
}

export function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

export async function loadImage(src) {
  const image = new Image();
  image.src = src;
  await image.decode();
  return image;
}

/**
 * One image input: a <select> of sources (samples, then gallery images; data-default names the
 * first choice, else the first sample), an upload button and a
 * canvas that shows the picture at its own size. dataUrl is what the job gets: the original PNG
 * bytes of an upload or gallery image (so kept pixels stay exact), other formats re-encoded as PNG.
 * optional: the slot also offers "None" (value "none": dataUrl null, the canvas hidden), as the
 * video tab's first frame does.
 */
export class ImageSlot {
  constructor(root, { onChange = () => {}, optional = false } = {}) {
    this.select = root.querySelector(".slot-source");
    this.file = root.querySelector(".slot-file");
    this.canvas = root.querySelector(".slot-canvas");
    this.stack = this.canvas.closest(".canvas-stack");
    this.optional = optional;
    this.onChange = onChange;
    this.dataUrl = null;
    this.galleryItems = [];
    this.uploadName = null;
    this.uploadDataUrl = null;
    this.select.addEventListener("change", () => this.useSource(this.select.value));
    this.file.addEventListener("change", () => this.useUpload(this.file.files[0]));
    this.renderOptions();
  }

  /** The gallery changed: offer its images (newest first) after the samples. */
  setGallery(items) {
    this.galleryItems = items;
    this.renderOptions();
  }

  renderOptions() {
    const current = this.select.value;
    this.select.replaceChildren();
    if (this.optional) this.select.add(new Option("None: start from the prompt alone", "none"));
    if (this.uploadName) this.select.add(new Option(`Upload: ${this.uploadName}`, "upload"));
    SAMPLES.forEach((sample, i) => this.select.add(new Option(sample.label, `sample:${i}`)));
    for (const item of this.galleryItems) {
      this.select.add(new Option(`Gallery: ${item.label}`, `gallery:${item.url}`));
    }
    const values = [...this.select.options].map((o) => o.value);
    const fallback = values.includes(this.select.dataset.default) ? this.select.dataset.default : values[0];
    this.select.value = values.includes(current) ? current : fallback;
  }

  async useSource(value) {
    if (value === "none") {
      this.dataUrl = null;
      this.stack.hidden = true;
      this.onChange(this);
    } else if (value === "upload") {
      await this.show(this.uploadDataUrl);
    } else if (value.startsWith("sample:")) {
      await this.show(sampleDataUrl(SAMPLES[Number(value.slice(7))]));
    } else if (value.startsWith("gallery:")) {
      const response = await fetch(value.slice(8));
      await this.show(await blobToDataUrl(await response.blob()));
    }
  }

  /** Select a gallery image by its URL (the gallery's "Use as input"). */
  async useGallery(url) {
    this.select.value = `gallery:${url}`;
    await this.useSource(this.select.value);
  }

  async useUpload(file) {
    if (!file) return;
    let dataUrl = await blobToDataUrl(file);
    if (file.type !== "image/png") {
      // The job API takes PNG; the browser decodes the other formats, the canvas re-encodes them.
      dataUrl = await loadImage(dataUrl)
        .then((image) => this.drawToCanvas(image).toDataURL("image/png"))
        .catch(() => dataUrl); // not an image: let the server say so next to the field
    }
    this.uploadName = file.name;
    this.uploadDataUrl = dataUrl;
    this.renderOptions();
    this.select.value = "upload";
    await this.show(dataUrl);
  }

  async show(dataUrl) {
    this.dataUrl = dataUrl;
    this.stack.hidden = false;
    try {
      this.drawToCanvas(await loadImage(dataUrl));
    } catch {
      this.canvas.getContext("2d").clearRect(0, 0, this.canvas.width, this.canvas.height);
    }
    this.onChange(this);
  }

  drawToCanvas(image) {
    this.canvas.width = image.naturalWidth;
    this.canvas.height = image.naturalHeight;
    this.canvas.getContext("2d").drawImage(image, 0, 0);
    return this.canvas;
  }

  /** Show the first source (a sample, or None for an optional slot) when nothing is chosen yet. */
  async ensureImage() {
    if (!this.dataUrl && this.select.value !== "none") await this.useSource(this.select.value);
  }
}
