// The ditkit web page: one form whose fields follow the chosen task, a job panel fed by the event
// stream, and a gallery. Every value is checked by the server (one set of limits); its error
// names the field ("param"), and the message is shown next to that field.

import { ApiError, cancelJob, listModels, submitJob, watchJob } from "./api.js";
import { BOX_LEVELS, ControlPad, promptObjects } from "./control.js";
import { Gallery } from "./gallery.js";
import { ImageSlot } from "./images.js";
import { MaskPainter } from "./mask.js";

const $ = (id) => document.getElementById(id);
const form = $("job-form");
const tabs = [...document.querySelectorAll('[role="tab"]')];

const SUBMIT_LABELS = {
  generate: "Generate", inpaint: "Inpaint", outpaint: "Outpaint", vary: "Make variations",
  edit: "Edit", fuse: "Fuse", upscale: "Upscale", video: "Make video", control: "Generate",
};
// The model list names models that serve a task; with none, this example of what to load.
const EXAMPLE_MODELS = { video: "shapes-video", control: "shapes-64" };
// What each condition kind's map is, for the Control tab's help.
const CONTROL_HELP = {
  boxes: "Drag on the map to draw a box (at most 4; with the keyboard: arrows move, Space sets each corner). "
    + "Box 1 holds the first object the prompt names, box 2 the second, and so on; each is filled with its "
    + "gray level on black (ditkit's layout map). Or upload a layout map.",
  edges: "Upload an edge map: white edges on black (make one from any image with "
    + "`ditkit control-map edges photo.png -o edges.png`).",
  seg: "Upload a silhouette map: the objects white on black (`ditkit control-map seg photo.png -o seg.png`).",
};
const ORDINALS = ["first", "second", "third", "fourth"];
// The prompt the page starts with, and the video tab's (swapped only while it is still untouched).
const PROMPTS = { image: "a red circle to the left of a blue square", video: "a red circle moving to the right" };
// Used only when /v1/models does not list a model's samplers.
const FALLBACK_SAMPLERS = ["euler", "heun", "dpm2m"];

const state = { tab: "generate", models: [], job: null };

const painter = new MaskPainter($("mask-canvas"), () => Number($("brush").value), $("mask-cursor"));
const imageSlot = new ImageSlot(form.querySelector('[data-slot="image"]'), {
  onChange: (slot) => painter.reset(slot.canvas.width, slot.canvas.height),
});
const imageSlotB = new ImageSlot(form.querySelector('[data-slot="image_b"]'));
const firstFrameSlot = new ImageSlot(form.querySelector('[data-slot="first_frame"]'), { optional: true });
const controlPad = new ControlPad($("control-canvas"), { onChange: () => renderBoxList() });
const gallery = new Gallery($("gallery"), $("gallery-empty"), {
  onReuseSeed(seed) {
    $("seed").value = seed;
    $("seed").focus();
  },
  async onUseAsInput(url) {
    if (currentTask() === "video") { // the image becomes the video's first frame
      await firstFrameSlot.useGallery(url);
      $("first_frame-source").focus();
      return;
    }
    await imageSlot.useGallery(url); // first, so the tab does not load a sample over it
    if (currentTask() === "generate" || currentTask() === "control") selectTab("inpaint");
    $("image-source").focus();
  },
  onChange(items) {
    const stills = items.filter((item) => !item.video); // an input is an image, not a video's GIF
    imageSlot.setGallery(stills);
    imageSlotB.setGallery(stills);
    firstFrameSlot.setGallery(stills);
  },
});

/** The form's task: the tab's, except the variations tab's "prompt edit" kind ("control": the
 * Control tab, which sends task generate with a control). */
function currentTask() {
  const mode = form.querySelector('input[name="mode"]:checked').value;
  return state.tab === "vary" ? mode : state.tab;
}

/** The task the job API gets for a form task. */
function apiTask(task) {
  return task === "control" ? "generate" : task;
}

// ---- tabs and the fields each task shows ----

function selectTab(tab, { focus = false } = {}) {
  state.tab = tab;
  for (const button of tabs) {
    const selected = button.dataset.tab === tab;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    if (selected && focus) button.focus();
  }
  form.setAttribute("aria-labelledby", `tab-${tab}`);
  const prompt = $("prompt");
  if (tab === "video" && prompt.value === PROMPTS.image) prompt.value = PROMPTS.video;
  if (tab !== "video" && prompt.value === PROMPTS.video) prompt.value = PROMPTS.image;
  updateForm();
}

function updateForm() {
  const task = currentTask();
  for (const el of form.querySelectorAll("[data-tasks]")) {
    el.hidden = !el.dataset.tasks.split(" ").includes(task);
  }
  const imageLabel = form.querySelector('label[for="image-source"]');
  imageLabel.textContent = task === "fuse" ? "Image A" : "Image";
  $("submit").textContent = SUBMIT_LABELS[task];
  clearErrors();
  renderModels();
  if (!$("image-source").closest(".field").hidden) imageSlot.ensureImage();
  if (task === "fuse") imageSlotB.ensureImage();
  if (task === "video") firstFrameSlot.ensureImage();
  if (task === "control") renderControl();
}

function onTabKey(event) {
  const i = tabs.indexOf(event.target);
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  selectTab(tabs[(next + tabs.length) % tabs.length].dataset.tab, { focus: true });
}

// ---- models and their default settings ----

function renderModels() {
  const task = currentTask();
  const select = $("model");
  const previous = select.value;
  const serving = state.models.filter((m) => (m.tasks || []).includes(apiTask(task)));
  select.replaceChildren(...serving.map((m) => new Option(m.id, m.id)));
  if (serving.some((m) => m.id === previous)) select.value = previous;
  if (state.models.length && !serving.length) {
    showFormError(`No loaded model does "${task}". Start the server with a model that does, e.g. `
      + `ditkit serve --models ${EXAMPLE_MODELS[task] || "shapes-64,shapes-64-inpaint,shapes-upscale"}.`);
  }
  $("submit").disabled = !serving.length || state.job !== null;
  if (select.value !== previous) applyDefaults();
}

/** Fill steps, guidance, sampler, size (and a video model's frames) with the chosen model's defaults. */
function applyDefaults() {
  const model = state.models.find((m) => m.id === $("model").value);
  if (!model) return;
  const defaults = model.defaults || {};
  if (defaults.steps !== undefined) $("steps").value = defaults.steps;
  if (defaults.frames !== undefined) $("frames").value = defaults.frames;
  if (defaults.guidance !== undefined) $("guidance").value = defaults.guidance;
  const samplers = model.samplers || FALLBACK_SAMPLERS;
  $("sampler").replaceChildren(...samplers.map((s) => new Option(s, s)));
  if (defaults.sampler) $("sampler").value = defaults.sampler;
  if (defaults.size !== undefined) {
    const size = typeof defaults.size === "number" ? `${defaults.size}x${defaults.size}` : String(defaults.size);
    $("size").placeholder = size;
    $("size").value = size;
    controlPad.setSize(parseInt(size, 10)); // the condition map has the image's size
  }
  renderControl();
}

// ---- the Control tab ----

function controlKind() {
  return form.querySelector('input[name="control-kind"]:checked').value;
}

/** The control models of the chosen model that read the chosen kind's maps (/v1/models' controls). */
function renderControl() {
  const kind = controlKind();
  const model = state.models.find((m) => m.id === $("model").value);
  const controls = ((model && model.controls) || []).filter((c) => c.condition === kind);
  const select = $("control-model");
  select.replaceChildren(...controls.map((c) => {
    const option = new Option(c.kind ? `${c.id} (kind ${c.kind})` : c.id, c.id);
    option.dataset.kind = c.kind || "";
    return option;
  }));
  if (!controls.length) select.add(new Option(`none: kind ${kind} needs ${model ? model.id : "<model>"}-control-${kind}`, ""));
  $("control-model-help").textContent = controls.length
    ? "Control models of this model that read this kind of map."
    : `This server has no ${kind} control model for ${model ? model.id : "this model"}: ditkit ships `
      + "shapes-64-control-edges and shapes-64-control-boxes for shapes-64.";
  $("control-help").textContent = CONTROL_HELP[kind];
  controlPad.setDrawable(kind === "boxes");
  $("control-undo").hidden = kind !== "boxes";
  renderBoxList();
}

/** The boxes in order, each with its gray level and the object of the prompt it stands for. */
function renderBoxList() {
  const list = $("box-list");
  const boxes = controlKind() === "boxes" && !controlPad.upload ? controlPad.boxes : [];
  const objects = promptObjects($("prompt").value);
  list.replaceChildren(...boxes.map((box, k) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${BOX_LEVELS[k]}, ${BOX_LEVELS[k]}, ${BOX_LEVELS[k]})`;
    const named = objects[k] ? `: ${objects[k]}` : "";
    const [x0, y0, x1, y1] = box;
    li.append(swatch, `Box ${k + 1} (gray ${BOX_LEVELS[k]}, ${x1 - x0}×${y1 - y0} px at ${x0},${y0}), `
      + `the ${ORDINALS[k]} object the prompt names${named}`);
    return li;
  }));
  list.hidden = boxes.length === 0;
}

/** The job's control: kind when the chosen control model is the kind's embedded one, else its name. */
function controlItem() {
  const option = $("control-model").selectedOptions[0];
  const item = option && option.value && !option.dataset.kind ? { model: option.value } : { kind: controlKind() };
  return { ...item, image: controlPad.toDataUrl(), scale: Number($("control-scale").value) };
}

// ---- the request ----

/** The field of this param that the current task shows (the image has one per kind of slot), or null. */
function shownField(param) {
  return [...form.querySelectorAll(`.field[data-param~="${CSS.escape(param)}"]`)].find((f) => !f.hidden) || null;
}

function shown(param) {
  return shownField(param) !== null;
}

/** A number field's value: undefined when empty (the server's default), the number, or a string
 * when it is no finite number, which the server refuses with a message for that field. */
function numberValue(id) {
  const input = $(id);
  if (input.validity.badInput) return "not a number"; // the browser keeps no text for it
  if (input.value === "") return undefined;
  const value = Number(input.value);
  return Number.isFinite(value) ? value : input.value;
}

function buildRequest() {
  const task = currentTask();
  const body = { task: apiTask(task), model: $("model").value, prompt: $("prompt").value };
  // An empty seed is left out: the server draws one and returns it in the job's seeds.
  for (const param of ["n", "steps", "guidance", "seed", "frames"]) {
    if (shown(param)) body[param] = numberValue(param);
  }
  if (shown("size") && $("size").value.trim()) body.size = $("size").value.trim();
  if (shown("sampler")) body.sampler = $("sampler").value;
  if (shown("method")) body.method = $("method").value;
  if (shown("strength")) body.strength = Number($("strength").value);
  if (shown("alpha")) body.alpha = Number($("alpha").value);
  if (shown("source_prompt")) body.source_prompt = $("source_prompt").value;
  if (shown("image")) body.image = (task === "video" ? firstFrameSlot : imageSlot).dataUrl ?? undefined;
  if (shown("image_b")) body.image_b = imageSlotB.dataUrl;
  if (shown("mask")) body.mask = painter.toDataUrl();
  if (shown("left")) {
    const amount = numberValue("amount") ?? 0;
    for (const box of form.querySelectorAll('input[name="side"]')) body[box.value] = box.checked ? amount : 0;
  }
  if (task === "control") body.control = [controlItem()];
  for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
  return body;
}

// ---- errors next to their fields ----

function clearErrors() {
  for (const el of form.querySelectorAll(".error, .form-error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showFormError(message) {
  $("form-error").textContent = message;
  $("form-error").hidden = false;
}

/** Show the message next to the field the server named, or above the form when it named none. */
function showError(param, message) {
  const field = param ? shownField(param) : null;
  if (!field) {
    showFormError(param ? `${param}: ${message}` : message);
    return;
  }
  const error = field.querySelector(".error");
  error.textContent = message;
  error.hidden = false;
  const input = field.querySelector("input:not([type=hidden]), select, textarea, canvas[tabindex]");
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-errormessage", error.id);
    input.focus();
  }
}

// ---- the job ----

async function onSubmit(event) {
  event.preventDefault();
  if (state.job) return;
  clearErrors();
  if (currentTask() === "control" && controlPad.isEmpty()) { // nothing drawn or uploaded: no map to send
    showError("control.0.image", controlKind() === "boxes" ? "Draw at least one box on the map, or upload a map."
      : "Upload a condition map first.");
    return;
  }
  const body = buildRequest();
  $("submit").disabled = true;
  try {
    const job = await submitJob(body);
    startJob(job, { task: currentTask(), prompt: body.prompt });
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    showError(err.param, err.message);
    $("submit").disabled = false;
  }
}

function setStatus(text) {
  $("job-status").textContent = text;
}

function startJob(job, meta) {
  state.job = job;
  $("job").hidden = false;
  $("progress").value = 0;
  $("preview").hidden = true;
  $("preview").alt = meta.task === "video" ? "Live preview of the video being sampled: its frames, row by row"
    : "Live preview of the image being sampled";
  $("cancel").disabled = false;
  setStatus(job.queue_position ? `Queued, position ${job.queue_position}` : "Queued");
  watchJob(job.id, {
    queued: ({ position }) => setStatus(position ? `Queued, position ${position}` : "Queued"),
    progress(update) {
      if (typeof update.progress === "number") $("progress").value = update.progress;
      // step of steps: the sampler step of the current batch (generate) or image (editing tasks);
      // the bar's progress covers the whole job
      if (update.steps) setStatus(`Running: step ${update.step} of ${update.steps}`);
      if (update.preview) {
        const preview = update.preview;
        $("preview").src = preview.startsWith("data:") ? preview : `data:image/png;base64,${preview}`;
        $("preview").hidden = false;
      }
    },
    completed(finished) {
      $("progress").value = 1;
      const count = finished.result.length;
      const noun = meta.task === "video" ? "video" : "image";
      setStatus(`Done: ${count} ${noun}${count === 1 ? "" : "s"} added to the gallery`);
      gallery.add(finished, meta);
      endJob();
    },
    failed(message) {
      setStatus(`Failed: ${message}`);
      showFormError(message);
      endJob();
    },
    cancelled() {
      setStatus("Cancelled");
      endJob();
    },
  });
}

function endJob() {
  state.job = null;
  $("cancel").disabled = true;
  renderModels(); // re-enables the submit button when a model serves the task
}

async function onCancel() {
  if (!state.job) return;
  $("cancel").disabled = true;
  setStatus("Cancelling…");
  try {
    await cancelJob(state.job.id);
  } catch (err) {
    setStatus(`Could not cancel: ${err.message}`);
  }
}

// ---- wiring ----

function bindOutput(inputId, outputId, format) {
  const update = () => ($(outputId).textContent = format(Number($(inputId).value)));
  $(inputId).addEventListener("input", update);
  update();
}

async function init() {
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab.dataset.tab));
    tab.addEventListener("keydown", onTabKey);
  }
  for (const radio of form.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      $("strength").value = currentTask() === "edit" ? 1 : 0.6; // each kind's usual strength
      $("strength").dispatchEvent(new Event("input"));
      updateForm();
    });
  }
  $("model").addEventListener("change", applyDefaults);
  bindOutput("alpha", "alpha-value", (v) => v.toFixed(2));
  bindOutput("strength", "strength-value", (v) => v.toFixed(2));
  bindOutput("brush", "brush-value", (v) => `${v} px`);
  $("brush").addEventListener("input", () => painter.showRing());
  $("mask-undo").addEventListener("click", () => painter.undo());
  $("mask-clear").addEventListener("click", () => painter.clear());
  for (const radio of form.querySelectorAll('input[name="control-kind"]')) {
    radio.addEventListener("change", () => {
      controlPad.clear(); // a map of one kind means nothing to another kind's model
      renderControl();
    });
  }
  $("control-file").addEventListener("change", async () => {
    await controlPad.useUpload($("control-file").files[0]);
    $("control-file").value = ""; // the same file again is a new upload
  });
  $("control-undo").addEventListener("click", () => controlPad.undo());
  $("control-clear").addEventListener("click", () => controlPad.clear());
  $("prompt").addEventListener("input", renderBoxList);
  bindOutput("control-scale", "control-scale-value", (v) => v.toFixed(2));
  $("cancel").addEventListener("click", onCancel);
  form.addEventListener("submit", onSubmit);

  try {
    state.models = await listModels();
  } catch (err) {
    showFormError(`Could not list the models: ${err.message}`);
  }
  selectTab(state.tab);
  document.body.dataset.ready = "true"; // the page is wired and knows the models
}

init();
