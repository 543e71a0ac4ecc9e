"""Few-step distillation: latent-consistency distillation in rectified-flow form, with the
guidance distilled in (`ditkit distill`).

The recipe is PixArt-delta's LCM (Luo et al. 2023; Chen et al. 2024), written for the flow
path x_t = (1 - t) x0 + t eps:
- consistency function f(x_t, t) = x_t - t v(x_t, t): LCM's c_skip(t) x_t + c_out(t) F
  with c_skip = 1 and c_out = -t, which satisfies the boundary f(x, 0) = x exactly, so no
  extra boundary scaling is needed;
- skipping-step teacher solver: from a grid time t_n the teacher takes one Euler step with
  classifier-free guidance at scale w to t_{n-k} (k grid steps at once, LCM's "skipping");
- target: the EMA student's f at t_{n-k} (EMA 0.95, as LCM), no gradient;
- loss: pseudo-Huber ||f_student(x_{t_n}, t_n) - f_target(x_{t_{n-k}}, t_{n-k})|| (LCM, Song &
  Dhariwal 2023), c = 0.03 for images in [-1, 1] at this size.
The student is initialized from the teacher and conditioned on the prompt alone: the guided
teacher is what it imitates, so it samples without a CFG pass (as Kandinsky 3 Flash). In flow
form the deterministic consistency multistep sampler is exactly Euler on the student's
velocity (x0 = f, eps = x_t + (1 - t) v, re-combined at the next time), so the distilled
model works with every ditkit sampler: `ditkit generate --model shapes-64-flash --steps 4`.

distill.method: reflow runs the other teacher-initialized method, rectified-flow reflow on
guided teacher pairs (accel/reflow.py), so the two can be compared at an equal budget; the
comparison is in docs/benchmarks.md. Shortcut models (Frans et al., 2024) are not offered:
they add a step-size input to the network and train from scratch, i.e. the base model's whole
cost again. distill.init continues from an earlier student (a longer run in several parts).

Both methods run their optimizer steps in the one training loop (training/loop.py): AdamW
without weight decay, no warmup, gradient clipping at 1, and for LCM the EMA target network
as the loop's EMA copy (constant decay, no EMA warm-up).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from ditkit.accel.reflow import make_pairs, reflow_loss
from ditkit.core.checkpoint import load_model, resolve_model, save_model
from ditkit.core.config import SampleConfig, coerce_fields, read_yaml_config
from ditkit.core.encoders import get_text_encoder
from ditkit.core.files import LineLog
from ditkit.core.flow import interpolate
from ditkit.core.guidance import autocast_for, cfg_combine, pad_contexts
from ditkit.core.precision import resolve_device, training_precision
from ditkit.core.progress import progress_bar
from ditkit.data import make_batch
from ditkit.engine.generate import Engine
from ditkit.engine.velocity import encode_with_empty
from ditkit.training.loop import LoopResult, TrainingLoop, TrainSettings, step_generator


METHODS = ("lcm", "reflow")


@dataclass
class DistillConfig:
    method: str = "lcm"            # lcm | reflow
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    ema_decay: float = 0.95        # the target network (LCM)
    grid: int = 50                 # teacher time grid t_n = n / grid
    skip: int = 5                  # teacher solver step over k grid points (LCM's skipping step)
    guidance: float = 4.0          # the teacher's CFG scale, distilled into the student
    huber_c: float = 0.03
    precision: str = "bf16"
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    time_budget_s: float = 0.0     # > 0: stop (and save) when this many seconds have passed
    pairs: int = 1024              # reflow: guided teacher (noise, image) pairs, generated once
    teacher_steps: int = 0         # reflow: the teacher's sampling steps per pair (0: its default)
    init: str = ""                 # start the student from this model (name or folder), not the teacher
    device: str = "cpu"
    sample: dict = field(default_factory=lambda: {"steps": 4, "guidance": 1.0})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown distill.method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.pairs < 1 or self.teacher_steps < 0:
            raise ValueError(f"distill.pairs must be >= 1 and distill.teacher_steps >= 0, got {self.pairs} and {self.teacher_steps}")
        for name in ("steps", "batch_size", "grid", "skip", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"distill.{name} must be >= 1, got {getattr(self, name)}")
        if self.skip >= self.grid:
            raise ValueError(f"distill.skip ({self.skip}) must be smaller than distill.grid ({self.grid})")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"distill.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.huber_c <= 0 or self.guidance < 0:
            raise ValueError("distill.lr and distill.huber_c must be > 0 and distill.guidance >= 0")


def load_distill_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    d = read_yaml_config(path, overrides, what="distill config")
    section = d.get("distill", {})
    if not isinstance(section, dict):
        raise ValueError(f"distill config {path} needs a 'distill:' mapping")
    section = dict(section)
    unknown = set(section) - {f.name for f in fields(DistillConfig)}
    if unknown:
        raise ValueError(f"unknown distill config keys {sorted(unknown)}; allowed: {sorted(f.name for f in fields(DistillConfig))}")
    sample = section.pop("sample", None) if "sample" in section else None
    cfg = DistillConfig(**coerce_fields(DistillConfig, section, "distill"))
    if sample is not None:
        if not isinstance(sample, dict):
            raise ValueError("distill.sample must be a mapping of the student's sampling defaults (steps, guidance, ...)")
        bad = set(sample) - set(SampleConfig.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown distill.sample keys {sorted(bad)}; allowed: {sorted(SampleConfig.__dataclass_fields__)}")
        cfg.sample = dict(sample)
    return cfg


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(||a - b||^2 / D + c^2) - c per sample (mean-normalized), then the batch mean."""
    d = (a.float() - b.float()).flatten(1).pow(2).mean(1)
    return (torch.sqrt(d + c * c) - c).mean()


def consistency_fn(model, x: torch.Tensor, t: torch.Tensor, context, mask) -> torch.Tensor:
    """f(x_t, t) = x_t - t v(x_t, t): the x0 estimate, exact identity at t = 0."""
    return x - t.view(-1, 1, 1, 1) * model(x, t, context, mask).to(x.dtype)


def distill_loss(student, target, teacher, encoder, cfg: DistillConfig, x0: torch.Tensor, captions: list[str],
                 generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One LCM step's loss for a data batch (deterministic given the generator)."""
    b = x0.shape[0]
    eps = torch.randn(x0.shape, generator=generator).to(device)
    n = torch.randint(cfg.skip, cfg.grid + 1, (b,), generator=generator).to(device)
    t_n, t_m = n.float() / cfg.grid, (n - cfg.skip).float() / cfg.grid
    x0 = x0.to(device)
    x_n = interpolate(x0, eps, t_n)
    # The teacher's CFG velocity at per-sample times t_n (engine.velocity's closures take one
    # scalar t per batch): both branches in one batched forward, combined by the one CFG formula.
    (context, mask), uncond = encode_with_empty(encoder, captions, device)
    both, both_mask = pad_contexts((context, mask), uncond)
    with torch.no_grad(), autocast_for(cfg.precision, device):
        v_c, v_u = teacher(torch.cat([x_n, x_n]), torch.cat([t_n, t_n]), both, both_mask).float().chunk(2)
        v_teacher = cfg_combine(v_c, v_u, cfg.guidance)
        x_m = x_n + (t_m - t_n).view(-1, 1, 1, 1) * v_teacher
        f_target = consistency_fn(target, x_m, t_m, context, mask).float()
    with autocast_for(cfg.precision, device):
        f_student = consistency_fn(student, x_n, t_n, context, mask)
    return pseudo_huber(f_student, f_target, cfg.huber_c)


def load_teacher(name_or_path: str | Path, device: torch.device | str = "cpu") -> tuple[Engine, dict]:
    """An embedded model or folder as an Engine (model, text encoder, sampling defaults, folder)
    and its config dict (core.checkpoint.load_model's)."""
    folder = resolve_model(name_or_path)
    model, config = load_model(folder, device)
    encoder = get_text_encoder(config.get("text_encoder", "minilm"), device=torch.device(device))
    return Engine(model, encoder, config["sample"], source=str(folder)), config


def _initial_student(teacher, init: str, device: torch.device):
    """A trainable copy of the teacher, or of the model `init` names (same architecture)."""
    if not init:
        return copy.deepcopy(teacher)
    start, _ = load_model(resolve_model(init), device)
    if start.config != teacher.config:
        raise ValueError(f"distill.init {init!r} has a different architecture from the teacher; "
                         "it must be a student of the same teacher")
    return start


def loop_settings(cfg: DistillConfig, budget_s: float = 0.0, progress: bool = False) -> TrainSettings:
    """The training-loop settings of a distillation: constant lr, clip 1, and for LCM the
    target network as an EMA copy at constant decay (no warm-up, as LCM); reflow keeps none."""
    return TrainSettings(steps=cfg.steps, lr=cfg.lr, weight_decay=0.0, grad_clip=1.0,
                         ema_decay=cfg.ema_decay if cfg.method == "lcm" else 0.0, ema_warmup=False,
                         log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, time_budget_s=budget_s,
                         progress=progress, label=f"distill ({cfg.method})")


def distill(teacher_name: str, cfg: DistillConfig, out: str | Path, progress: bool = True) -> dict:
    """Distil `teacher_name` (embedded model or folder) into a few-step student saved at `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {out} already exists and is not empty")
    device = resolve_device(cfg.device, "distill.device")
    cfg = replace(cfg, precision=training_precision(cfg.precision, device))
    engine, config = load_teacher(teacher_name, device)
    teacher = engine.model.eval().requires_grad_(False)
    if teacher.config.cond_channels:
        raise ValueError("distill needs a text-to-image teacher (this one takes a conditioning image)")
    data = config.get("data") or {}
    if data.get("dataset") is None:
        raise ValueError("the teacher records no dataset, so there is no training data to distil on")
    encoder = engine.encoder
    student = _initial_student(teacher, cfg.init, device).requires_grad_(True).train()
    sample = replace(engine.defaults, **{k: v for k, v in cfg.sample.items() if k in SampleConfig.__dataclass_fields__})
    size = data.get("size", sample.size)
    out.mkdir(parents=True, exist_ok=True)
    log = LineLog(out / "log.jsonl")
    log.write(json.dumps({"teacher": str(engine.source), "distill": asdict(cfg)}) + "\n")
    t0 = time.time()

    def save(step: int) -> None:
        save_model(out, student, sample=sample, text_encoder=config.get("text_encoder", "minilm"),
                   extra={"data": data, "distilled_from": str(engine.source), "distill_steps": step,
                          "distill": asdict(cfg)})

    try:
        pairs = None
        if cfg.method == "reflow":
            with progress_bar("teacher pairs", cfg.pairs, progress) as tick:
                pairs = make_pairs(engine, cfg.pairs, cfg.guidance, cfg.teacher_steps, cfg.seed, data["dataset"], size,
                                   cfg.batch_size, cfg.precision,
                                   callback=lambda info: tick(info["done"] * cfg.pairs // max(info["total"], 1),
                                                              cfg.pairs))
            log.write(json.dumps({"pairs": cfg.pairs, "pair_seconds": time.time() - t0}) + "\n")
            log.flush()
        # The budget counts from the start of the command, pair generation included.
        budget = max(cfg.time_budget_s - (time.time() - t0), 1e-9) if cfg.time_budget_s else 0.0
        # The LCM target network is the loop's EMA copy of the student (EMA 0.95, no gradient).
        loop = TrainingLoop(student, loop_settings(cfg, budget, progress))
        result = _run(loop, cfg, teacher, encoder, pairs, data, size, device, log, save, t0)
        if result.steps < cfg.steps:
            log.write(json.dumps({"stopped": "time budget", "at_step": result.steps, "time": time.time() - t0}) + "\n")
    finally:
        log.close()
    return {"steps": result.steps, "loss": result.loss, "seconds": time.time() - t0, "output": str(out)}


def _run(loop: TrainingLoop, cfg: DistillConfig, teacher, encoder, pairs: dict | None, data: dict, size: int,
         device: torch.device, log, save, t0: float) -> LoopResult:
    """Either method's optimizer steps in the training loop; step k's randomness comes from
    step_generator(seed, k) alone. The student is saved every checkpoint_every steps and at the end."""
    def loss_fn(step: int) -> torch.Tensor:
        g = step_generator(cfg.seed, step, stream=3)
        if pairs is not None:
            return reflow_loss(loop.net, encoder, pairs, cfg.batch_size, cfg.precision, g, device)
        x0, captions = make_batch(data["dataset"], cfg.seed, step, cfg.batch_size, size)
        return distill_loss(loop.net, loop.ema, teacher, encoder, cfg, x0, captions, g, device)

    return loop.run(loss_fn, log=log, checkpoint=save, log_fields=lambda done: {"time": time.time() - t0})
