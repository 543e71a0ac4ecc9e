// The gallery: every finished image, newest first, with download, "reuse seed" and "use as input";
// a video plays as its looping GIF, with download links for the GIF (and the MP4 when the server
// made one).

export class Gallery {
  /** onReuseSeed(seed), onUseAsInput(url), onChange(items): items are {url, label, seed, video}. */
  constructor(list, emptyNote, { onReuseSeed, onUseAsInput, onChange }) {
    this.list = list;
    this.emptyNote = emptyNote;
    this.items = [];
    this.handlers = { onReuseSeed, onUseAsInput, onChange };
  }

  /** job: the finished job from GET /v1/jobs/{id}; meta: {task, prompt} of its request. */
  add(job, meta) {
    const seeds = job.seeds || [];
    const video = meta.task === "video";
    job.result.forEach((url, k) => {
      const seed = meta.task === "edit" ? null : seeds[k] ?? null; // an edit inverts its image: no seed
      const frames = video ? ` · ${job.frames} frames` : "";
      const label = `${meta.task}${seed === null ? "" : ` · seed ${seed}`}${frames} · ${job.id.slice(0, 8)}/${k}`;
      const mp4 = video ? (job.mp4 || [])[k] ?? null : null;
      const item = { url, seed, label, task: meta.task, prompt: meta.prompt, video, mp4 };
      this.items.unshift(item);
      this.list.prepend(this.card(item));
    });
    this.emptyNote.hidden = this.items.length > 0;
    this.handlers.onChange(this.items);
  }

  card(item) {
    const li = document.createElement("li");
    li.className = "card";
    const figure = document.createElement("figure");
    const img = document.createElement("img"); // a video's GIF loops on its own
    img.src = item.url;
    img.alt = item.prompt ? `${item.task}: ${item.prompt}` : item.task;
    const caption = document.createElement("figcaption");
    caption.textContent = item.prompt ? `${item.label} — ${item.prompt}` : item.label;
    figure.append(img, caption);

    const actions = document.createElement("div");
    actions.className = "card-actions";
    const name = `ditkit-${item.task}${item.seed === null ? "" : `-seed${item.seed}`}`;
    actions.append(link(item.url, `${name}.${item.url.split(".").pop()}`, item.video ? "Download GIF" : "Download"));
    if (item.mp4) actions.append(link(item.mp4, `${name}.mp4`, "Download MP4"));
    if (item.seed !== null) {
      actions.append(button("Reuse seed", `Reuse seed ${item.seed}`, () => this.handlers.onReuseSeed(item.seed)));
    }
    if (!item.video) { // an input image is a still: a video's GIF is not offered as one
      actions.append(button("Use as input", `Use ${item.label} as the input image`,
        () => this.handlers.onUseAsInput(item.url)));
    }
    li.append(figure, actions);
    return li;
  }
}

function link(href, download, text) {
  const a = document.createElement("a");
  a.href = href;
  a.download = download;
  a.textContent = text;
  return a;
}

function button(text, ariaLabel, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}
