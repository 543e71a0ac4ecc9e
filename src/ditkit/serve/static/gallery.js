// The gallery: every finished image, newest first, with download, "reuse seed" and "use as input".

export class Gallery {
  /** onReuseSeed(seed), onUseAsInput(url), onChange(items): items are {url, label, seed}. */
  constructor(list, emptyNote, { onReuseSeed, onUseAsInput, onChange }) {
    this.list = list;
    this.emptyNote = emptyNote;
    this.items = [];
    this.handlers = { onReuseSeed, onUseAsInput, onChange };
  }

  /** job: the finished job from GET /v1/jobs/{id}; meta: {task, prompt} of its request. */
  add(job, meta) {
    const seeds = job.seeds || [];
    job.result.forEach((url, k) => {
      const seed = meta.task === "edit" ? null : seeds[k] ?? null; // an edit inverts its image: no seed
      const label = `${meta.task}${seed === null ? "" : ` · seed ${seed}`} · ${job.id.slice(0, 8)}/${k}`;
      const item = { url, seed, label, task: meta.task, prompt: meta.prompt };
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
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = item.prompt ? `${item.task}: ${item.prompt}` : item.task;
    const caption = document.createElement("figcaption");
    caption.textContent = item.prompt ? `${item.label} — ${item.prompt}` : item.label;
    figure.append(img, caption);

    const actions = document.createElement("div");
    actions.className = "card-actions";
    const download = document.createElement("a");
    download.href = item.url;
    download.download = `ditkit-${item.task}${item.seed === null ? "" : `-seed${item.seed}`}.png`;
    download.textContent = "Download";
    actions.append(download);
    if (item.seed !== null) {
      actions.append(button("Reuse seed", `Reuse seed ${item.seed}`, () => this.handlers.onReuseSeed(item.seed)));
    }
    actions.append(button("Use as input", `Use ${item.label} as the input image`,
      () => this.handlers.onUseAsInput(item.url)));
    li.append(figure, actions);
    return li;
  }
}

function button(text, ariaLabel, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}
