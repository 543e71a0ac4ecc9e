"""The `ditkit train` recipe: rectified-flow training of a DiT on the shapes world or digits.

SD3's recipe (logit-normal times, v-prediction MSE) with classifier-free caption dropout,
optional Stable Target Field targets and a cosine-similarity regularizer; the optimizer
steps (AdamW with parameter groups, warmup, clipping, EMA, exact resume, log, checkpoints,
progress, time budget) are the one loop of training/loop.py.

Exact resume: the batch, caption dropout, noise and times of step k are drawn from
generators seeded by (seed, k) alone, not from a running RNG stream, so a run killed at
any point and resumed from its last checkpoint replays the same data and the same loss
sequence as an uninterrupted run, bit for bit (tests/test_resume_kill.py SIGKILLs a real
process): the text encoder encodes each caption alone (core.encoders), so its states do not
depend on the batch that first met it. Every file is written atomically (core.files); on start
and on resume the temporary files of a killed writer are removed. The periodic ShapesEval / digit accuracy of the EMA
model is why training sits above evaluation in the layers (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ditkit.core.checkpoint import (STATE_FILE, _load_tensors, load_weights_into, read_model_config, save_model)
from ditkit.core.conditions import check_task, downsample, inpaint_condition, inpaint_training_masks, upscale_condition
from ditkit.core.config import Config, DiTConfig
from ditkit.core.encoders import get_text_encoder
from ditkit.core.files import LineLog, atomic_write, atomic_write_text, remove_orphan_temps
from ditkit.core.flow import (flow_loss, interpolate, posterior_mean_x0, sample_time_logit_normal,
                              velocity_target_from_x0_estimate)
from ditkit.core.model import DiT, count_parameters, load_base_weights
from ditkit.core.precision import resolve_device, training_precision
from ditkit.data import make_batch
from ditkit.data.shapes import make_scene_batch, reference_images
from ditkit.evaluation.evaluate import digits_eval, shapes_eval
from ditkit.training.loop import NonFiniteLoss, TrainingLoop, TrainSettings, step_generator, training_autocast
from ditkit.training.loop import lr_at as schedule_lr_at


def settings_from(cfg: Config, progress: bool = False) -> TrainSettings:
    """The loop settings of a training config."""
    tc = cfg.train
    return TrainSettings(steps=tc.steps, lr=tc.lr, warmup_steps=tc.warmup_steps, cooldown_steps=tc.cooldown_steps,
                         cooldown_fraction=tc.cooldown_fraction, weight_decay=tc.weight_decay, betas=(0.9, 0.999),
                         grad_clip=tc.grad_clip, ema_decay=tc.ema_decay, ema_warmup=True, log_every=tc.log_every,
                         checkpoint_every=tc.checkpoint_every, time_budget_s=tc.time_budget_s, progress=progress,
                         label="train")


def lr_at(step: int, cfg: Config) -> float:
    """The learning rate of step `step` under cfg.train (the loop's warmup-stable-decay schedule)."""
    return schedule_lr_at(step, settings_from(cfg))


def step_size(cfg: Config, step: int) -> int:
    """The image side of step `step`: an upscaler alternates its two scales (S/2 -> S, S -> 2S)."""
    return cfg.data.size * 2 if cfg.train.task == "upscale" and step % 2 else cfg.data.size


def step_batch(cfg: Config, step: int) -> dict:
    """Everything random about step `step`, drawn on the CPU from generators seeded by
    (seed, step) alone: images x0, captions (after caption dropout), noise, times, and the
    conditioning image of an inpainting or upscaling model. Data workers call this too."""
    task, size = cfg.train.task, step_size(cfg, step)
    scenes = None
    if task == "inpaint" and cfg.data.dataset == "shapes":
        x0, scenes = make_scene_batch(cfg.train.seed, step, cfg.train.batch_size, size, cfg.data.mix)
        captions = [sc.caption for sc in scenes]
    else:
        x0, captions = make_batch(cfg.data.dataset, cfg.train.seed, step, cfg.train.batch_size, size, cfg.data.mix)
    cond = None
    if task == "inpaint":
        mask, captions = inpaint_training_masks(np.random.default_rng([cfg.train.seed, step, 2]), size, scenes, captions)
        cond = inpaint_condition(x0, mask)
    elif task == "upscale":
        cond = upscale_condition(downsample(x0))
    g = step_generator(cfg.train.seed, step, stream=1)
    drop = torch.rand(len(captions), generator=g) < cfg.train.cfg_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    eps = torch.randn(x0.shape, generator=g)
    t = sample_time_logit_normal(len(captions), cfg.train.time_mean, cfg.train.time_std, generator=g)
    if cfg.train.pure_noise_fraction:  # drawn after t, so batches without it are unchanged
        t = torch.where(torch.rand(len(captions), generator=g) < cfg.train.pure_noise_fraction, 1.0, t)
    x0_estimate = stable_target(cfg, step, x0, captions, eps, t) if cfg.train.stf_refs else None
    return {"step": step, "x0": x0, "captions": captions, "eps": eps, "t": t, "cond": cond,
            "x0_estimate": x0_estimate}


def check_stable_target(cfg: Config) -> None:
    if cfg.train.stf_refs and (cfg.data.dataset != "shapes" or cfg.train.task != "generate"):
        raise ValueError("train.stf_refs needs a generator that can draw more images for a caption: "
                         f"data.dataset shapes and train.task generate (got {cfg.data.dataset}, {cfg.train.task})")


def stable_target(cfg: Config, step: int, x0: torch.Tensor, captions: list[str], eps: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
    """The x0 to regress on: x0 itself below train.stf_min_t, and above it the posterior mean
    of x0 given x_t over x0 and train.stf_refs fresh scenes for the same caption (Stable
    Target Field, Xu et al. ICLR 2023).

    Why: at high t a single x0 is a very noisy target. For "a red circle to the left of a
    blue square" near t = 1 the best prediction is the mean of all such scenes, and what
    the relation word adds to it is small beside the spread of one random layout
    (research/relation_sensitivity.py: 0.0069 against 0.23 per element), so the
    gradient that would teach the word drowns. The estimate has the same expectation
    (consistent as the set grows) and far less variance where the layout is decided."""
    estimate = x0.clone()
    for i in torch.nonzero(t >= cfg.train.stf_min_t).flatten().tolist():
        rng = np.random.default_rng([cfg.train.seed, step, 3, i])
        refs = reference_images(captions[i], rng, cfg.train.stf_refs, x0.shape[-1], cfg.data.mix)
        x_t = interpolate(x0[i:i + 1], eps[i:i + 1], t[i:i + 1])
        estimate[i] = posterior_mean_x0(x_t, t[i:i + 1], torch.cat([x0[i:i + 1], refs]).unsqueeze(0))[0]
    return estimate


class StepBatches(torch.utils.data.IterableDataset):
    """step_batch(step) for steps [start, end), shared over DataLoader workers: worker k of n
    makes steps start+k, start+k+n, ..., and the loader's round-robin over workers yields
    them in step order, so workers change the speed, never the data."""

    def __init__(self, cfg: Config, start: int, end: int):
        self.cfg, self.start, self.end = cfg, start, end

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + k, self.end, n):
            yield step_batch(self.cfg, step)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # n workers x many threads each would oversubscribe the cores


def batch_stream(cfg: Config, start: int, end: int, device: torch.device):
    """An iterator of step batches, made by cfg.train.num_workers processes (or inline)."""
    ds = StepBatches(cfg, start, end)
    if cfg.train.num_workers == 0:
        return iter(ds)
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.train.num_workers,
                                            worker_init_fn=_worker_init, prefetch_factor=4,
                                            pin_memory=device.type == "cuda"))


def training_loss(model: DiT, cfg: Config, encoder, step: int, device: torch.device,
                  batch: dict | None = None) -> torch.Tensor:
    """The loss of step `step` (deterministic given the model and step); `batch` is
    step_batch(cfg, step) when a data worker has already made it."""
    b = batch if batch is not None else step_batch(cfg, step)
    if b["step"] != step:
        raise RuntimeError(f"data stream out of order: got the batch of step {b['step']} at step {step}")
    context, mask = encoder.encode(b["captions"], device)
    x0, eps, t = (b[k].to(device, non_blocking=True) for k in ("x0", "eps", "t"))
    cond = b["cond"].to(device, non_blocking=True) if b["cond"] is not None else None
    similarities: list[torch.Tensor] = []
    runner = _similarity_recorder(similarities) if cfg.train.cosine_reg else None
    with training_autocast(cfg.train.precision, device):
        v = model(interpolate(x0, eps, t), t, context, mask, block_runner=runner, cond=cond)
    target = None
    if b.get("x0_estimate") is not None:
        target = velocity_target_from_x0_estimate(x0, eps, t, b["x0_estimate"].to(device, non_blocking=True))
    loss = flow_loss(v, x0, eps, target).mean()
    if similarities:
        loss = loss + cfg.train.cosine_reg * torch.stack(similarities).mean()
    return loss


def _similarity_recorder(out: list[torch.Tensor]):
    """A block runner (DiT.forward's hook) that runs the blocks as usual and appends each
    block's mean cosine similarity between its input and output tokens to `out`.

    The regularizer of "Your Transformer is Secretly Linear" (Razzhigaev et al., ACL 2024):
    consecutive residual-stream embeddings that are nearly parallel are what makes a block
    look linear, and the paper reports that a cosine-similarity term in pre-training
    lowers layer linearity. Its exact form was not available to us offline, so this is the
    plain mean over blocks and tokens, weighted by train.cosine_reg with either sign (a
    negative weight rewards similarity); docs/analysis.md measures what each sign does."""
    def run(blocks, tokens, block_args):
        for blk in blocks:
            new = blk(tokens, *block_args)
            out.append(torch.nn.functional.cosine_similarity(tokens.float(), new.float(), dim=-1).mean())
            tokens = new
        return tokens
    return run


def _truncate_log(path: Path, last_step: int) -> None:
    """After a resume from `last_step`, drop log lines the killed run wrote past it."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def plot_loss_curve(log_path: Path, out_png: Path) -> None:
    import matplotlib  # why here: optional and slow to import; only checkpoints draw the curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # why here: after matplotlib.use("Agg")

    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    metric = "digits_accuracy" if any("digits_accuracy" in r for r in rows) else "shapes_eval"
    evals = [(r["step"], r[metric]) for r in rows if metric in r]
    if not losses:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*losses), lw=0.8, label="train loss")
    ax.set_xlabel("step"), ax.set_ylabel("flow-matching loss"), ax.set_yscale("log")
    if evals:
        ax2 = ax.twinx()
        label = "digit accuracy" if metric == "digits_accuracy" else "ShapesEval overall"
        ax2.plot(*zip(*evals), "o-", color="tab:red", label=label)
        ax2.set_ylabel(label), ax2.set_ylim(0, 1)
    ax.set_title(log_path.parent.name)
    fig.tight_layout()
    try:
        atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def train(cfg: Config, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, stop_after: int | None = None) -> dict:
    """Train per `cfg`; returns {"step", "loss"}. `stop_after` ends the run early after that many
    steps in this call (used by tests to simulate a kill)."""
    out = Path(cfg.train.output_dir)
    device = resolve_device(cfg.train.device, "train.device")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, precision=training_precision(cfg.train.precision, device)))
    state_path = out / STATE_FILE
    if state_path.exists() and not resume:
        raise ValueError(f"{out} already holds a training run ({STATE_FILE}); pass --resume to continue it "
                         "or choose another train.output_dir")
    if resume and not (state_path.exists() or (out / "log.jsonl").exists()):
        where = "does not exist" if not out.exists() else f"holds no run ({STATE_FILE} or log.jsonl)"
        raise ValueError(f"nothing to resume: the run folder {out} (train.output_dir) {where}; "
                         "start a new run without --resume, or set train.output_dir to the run to continue")
    check_task(cfg.train.task, cfg.model.cond_channels)
    check_stable_target(cfg)
    out.mkdir(parents=True, exist_ok=True)
    # A run killed mid-write left its temporary files; no writer of this run has started yet.
    for folder in (out, out / "model"):
        remove_orphan_temps(folder)
    torch.manual_seed(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    settings = settings_from(cfg, progress)
    loop = TrainingLoop(DiT(cfg.model).to(device), settings)
    start = 0
    if cfg.train.init_from and not (resume and state_path.exists()):
        _init_from(loop.model, loop.ema, cfg)
    if resume and state_path.exists():
        start = loop.resume(out)
        _truncate_log(out / "log.jsonl", start)
    atomic_write_text(out / "config.yaml", json.dumps(cfg.to_dict(), indent=2))
    # On a GPU the encoder runs there too (the few thousand distinct captions are cached either way).
    encoder = get_text_encoder(cfg.text_encoder, device=device if device.type == "cuda" else "cpu")
    if encoder.dim != cfg.model.text_dim:
        raise ValueError(f"text encoder {cfg.text_encoder!r} gives {encoder.dim}-dim states but model.text_dim is {cfg.model.text_dim}")
    # A fresh start (no checkpoint yet) rewrites the log: a run killed before its first checkpoint replays from 0.
    log = LineLog(out / "log.jsonl", fresh=start == 0)
    loop.model.train()
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, start + stop_after)
    if start == 0:
        log.write(json.dumps({"step": 0, "params": count_parameters(loop.model)}) + "\n")
    stream = batch_stream(cfg, start, end, device)

    def budget_cut(steps: int) -> None:  # the time budget lowered the step count: record it
        cfg.train.steps = steps
        atomic_write_text(out / "config.yaml", json.dumps(cfg.to_dict(), indent=2))

    def evaluate(done: int) -> None:
        if cfg.train.eval_every and done % cfg.train.eval_every == 0:
            _eval_into_log(out, done, loop.ema, encoder, cfg, log)

    try:
        result = loop.run(lambda step: training_loss(loop.net, cfg, encoder, step, device, batch=next(stream)),
                          start=start, end=end, log=log, checkpoint=lambda done: _checkpoint(out, done, loop, cfg),
                          on_step=(lambda done, loss, stats: on_step(done, loss)) if on_step else None,
                          after_step=evaluate, on_budget=budget_cut)
    except NonFiniteLoss as e:
        raise RuntimeError(f"{e}; last checkpoint kept in {out}") from None
    finally:
        # Stop the data workers before the process exits (an abandoned loader's pin-memory
        # thread can die noisily at interpreter shutdown).
        shutdown = getattr(stream, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        log.close()
    return {"step": result.steps, "loss": result.loss}


def _init_from(model: DiT, ema: DiT, cfg: Config) -> None:
    """Start from a model folder's (EMA) weights with a fresh optimizer. The folder may hold
    the text-to-image base of an inpainting / upscaling model (only cond_channels differ):
    its input convolutions are widened with zeros (model.load_base_weights); or a RoPE model
    that this config turns into positions="rope+abs" (the new map stays at its zero init)."""
    folder = Path(cfg.train.init_from)
    # Through the dataclass, so keys an older config.json lacks read as their defaults.
    other = DiTConfig.from_dict(read_model_config(folder)["model"]).to_dict()
    mine = cfg.model.to_dict()
    diff = sorted(k for k in set(other) | set(mine) if other.get(k) != mine.get(k))
    if diff == ["cond_channels"] and other["cond_channels"] == 0:
        with torch.no_grad():
            load_base_weights(model, _load_tensors(folder / "model.safetensors"))
    elif diff == ["positions"] and other["positions"] == "rope" and mine["positions"] == "rope+abs":
        # A RoPE model gains the zero-initialised absolute-position map: it starts unchanged.
        with torch.no_grad():
            load_base_weights(model, _load_tensors(folder / "model.safetensors"), new=("abs_pos.weight",))
    elif diff:
        raise ValueError(f"train.init_from {folder}: its model config differs from this config in {diff}")
    else:
        load_weights_into(model, folder / "model.safetensors")
    ema.load_state_dict(model.state_dict())


def _checkpoint(out: Path, step: int, loop: TrainingLoop, cfg: Config) -> None:
    loop.save_state(out, step, cfg)
    save_model(out / "model", loop.ema, sample=cfg.sample, text_encoder=cfg.text_encoder,
               extra={"trained_steps": step, "data": cfg.data.__dict__})
    try:
        plot_loss_curve(out / "log.jsonl", out / "loss.png")
    except Exception:  # a plotting problem must never stop training
        pass


def _eval_into_log(out: Path, step: int, ema, encoder, cfg: Config, log) -> None:
    """The dataset's benchmark on the EMA weights at the model's default sampling settings:
    ShapesEval for the shapes world, the judge's digit accuracy for digits."""
    try:
        t0 = time.time()
        if cfg.data.dataset == "digits":
            res = digits_eval(ema, encoder, cfg.sample, per_digit=cfg.train.eval_per_category, seed=1234)
            row = {"step": step, "digits_accuracy": res["accuracy"], "per_digit": res["per_digit"]}
        else:
            res = shapes_eval(ema, encoder, cfg.sample, per_category=cfg.train.eval_per_category, seed=1234)
            row = {"step": step, "shapes_eval": res["overall"], "categories": res["categories"]}
        log.write(json.dumps({**row, "eval_seconds": time.time() - t0}) + "\n")
        log.flush()
    except Exception:
        log.write(json.dumps({"step": step, "eval_error": traceback.format_exc(limit=2)}) + "\n")
        log.flush()
