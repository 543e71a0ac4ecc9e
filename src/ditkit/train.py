"""The training loop: plain PyTorch, one file.

Rectified-flow training (SD3 recipe: logit-normal times, v-prediction MSE)
with AdamW, linear warmup, gradient clipping, EMA, bf16 autocast, classifier-
free caption dropout, atomic periodic checkpoints and exact resume.

Exact resume: the batch, caption dropout, noise and times of step k are drawn
from generators seeded by (seed, k) alone, not from a running RNG stream, so
a run killed at any point and resumed from its last checkpoint replays the
same data and the same loss sequence as an uninterrupted run.

The loop is written so a DDP/FSDP wrapper can slot in later: the model is
used through `net` and each process would draw its own step-seeded shard.
"""

from __future__ import annotations

import copy
import json
import math
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .checkpoint import STATE_FILE, load_train_state, save_model, save_train_state
from .config import Config
from .encoders import get_text_encoder
from .flow import flow_loss, interpolate, sample_time_logit_normal
from .guidance import autocast_for
from .model import DiT, count_parameters


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


def get_batch(cfg: Config, step: int) -> tuple[torch.Tensor, list[str]]:
    from .data import make_batch

    return make_batch(cfg.data.dataset, cfg.train.seed, step, cfg.train.batch_size, cfg.data.size)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then constant (DiT, PixArt), then an optional linear cooldown
    to zero over the last `cooldown_steps` (the warmup-stable-decay schedule of
    Hu et al. 2024, MiniCPM): a run can stay at a constant rate for as long as
    compute allows and still end annealed."""
    tc = cfg.train
    lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps > 0 else tc.lr
    if tc.cooldown_steps > 0:
        lr *= min(1.0, max(0.0, (tc.steps - step) / tc.cooldown_steps))
    return lr


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay (as in timm / Karras): early checkpoints are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


@contextmanager
def training_autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The sampler's autocast (guidance.autocast_for) plus, under bf16 on CPU, the
    plain 'math' attention kernel: for our short sequences its bf16 backward is
    ~3x faster than the fused CPU kernel's (benchmarks/model_speed.py --profile),
    about 13% of a training step."""
    with autocast_for(precision, device):
        if precision == "bf16" and device.type == "cpu":
            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield


def training_loss(model: DiT, cfg: Config, encoder, step: int, device: torch.device) -> torch.Tensor:
    """The loss of step `step` (deterministic given the model and step)."""
    x0, captions = get_batch(cfg, step)
    g = step_generator(cfg.train.seed, step, stream=1)
    drop = torch.rand(len(captions), generator=g) < cfg.train.cfg_dropout
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    eps = torch.randn(x0.shape, generator=g)
    t = sample_time_logit_normal(len(captions), cfg.train.time_mean, cfg.train.time_std, generator=g)
    context, mask = encoder.encode(captions, device)
    x0, eps, t = x0.to(device), eps.to(device), t.to(device)
    with training_autocast(cfg.train.precision, device):
        v = model(interpolate(x0, eps, t), t, context, mask)
    return flow_loss(v, x0, eps).mean()


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
    path.write_text("".join(k + "\n" for k in keep))


def plot_loss_curve(log_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_png)


def train(cfg: Config, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, stop_after: int | None = None) -> dict:
    """Train per `cfg`; returns {"step", "loss"}. `stop_after` ends the run early after that many
    steps in this call (used by tests to simulate a kill)."""
    out = Path(cfg.train.output_dir)
    device = torch.device(cfg.train.device)
    state_path = out / STATE_FILE
    if state_path.exists() and not resume:
        raise ValueError(f"{out} already holds a training run ({STATE_FILE}); pass --resume to continue it "
                         "or choose another train.output_dir")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    model = DiT(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=(0.9, 0.999))
    start = 0
    if cfg.train.init_from and not (resume and state_path.exists()):
        _init_from(model, ema, cfg)
    if resume and state_path.exists():
        start = load_train_state(out, model, ema, opt)
        _truncate_log(out / "log.jsonl", start)
    (out / "config.yaml").write_text(json.dumps(cfg.to_dict(), indent=2))
    encoder = get_text_encoder(cfg.text_encoder, device="cpu")
    if encoder.dim != cfg.model.text_dim:
        raise ValueError(f"text encoder {cfg.text_encoder!r} gives {encoder.dim}-dim states but model.text_dim is {cfg.model.text_dim}")
    # A fresh start (no checkpoint yet) rewrites the log: a run killed before its first checkpoint replays from 0.
    log = (out / "log.jsonl").open("a" if start > 0 else "w")
    bar = _progress(progress, cfg.train.steps, start)
    model.train()
    loss_val, t_last, n_since = float("nan"), time.time(), 0
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, start + stop_after)
    if start == 0:
        log.write(json.dumps({"step": 0, "params": count_parameters(model)}) + "\n")
    try:
        for step in range(start, end):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = training_loss(model, cfg, encoder, step, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            update_ema(ema, model, ema_decay_at(step, cfg.train.ema_decay))
            loss_val = float(loss.detach())
            n_since += 1
            done = step + 1
            if on_step:
                on_step(done, loss_val)
            if not math.isfinite(loss_val):
                raise RuntimeError(f"loss became {loss_val} at step {done}; last checkpoint kept in {out}")
            if done % cfg.train.log_every == 0 or done == end:
                now = time.time()
                log.write(json.dumps({"step": done, "loss": loss_val, "lr": lr_at(step, cfg), "grad_norm": float(gnorm),
                                      "sec_per_step": (now - t_last) / n_since, "time": now}) + "\n")
                log.flush()
                t_last, n_since = now, 0
            if done % cfg.train.checkpoint_every == 0 or done == end:
                _checkpoint(out, done, model, ema, opt, cfg)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0:
                _eval_into_log(out, done, ema, encoder, cfg, log)
            bar.update(done, loss_val)
    finally:
        bar.close()
        log.close()
    return {"step": end, "loss": loss_val}


def _init_from(model: DiT, ema: DiT, cfg: Config) -> None:
    """Start from a model folder's (EMA) weights with a fresh optimizer."""
    from .checkpoint import load_weights_into, read_model_config

    folder = Path(cfg.train.init_from)
    other = read_model_config(folder)["model"]
    if other != cfg.model.to_dict():
        diff = sorted(k for k in set(other) | set(cfg.model.to_dict()) if other.get(k) != cfg.model.to_dict().get(k))
        raise ValueError(f"train.init_from {folder}: its model config differs from this config in {diff}")
    load_weights_into(model, folder / "model.safetensors")
    ema.load_state_dict(model.state_dict())


def _checkpoint(out: Path, step: int, model, ema, opt, cfg: Config) -> None:
    save_train_state(out, step, model, ema, opt, cfg)
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
        from .evaluate import digits_eval, shapes_eval

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


class _progress:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from .progress import stderr_console

            self.p = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                              TimeRemainingColumn(), console=stderr_console(), transient=False)
            self.p.start()
            self.task = self.p.add_task("train", total=total, completed=start, loss="-")

    def update(self, done: int, loss: float) -> None:
        if self.p:
            self.p.update(self.task, completed=done, loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.p:
            self.p.stop()
