"""# READY: the one training loop

The optimizer-step loop every trainer in ditkit runs (`ditkit train`, LCM distillation,
reflow, and pruning recovery): AdamW with parameter groups, linear warmup and an optional
linear cooldown, gradient clipping, an EMA copy, exact resume, a JSON-lines log, periodic
checkpoints, a progress bar and a wall-clock budget. What a step computes is the caller's
`loss_fn(step) -> loss` (or `(loss, extra log fields)`); everything around it lives here.

Usage (a recovery fine-tune; see training/train.py and accel/distill.py for the rest):

    from ditkit.training.loop import TrainSettings, TrainingLoop, step_generator

    settings = TrainSettings(steps=200, lr=2e-4, warmup_steps=20, grad_clip=1.0, ema_decay=0.0)
    loop = TrainingLoop(student, settings)          # builds AdamW over parameter_groups(student)

    def loss_fn(step: int) -> torch.Tensor:         # deterministic given the step
        g = step_generator(seed, step)
        ...
        return torch.mean((loop.net(x, t, ctx, mask) - target) ** 2)

    result = loop.run(loss_fn, on_step=lambda done, loss, stats: log.append({"step": done, **stats}))
    # result.steps, result.loss; loop.ema is the EMA copy when settings.ema_decay > 0

Exact resume: `loop.save_state(folder, step, config)` writes model, EMA, optimizer and the
step (core.checkpoint.save_train_state); `start = loop.resume(folder)` restores them and
`loop.run(loss_fn, start=start)` continues. There is no RNG stream to save because a step's
randomness comes from generators seeded by (seed, step) alone (`step_generator`), so a run
killed at any point and resumed replays an uninterrupted run bit for bit.

Distributed (training/distributed.py, docs/training.md): the loss runs `loop.net`, which is
`wrap(model)` when a wrapper is given (DistributedDataParallel); FSDP2 shards the model (and
an EMA passed in) in place before the loop is built, and the optimizer comes from the
`make_optimizer(net, settings)` hook after that, over the sharded parameters. With `ranks`
given, the logged loss is the mean over the ranks (the global batch's), the checkpoint hook runs
on every rank (a sharded save is a collective; only rank 0 writes the log, the model folder and
the progress bar), save_state / resume use the sharded state of training/sharded_state.py,
and the time budget follows rank 0's clock. Each rank draws its slice of the step's global batch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import torch
from safetensors import safe_open
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ditkit.core.checkpoint import STATE_FILE, load_train_state, save_train_state
from ditkit.core.guidance import autocast_for
from ditkit.core.progress import stderr_console
from ditkit.training.distributed import Ranks
from ditkit.training.sharded_state import (latest_state, load_file_on_ranks, load_sharded, remove_sharded_states,
                                           save_sharded)

LossFn = Callable[[int], "torch.Tensor | tuple[torch.Tensor, dict]"]


@dataclass
class TrainSettings:
    """The loop's knobs. `steps` may be lowered during a run by the time budget."""
    steps: int
    lr: float
    warmup_steps: int = 0
    cooldown_steps: int = 0          # linear decay to 0 over the last N steps (0: none) ...
    cooldown_fraction: float = 0.0   # ... or over this fraction of `steps` (follows a budget's cut)
    weight_decay: float = 0.0        # decoupled (AdamW); never on the parameters no_decay() names
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0           # max global grad norm; 0: no clipping
    ema_decay: float = 0.0           # 0: no EMA copy
    ema_warmup: bool = True          # decay min(ema_decay, (1 + step) / (10 + step)) (timm / Karras)
    log_every: int = 25
    checkpoint_every: int = 0        # 0: a checkpoint only at the end
    time_budget_s: float = 0.0       # > 0: cut `steps` to what fits (TimeBudget)
    progress: bool = False
    label: str = "train"             # the progress bar's label


class NonFiniteLoss(RuntimeError):
    """The loss became nan or inf; the last checkpoint is left as it was."""


@dataclass
class LoopResult:
    steps: int    # the step count reached (a checkpoint was written there when a hook was given)
    loss: float   # the last step's loss (nan when no step ran)


# ----------------------------------------------------------------------------
# optimizer: parameter groups
# ----------------------------------------------------------------------------

NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding)
# Learned tables, by their parameter name's last part: the DiT's adaLN-single modulation
# tables (blocks.i.scale_shift_table, final_table; PixArt-alpha's scale_shift_table too).
NO_DECAY_SUFFIXES = ("_table",)
# Modules whose weights are a position table: `abs_pos` is the learned linear map of the
# 2-D sin-cos table (model.positions="rope+abs"), i.e. a reparametrized learned position
# embedding; diffusers and timm call theirs pos_embed.
NO_DECAY_POSITION_MODULES = ("abs_pos", "pos_embed")


def no_decay(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    """Whether the parameter `name` (owned directly by `module`) is exempt from weight decay.

    Weight decay is a prior that pulls weights to zero (decoupled from the gradient in
    AdamW, Loshchilov & Hutter, ICLR 2019). It suits matrices, whose scale the following
    norm undoes, but not gains, biases, embedding and modulation tables: decaying a norm
    gain or an adaLN shift/scale table pulls the layer towards a different function, not
    a smaller one. The common practice (BERT, GPT-2/minGPT, timm's
    param_groups_weight_decay, DiT and PixArt codebases) exempts every 1-D parameter and
    every embedding / position table; so do we."""
    leaf = name.rsplit(".", 1)[-1]
    module_name = name.rsplit(".", 2)[-2] if "." in name else ""
    return (param.ndim < 2 or isinstance(module, NO_DECAY_MODULES) or leaf.endswith(NO_DECAY_SUFFIXES)
            or module_name in NO_DECAY_POSITION_MODULES)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[{decayed params, weight_decay}, {exempt params, weight_decay 0}] in model.parameters()
    order (empty groups left out), each group with a "names" list for inspection."""
    decay: dict[str, list] = {"params": [], "names": []}
    exempt: dict[str, list] = {"params": [], "names": []}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{module_name}.{leaf}" if module_name else leaf
            group = exempt if no_decay(name, p, module) else decay
            group["params"].append(p)
            group["names"].append(name)
    # named_modules visits parents before children, not model.parameters() order: restore it
    # so the optimizer's state indices follow the model's parameter order.
    order = {id(p): i for i, p in enumerate(model.parameters())}
    groups = []
    for group, wd in ((decay, weight_decay), (exempt, 0.0)):
        pairs = sorted(zip(group["params"], group["names"]), key=lambda pn: order[id(pn[0])])
        if pairs:
            groups.append({"params": [p for p, _ in pairs], "names": [n for _, n in pairs], "weight_decay": wd})
    return groups


def build_adamw(net: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The default make_optimizer hook: AdamW over parameter_groups(net)."""
    fused = next(net.parameters()).device.type == "cuda"
    return torch.optim.AdamW(parameter_groups(net, settings.weight_decay), lr=settings.lr, betas=settings.betas,
                             weight_decay=settings.weight_decay, fused=fused)


# ----------------------------------------------------------------------------
# schedules, EMA, randomness, autocast
# ----------------------------------------------------------------------------

def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup, then constant (DiT, PixArt), then an optional linear cooldown to zero
    over the last cooldown steps (warmup-stable-decay, Hu et al. 2024, MiniCPM): a run can
    stay at a constant rate as long as compute allows and still end annealed."""
    lr = s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps > 0 else s.lr
    cooldown = s.cooldown_steps or int(s.cooldown_fraction * s.steps)
    if cooldown > 0:
        lr *= min(1.0, max(0.0, (s.steps - step) / cooldown))
    return lr


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay (as in timm / Karras): early checkpoints are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    # One fused call over all tensors (hundreds of small kernels otherwise, which dominate on a GPU).
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream): the loop's RNG contract."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


@contextmanager
def training_autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The sampler's autocast (guidance.autocast_for) plus, under bf16 on CPU, the plain
    'math' attention kernel: for our short sequences its bf16 backward is ~3x faster than
    the fused CPU kernel's (benchmarks/model_speed.py --profile), about 13% of a step."""
    with autocast_for(precision, device):
        if precision == "bf16" and device.type == "cpu":
            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield


# ----------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------

class TrainingLoop:
    """model + EMA + optimizer, and `run` for the steps. `ema`: an EMA module to keep (e.g.
    one the caller already loaded); by default a copy of the model when settings.ema_decay > 0."""

    def __init__(self, model: nn.Module, settings: TrainSettings, ema: nn.Module | None = None,
                 make_optimizer: Callable[[nn.Module, TrainSettings], torch.optim.Optimizer] = build_adamw,
                 wrap: Callable[[nn.Module], nn.Module] | None = None, main_process: bool = True,
                 ranks: Ranks | None = None):
        # ranks: a distributed run's place (training/distributed.py); None for one process
        self.ranks = ranks if ranks is not None and ranks.distributed else None
        self.model, self.settings = model, settings
        self.main_process = self.ranks.main if self.ranks is not None else main_process
        if ema is None and settings.ema_decay > 0:
            ema = copy.deepcopy(model).requires_grad_(False).eval()
        self.ema = ema
        self.net = wrap(model) if wrap is not None else model
        self.optimizer = make_optimizer(self.net, settings)

    # -- exact resume --------------------------------------------------------

    def save_state(self, folder: str | Path, step: int, config) -> None:
        """Model, EMA, optimizer and step in one atomic file (config: what config.to_dict() records);
        in a distributed run every rank calls it and writes its shards (sharded_state.py)."""
        if self.ranks is not None:
            save_sharded(folder, step, self.model, self.ema, self.optimizer, config, self.ranks)
        elif self.main_process:  # without an EMA the file holds a copy of the model in its place
            ema = self.ema if self.ema is not None else copy.deepcopy(self.model)
            save_train_state(folder, step, self.model, ema, self.optimizer, config)
            remove_sharded_states(folder)  # an older distributed run's state, if this run continued it

    def resume(self, folder: str | Path) -> int:
        """Restore model, EMA and optimizer from folder's training state (the newer of the
        one-process file and the sharded state, saved on any world size); the step to continue
        from. A state written before parameter groups (one group of all parameters) is moved into them."""
        found = latest_state(folder)
        if found is not None and found[0] == "sharded":
            return load_sharded(folder, self.model, self.ema, self.optimizer)
        if self.ranks is not None:
            return load_file_on_ranks(folder, self.model, self.ema, self.optimizer, self.ranks)
        ema = self.ema if self.ema is not None else copy.deepcopy(self.model)
        path = Path(folder) / STATE_FILE
        with safe_open(str(path), "pt") as f:
            saved_groups = len(json.loads((f.metadata() or {}).get("param_groups", "[]")))
        if saved_groups == 1 and len(self.optimizer.param_groups) > 1:
            single = torch.optim.AdamW(list(self.model.parameters()), lr=self.settings.lr)
            step = load_train_state(folder, self.model, ema, single)
            for p, st in single.state.items():
                self.optimizer.state[p] = st
            return step
        return load_train_state(folder, self.model, ema, self.optimizer)

    # -- the steps -----------------------------------------------------------

    def run(self, loss_fn: LossFn, start: int = 0, end: int | None = None, log: TextIO | None = None,
            checkpoint: Callable[[int], None] | None = None, on_step: Callable[[int, float, dict], None] | None = None,
            after_step: Callable[[int], None] | None = None, on_budget: Callable[[int], None] | None = None,
            log_fields: Callable[[int], dict] | None = None) -> LoopResult:
        """Optimizer steps start .. end-1 (end: settings.steps). Per step, in this order:
        lr, loss_fn(step), backward, clip, AdamW step, EMA; then on_step(done, loss, stats)
        (stats: lr, grad_norm and loss_fn's extra fields); a non-finite loss raises; every
        log_every steps a JSON line to `log` ({step, loss, lr, grad_norm, sec_per_step, time}
        updated by log_fields(done)); every checkpoint_every steps and at the end
        checkpoint(done); after_step(done) (e.g. an evaluation); the time budget, which may
        lower settings.steps (then on_budget(new_steps)); the progress bar."""
        s, model, opt, ranks = self.settings, self.model, self.optimizer, self.ranks
        end = s.steps if end is None else min(end, s.steps)
        main = self.main_process
        # a sharded save is a collective: then every rank calls the hook (it writes only on rank 0)
        checkpoints_here = main or ranks is not None
        log = log if main else None
        bar = _Progress(s.progress and main, s.label, s.steps, start)
        budget = TimeBudget(s, start)
        loss_val, t_last, n_since = float("nan"), time.time(), 0
        try:
            for step in range(start, end):
                if step >= s.steps:  # the time budget cut the run
                    end = step
                    if checkpoint is not None and checkpoints_here:
                        checkpoint(end)
                    break
                lr = lr_at(step, s)
                for group in opt.param_groups:
                    group["lr"] = lr
                out = loss_fn(step)
                loss, extra = out if isinstance(out, tuple) else (out, {})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip) if s.grad_clip > 0 else None
                opt.step()
                if self.ema is not None:
                    update_ema(self.ema, model, ema_decay_at(step, s.ema_decay) if s.ema_warmup else s.ema_decay)
                # the global batch's loss (the same on every rank, so all stop together on a nan)
                loss_val = ranks.mean(loss) if ranks is not None else float(loss.detach())
                done = step + 1
                n_since += 1
                stats = {"lr": lr, "grad_norm": _norm_value(gnorm), **extra}
                if on_step is not None:
                    on_step(done, loss_val, stats)
                if not math.isfinite(loss_val):
                    raise NonFiniteLoss(f"loss became {loss_val} at step {done}")
                if log is not None and (done % s.log_every == 0 or done == end):
                    now = time.time()
                    row = {"step": done, "loss": loss_val, **stats, "sec_per_step": (now - t_last) / n_since, "time": now}
                    log.write(json.dumps({**row, **(log_fields(done) if log_fields else {})}) + "\n")
                    log.flush()
                    t_last, n_since = now, 0
                if checkpoint is not None and checkpoints_here and (
                        (s.checkpoint_every and done % s.checkpoint_every == 0) or done == end):
                    checkpoint(done)
                if after_step is not None:
                    after_step(done)
                if budget.update(done, ranks):
                    if log is not None:
                        log.write(json.dumps({"step": done, "time_budget_steps": s.steps}) + "\n")
                    if on_budget is not None:
                        on_budget(s.steps)
                    bar.set_total(s.steps)
                bar.update(done, loss_val)
        finally:
            bar.close()
        return LoopResult(steps=end, loss=loss_val)


class TimeBudget:
    """settings.time_budget_s: measure seconds per step in this call (data, logging,
    checkpoints and evals included) and cut settings.steps to what fits. The estimate is made
    after `probe` steps and refined every `probe` steps until the warmup-stable-decay
    cooldown begins; the cooldown then follows the new end. Past the budget the run ends."""

    probe = 200
    skip = 20  # the first steps are slow (worker start, kernel selection)

    def __init__(self, settings: TrainSettings, start: int):
        self.s = settings
        self.enabled = settings.time_budget_s > 0
        self.start, self.t0 = start, time.time()
        self.t_probe: float | None = None

    def update(self, done: int, ranks: Ranks | None = None) -> bool:
        """Called after step `done`; True when settings.steps changed. With ranks, every rank
        takes rank 0's step count (clocks differ; the ranks must stop at the same step)."""
        if ranks is not None and self.s.time_budget_s > 0:
            before = self.s.steps
            self._update(done)
            self.s.steps = ranks.from_rank0(self.s.steps)
            return self.s.steps != before
        return self._update(done)

    def _update(self, done: int) -> bool:
        if not self.enabled:
            return False
        s = self.s
        if time.time() - self.t0 > s.time_budget_s:  # over budget (a slow start, long evals): end here
            self.enabled, s.steps = False, done
            return True
        if done - self.start == self.skip:
            self.t_probe = time.time()
            return False
        if self.t_probe is None or (done - self.start - self.skip) % self.probe:
            return False
        cooldown = s.cooldown_steps or int(s.cooldown_fraction * s.steps)
        if done + self.probe >= s.steps - cooldown:
            self.enabled = False  # the decay has begun (or is about to): keep its end fixed
            return False
        rate = (time.time() - self.t_probe) / (done - self.start - self.skip)
        left = s.time_budget_s - (time.time() - self.t0)
        new = max(done, min(s.steps, done + int(0.98 * left / rate)))
        changed, s.steps = new != s.steps, new
        return changed


def _norm_value(gnorm: torch.Tensor | None) -> float | None:
    """clip_grad_norm_'s total norm as a float; under FSDP it is a DTensor (replicated), whose
    full_tensor() is the global norm."""
    if gnorm is None:
        return None
    return float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)


class _Progress:
    """A rich progress bar on stderr showing the loss (or nothing)."""

    def __init__(self, enabled: bool, label: str, total: int, start: int):
        self.p = None
        if enabled:
            # why here: rich costs ~0.1 s to import and only an interactive run draws a bar
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                              TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                              console=stderr_console(), transient=False)
            self.p.start()
            self.task = self.p.add_task(label, total=total, completed=start, loss="-")

    def set_total(self, total: int) -> None:
        if self.p:
            self.p.update(self.task, total=total)

    def update(self, done: int, loss: float) -> None:
        if self.p:
            self.p.update(self.task, completed=done, loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.p:
            self.p.stop()
