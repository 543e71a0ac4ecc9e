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

Distributed (train.parallel ddp / fsdp, or any run under torchrun; training/distributed.py,
docs/training.md): every process runs `train`; each trains on its slice of the step's global
batch (noise, times and caption dropout drawn for the whole batch and sliced), so N ranks take
the same steps as one process. Rank 0 writes the log, the model folder and the plots and runs the
evaluations; the training state is sharded (training/sharded_state.py) and resumes on any world size.
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

from ditkit.core.checkpoint import (STATE_FILE, _load_tensors, load_weights_into, read_model_config, resolve_model,
                                    save_model)
from ditkit.core import control as control_model
from ditkit.core import lora
from ditkit.core.conditions import check_task, downsample, inpaint_condition, inpaint_training_masks, upscale_condition
from ditkit.core.config import Config, DiTConfig
from ditkit.core.control_maps import condition_map, maps_tensor, scene_map
from ditkit.core.encoders import get_text_encoder
from ditkit.core.files import LineLog, atomic_write_text, remove_orphan_temps
from ditkit.core.images import to_pil
from ditkit.core.flow import (flow_loss, interpolate, posterior_mean_x0, sample_time_logit_normal,
                              velocity_target_from_x0_estimate)
from ditkit.core.model import DiT, count_parameters, load_base_weights
from ditkit.core.video_model import build_model, inflate_image_weights
from ditkit.core.precision import resolve_device, training_precision
from ditkit.data import check_data, rank_slice, training_batch
from ditkit.data.features import open_features
from ditkit.data.shapes import make_scene_batch, reference_images
from ditkit.evaluation.evaluate import digits_eval, shapes_eval
from ditkit.training.distributed import Ranks, full_state, shard_fsdp, sharded_ema, wrap_ddp
from ditkit.training.distributed import start as start_ranks
from ditkit.training.loop import (NonFiniteLoss, TrainingLoop, TrainSettings, build_adamw, step_generator,
                                  training_autocast)
from ditkit.training.loop import lr_at as schedule_lr_at
from ditkit.training.plots import plot_loss_curve
from ditkit.training.sharded_state import POINTER, latest_state, remove_stale_states


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


def step_batch(cfg: Config, step: int, rank: int = 0, world: int = 1) -> dict:
    """Everything random about step `step`, drawn on the CPU from generators seeded by
    (seed, step) alone: images x0, captions (after caption dropout), noise, times, and the
    conditioning image of an inpainting or upscaling model. Data workers call this too.

    rank / world: this rank's slice of the global batch (train.batch_size). Caption dropout,
    noise and times are drawn for the whole global batch and sliced, so every sample gets the
    same randomness on any world size and N ranks' slices make up one process's batch.
    "skipped": unreadable samples of the user's data replaced in this slice (data.training_batch)."""
    task, size, n, seed = cfg.train.task, step_size(cfg, step), cfg.train.batch_size, cfg.train.seed
    part = rank_slice(n, rank, world)
    cond, control, skipped = None, None, 0
    if task == "inpaint":  # its masks are drawn one after another over the global batch: draw it whole, then slice
        scenes = None
        if getattr(cfg.data, "kind", "builtin") == "builtin" and cfg.data.dataset == "shapes":
            x0, scenes = make_scene_batch(seed, step, n, size, cfg.data.mix)
            captions = [sc.caption for sc in scenes]
        else:
            x0, captions = training_batch(cfg.data, seed, step, n, size)
        mask, captions = inpaint_training_masks(np.random.default_rng([seed, step, 2]), size, scenes, captions)
        x0, captions, cond = x0[part], captions[part], inpaint_condition(x0[part], mask[part])
    elif cfg.train.control is not None and _shapes_data(cfg):  # the condition from the scenes' ground truth
        x0, scenes = make_scene_batch(seed, step, n, size, cfg.data.mix)
        x0, scenes = x0[part], scenes[part]
        captions = [sc.caption for sc in scenes]
        images = [np.asarray(im) for im in to_pil(x0)]
        control = maps_tensor([scene_map(cfg.train.control.condition, sc, size, im) for sc, im in zip(scenes, images)])
    else:
        batch = training_batch(cfg.data, seed, step, n, size, rank, world)
        (x0, captions), skipped = batch, getattr(batch, "skipped", 0)
        if task == "upscale":
            cond = upscale_condition(downsample(x0))
        if cfg.train.control is not None:  # the user's images: the condition made from each image
            control = maps_tensor([condition_map(cfg.train.control.condition, im) for im in to_pil(x0)])
    g = step_generator(seed, step, stream=1)
    drop = (torch.rand(n, generator=g) < cfg.train.cfg_dropout)[part]
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    eps = torch.randn((n, *x0.shape[1:]), generator=g)[part]
    t = sample_time_logit_normal(n, cfg.train.time_mean, cfg.train.time_std, generator=g)
    if cfg.train.pure_noise_fraction:  # drawn after t, so batches without it are unchanged
        t = torch.where(torch.rand(n, generator=g) < cfg.train.pure_noise_fraction, 1.0, t)
    if cfg.model.frames:
        t = clip_times(t, x0.shape[1], torch.rand(n, generator=g) < cfg.train.first_frame_prob)
    t = t[part]
    x0_estimate = stable_target(cfg, step, x0, captions, eps, t, first=part.start) if cfg.train.stf_refs else None
    return {"step": step, "x0": x0, "captions": captions, "eps": eps, "t": t, "cond": cond, "control": control,
            "x0_estimate": x0_estimate, "skipped": skipped}


def _shapes_data(cfg: Config) -> bool:
    return getattr(cfg.data, "kind", "builtin") == "builtin" and cfg.data.dataset == "shapes"


def clip_times(t: torch.Tensor, frames: int, first_given: torch.Tensor) -> torch.Tensor:
    """Per-frame times (B, F) of a video batch: every frame at its clip's t, except frame 0 of
    the clips in `first_given` (B,) bool, which is given clean (t = 0): image-to-video training
    with first-frame conditioning (Wan 2.2 TI2V, LTX-Video; core/video_model.py)."""
    times = t[:, None].repeat(1, frames)
    times[first_given, 0] = 0.0
    return times


def check_stable_target(cfg: Config) -> None:
    if cfg.train.stf_refs and (cfg.data.dataset != "shapes" or cfg.train.task != "generate"):
        raise ValueError("train.stf_refs needs a generator that can draw more images for a caption: "
                         f"data.dataset shapes and train.task generate (got {cfg.data.dataset}, {cfg.train.task})")


def check_eval(cfg: Config) -> None:
    """train.eval_every runs a built-in world's benchmark (ShapesEval, the digits judge), which
    says nothing about a model of the user's own data."""
    if cfg.train.eval_every and cfg.model.frames:
        raise ValueError("train.eval_every runs the image benchmarks; for a video model set train.eval_every=0 and "
                         "run `ditkit eval video` on the model afterwards")
    if cfg.train.eval_every and cfg.train.control is not None:
        raise ValueError("train.eval_every runs ShapesEval without a condition; for a control run set "
                         "train.eval_every=0 and run `ditkit eval control` on the control model afterwards")
    if cfg.train.eval_every and cfg.data.kind != "builtin":
        raise ValueError(f"train.eval_every runs the built-in worlds' benchmarks (ShapesEval, digits); with data.kind "
                         f"{cfg.data.kind!r} set train.eval_every=0 and evaluate the model afterwards "
                         "(e.g. ditkit eval fwd, ditkit eval emoji)")


def stable_target(cfg: Config, step: int, x0: torch.Tensor, captions: list[str], eps: torch.Tensor,
                  t: torch.Tensor, first: int = 0) -> torch.Tensor:
    """The x0 to regress on: x0 itself below train.stf_min_t, and above it the posterior mean
    of x0 given x_t over x0 and train.stf_refs fresh scenes for the same caption (Stable
    Target Field, Xu et al. ICLR 2023).

    Why: at high t a single x0 is a very noisy target. For "a red circle to the left of a
    blue square" near t = 1 the best prediction is the mean of all such scenes, and what
    the relation word adds to it is small beside the spread of one random layout
    (research/relation_sensitivity.py: 0.0069 against 0.23 per element), so the
    gradient that would teach the word drowns. The estimate has the same expectation
    (consistent as the set grows) and far less variance where the layout is decided.
    `first`: the global batch index of x0[0] (a rank's slice), which seeds each sample's references."""
    estimate = x0.clone()
    for i in torch.nonzero(t >= cfg.train.stf_min_t).flatten().tolist():
        rng = np.random.default_rng([cfg.train.seed, step, 3, first + i])
        refs = reference_images(captions[i], rng, cfg.train.stf_refs, x0.shape[-1], cfg.data.mix)
        x_t = interpolate(x0[i:i + 1], eps[i:i + 1], t[i:i + 1])
        estimate[i] = posterior_mean_x0(x_t, t[i:i + 1], torch.cat([x0[i:i + 1], refs]).unsqueeze(0))[0]
    return estimate


class StepBatches(torch.utils.data.IterableDataset):
    """step_batch(step, rank, world) for steps [start, end), shared over DataLoader workers:
    worker k of n makes steps start+k, start+k+n, ..., and the loader's round-robin over workers
    yields them in step order, so workers change the speed, never the data."""

    def __init__(self, cfg: Config, start: int, end: int, rank: int = 0, world: int = 1):
        self.cfg, self.start, self.end, self.rank, self.world = cfg, start, end, rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + k, self.end, n):
            yield step_batch(self.cfg, step, self.rank, self.world)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # n workers x many threads each would oversubscribe the cores


def batch_stream(cfg: Config, start: int, end: int, device: torch.device, rank: int = 0, world: int = 1):
    """An iterator of this rank's step batches, made by cfg.train.num_workers processes (or inline)."""
    ds = StepBatches(cfg, start, end, rank, world)
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
    extra = {"control": b["control"].to(device, non_blocking=True)} if b.get("control") is not None else {}
    with training_autocast(cfg.train.precision, device):
        v = model(interpolate(x0, eps, t), t, context, mask, block_runner=runner, cond=cond, **extra)
    target = None
    if b.get("x0_estimate") is not None:
        target = velocity_target_from_x0_estimate(x0, eps, t, b["x0_estimate"].to(device, non_blocking=True))
    if t.ndim == 2:  # a clip's per-frame times: a given (t = 0) frame is the condition, not a target
        err = ((v.float() - (eps - x0).float()) ** 2).flatten(2).mean(2)  # (B, F)
        keep = (t > 0).float()
        loss = (err * keep).sum() / keep.sum().clamp_min(1.0)
    else:
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


def train(cfg: Config, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, stop_after: int | None = None) -> dict:
    """Train per `cfg`; returns {"step", "loss"}. `stop_after` ends the run early after that many
    steps in this call (used by tests to simulate a kill). In a distributed run every rank calls
    it (torchrun) and gets the same result; the process group lives only for the call."""
    device = resolve_device(cfg.train.device, "train.device")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, precision=training_precision(cfg.train.precision, device)))
    ranks = start_ranks(cfg.train.parallel, cfg.train.batch_size, device)
    try:
        return _train(cfg, ranks, resume, progress, on_step, stop_after)
    finally:
        ranks.close()


def _train(cfg: Config, ranks: Ranks, resume: bool, progress: bool,
           on_step: Callable[[int, float], None] | None, stop_after: int | None) -> dict:
    out, device, main = Path(cfg.train.output_dir), ranks.device, ranks.main
    found = latest_state(out)  # ("file" | "sharded", step) or None
    if found is not None and not resume:
        raise ValueError(f"{out} already holds a training run ({STATE_FILE if found[0] == 'file' else POINTER}); "
                         "pass --resume to continue it or choose another train.output_dir")
    if resume and not (found is not None or (out / "log.jsonl").exists()):
        where = "does not exist" if not out.exists() else f"holds no run ({STATE_FILE}, {POINTER} or log.jsonl)"
        raise ValueError(f"nothing to resume: the run folder {out} (train.output_dir) {where}; "
                         "start a new run without --resume, or set train.output_dir to the run to continue")
    check_task(cfg.train.task, cfg.model.cond_channels)
    check_stable_target(cfg)
    check_eval(cfg)
    if cfg.train.lora and ranks.parallel == "fsdp":
        raise ValueError("train.lora trains a few small adapter matrices, which FSDP has nothing to gain "
                         "from sharding: use train.parallel ddp (or none) for a LoRA run")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        # A run killed mid-write left its temporary files; no writer of this run has started yet.
        for folder in (out, out / "model"):
            remove_orphan_temps(folder)
        remove_stale_states(out)
    ranks.barrier()
    torch.manual_seed(cfg.train.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    settings = settings_from(cfg, progress)
    if cfg.train.lora:  # LoRA and control: a frozen base with trainable parts
        model = lora.training_model(cfg, device)
    elif cfg.train.control is not None:
        model = control_model.training_model(cfg, device)
    else:
        model = build_model(cfg.model).to(device)
    if cfg.train.init_from and not cfg.train.lora and cfg.train.control is None and not (resume and found is not None):
        _init_from(model, cfg)
    loop = _training_loop(model, settings, cfg, ranks)
    start = 0
    if resume and found is not None:
        start = loop.resume(out)
        if main:
            _truncate_log(out / "log.jsonl", start)
    if main:
        atomic_write_text(out / "config.yaml", json.dumps(cfg.to_dict(), indent=2))
    # On a GPU the encoder runs there too (the few thousand distinct captions are cached either way).
    check_data(cfg.data, ranks.world, cfg.train.num_workers)  # a bad data.path fails here, not in a data worker
    # data.features: the captions' states precomputed by `ditkit data prepare` (no encoder runs).
    encoder = (open_features(cfg.data, cfg.text_encoder) if cfg.data.features else
               get_text_encoder(cfg.text_encoder, device=device if device.type == "cuda" else "cpu"))
    if encoder.dim != cfg.model.text_dim:
        raise ValueError(f"text encoder {cfg.text_encoder!r} gives {encoder.dim}-dim states but model.text_dim is {cfg.model.text_dim}")
    # A fresh start (no checkpoint yet) rewrites the log: a run killed before its first checkpoint replays from 0.
    log = LineLog(out / "log.jsonl", fresh=start == 0) if main else None
    loop.model.train()
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, start + stop_after)
    if start == 0 and log is not None:
        log.write(json.dumps({"step": 0, "params": count_parameters(loop.model)}) + "\n")
    stream = batch_stream(cfg, start, end, device, ranks.rank, ranks.world)

    def budget_cut(steps: int) -> None:  # the time budget lowered the step count: record it
        cfg.train.steps = steps
        if main:
            atomic_write_text(out / "config.yaml", json.dumps(cfg.to_dict(), indent=2))

    def evaluate(done: int) -> None:
        if cfg.train.eval_every and done % cfg.train.eval_every == 0:
            ema = _full_ema(loop, cfg, ranks)  # gathered on every rank under FSDP; rank 0 evaluates
            if ema is not None:
                _eval_into_log(out, done, ema, encoder, cfg, log)

    def loss_fn(step: int):
        batch = next(stream)
        loss = training_loss(loop.net, cfg, encoder, step, device, batch=batch)
        return (loss, {"skipped": batch["skipped"]}) if batch.get("skipped") else loss

    try:
        result = loop.run(loss_fn, start=start, end=end, log=log,
                          checkpoint=lambda done: _checkpoint(out, done, loop, cfg, ranks),
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
        if log is not None:
            log.close()
    return {"step": result.steps, "loss": result.loss}


def _training_loop(model: DiT, settings: TrainSettings, cfg: Config, ranks: Ranks) -> TrainingLoop:
    """The loop of the run's mode: one process; DDP (the model wrapped, the optimizer over its
    own parameters); or FSDP2 (model and EMA sharded in place, the optimizer built after)."""
    if ranks.parallel == "none":
        return TrainingLoop(model, settings)
    if ranks.parallel == "ddp":
        return TrainingLoop(model, settings, wrap=lambda m: wrap_ddp(m, ranks),
                            make_optimizer=lambda _net, s: build_adamw(model, s), ranks=ranks)
    ema = sharded_ema(model, cfg.train.precision) if settings.ema_decay > 0 else None
    return TrainingLoop(shard_fsdp(model, cfg.train.precision), settings, ema=ema, ranks=ranks)


def _full_ema(loop: TrainingLoop, cfg: Config, ranks: Ranks) -> DiT | None:
    """The EMA model (the model itself without one) as a plain DiT on rank 0, None on the
    others: under FSDP every rank must call it, to gather the shards."""
    ema = loop.ema if loop.ema is not None else loop.model
    if ranks.parallel != "fsdp":
        return ema if ranks.main else None
    state = full_state(ema, ranks)
    if state is None:
        return None
    with torch.random.fork_rng(devices=[]):  # building it must not move the global RNG
        full = build_model(cfg.model)
    full.load_state_dict(state)
    return full.to(ranks.device).eval()


def _init_from(model: DiT, cfg: Config) -> None:
    """Start from a model folder's (EMA) weights with a fresh optimizer. The folder may hold
    the text-to-image base of an inpainting / upscaling model (only cond_channels differ):
    its input convolutions are widened with zeros (model.load_base_weights); or a RoPE model
    that this config turns into positions="rope+abs" (the new map stays at its zero init)."""
    folder = resolve_model(cfg.train.init_from)  # a folder or an embedded model's name
    # Through the dataclass, so keys an older config.json lacks read as their defaults.
    other = DiTConfig.from_dict(read_model_config(folder)["model"]).to_dict()
    mine = cfg.model.to_dict()
    diff = sorted(k for k in set(other) | set(mine) if other.get(k) != mine.get(k))
    video = {"frames", "temporal_patch", "video_attention", "sample_size"}
    if mine["frames"] and not other["frames"] and set(diff) <= video:
        # An image model on every frame; the temporal layers start at zero (video_model.inflate_image_weights).
        with torch.no_grad():
            inflate_image_weights(model, _load_tensors(folder / "model.safetensors"))
    elif diff == ["cond_channels"] and other["cond_channels"] == 0:
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
    # The loop's EMA starts as a copy of the model made after this.


def _checkpoint(out: Path, step: int, loop: TrainingLoop, cfg: Config, ranks: Ranks) -> None:
    """The training state (every rank writes its shards in a distributed run) and, from rank 0,
    the model folder of the EMA weights and the loss plot."""
    loop.save_state(out, step, cfg)
    ema = _full_ema(loop, cfg, ranks)
    if ema is None:
        return
    if cfg.train.lora:  # the adapter (peft's format) and the base it belongs to, in RUN/lora
        lora.save_training_adapter(ema, out / "lora", cfg)
    elif cfg.train.control is not None:  # the control model and the base it belongs to, in RUN/control
        control_model.save_training_control(ema, out / "control", cfg, step)
    else:
        save_model(out / "model", ema, sample=cfg.sample, text_encoder=cfg.text_encoder,
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
