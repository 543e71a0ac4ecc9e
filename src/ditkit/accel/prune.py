"""Block pruning for ditkit DiTs (SANA 1.5, Xie et al. 2025, Sec. 2.3; Razzhigaev et al.,
ACL 2024, Sec. 5): pick K whole blocks by a score, remove them (or replace them by a
fitted token-wise linear map), recover with a short fine-tune that distils the
original model's velocity, save a smaller self-describing checkpoint.

    from ditkit.accel.prune import prune_model
    result = prune_model("shapes-64", remove=2, by="influence", tune_steps=500, out_dir="pruned")

Scores (ditkit.analysis.linearity): `influence` removes the blocks whose output is most
similar to their input; `linearity` the most linear ones; `ablation` the ones
whose removal raises the validation flow-matching loss least (measured, so
the most faithful and the slowest).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ditkit.data import make_batch
from ditkit.core.flow import flow_loss, interpolate, sample_time_logit_normal
from ditkit.core.model import DiT
from ditkit.core.precision import training_precision

SELECTORS = ("influence", "linearity", "ablation")  # one score per block
# "benchmark" scores whole sets of removed blocks (benchmark_screen): on shapes-64 the
# per-block scores missed the best pair (docs/benchmarks.md, "Which blocks to remove").
PRUNE_SELECTORS = SELECTORS + ("benchmark",)


def _check_remove(model: DiT, remove: Sequence[int]) -> list[int]:
    depth = len(model.blocks)
    idx = sorted({int(i) for i in remove})
    if len(idx) != len(list(remove)):
        raise ValueError(f"block indices to remove must be distinct, got {list(remove)}")
    if any(not 0 <= i < depth for i in idx):
        raise ValueError(f"block indices must be in 0..{depth - 1}, got {list(remove)}")
    if len(idx) >= depth:
        raise ValueError(f"cannot remove {len(idx)} of {depth} blocks: at least one must stay (0 <= K < depth)")
    return idx


def check_k(k: int, depth: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < depth:
        raise ValueError(f"K (blocks to remove) must be an integer with 0 <= K < depth = {depth}, got {k!r}")


# ----------------------------------------------------------------------------
# structural surgery
# ----------------------------------------------------------------------------


def remove_blocks(model: DiT, remove: Sequence[int], linear_maps: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> DiT:
    """A new DiT without the given blocks; the other weights are copied exactly.

    linear_maps {block index: (A (W, W), b (W,))}: keep those blocks as LinearBlock
    x -> x A + b instead of dropping them (the depth then stays)."""
    idx = _check_remove(model, remove)
    linear_maps = linear_maps or {}
    if set(linear_maps) - set(idx):
        raise ValueError(f"linear maps given for blocks {sorted(set(linear_maps) - set(idx))} that are not removed")
    cfg = model.config
    keep = [i for i in range(cfg.depth) if i not in idx or i in linear_maps]
    new_linear = [keep.index(i) for i in keep if i in linear_maps or i in cfg.linear_blocks]
    new_cfg = replace(cfg, depth=len(keep), linear_blocks=tuple(new_linear))
    new = DiT(new_cfg).to(next(model.parameters()).device)
    state = model.state_dict()
    out = {}
    for k, v in state.items():
        if not k.startswith("blocks."):
            out[k] = v
            continue
        old_i, rest = k.split(".", 2)[1:]
        old_i = int(old_i)
        if old_i in keep and old_i not in linear_maps:
            out[f"blocks.{keep.index(old_i)}.{rest}"] = v
    for old_i, (a, b) in linear_maps.items():
        j = keep.index(old_i)
        out[f"blocks.{j}.linear.weight"] = a.T.contiguous().to(state["final_table"].dtype)
        out[f"blocks.{j}.linear.bias"] = b.to(state["final_table"].dtype)
    new.load_state_dict(out, strict=True)
    new.train(model.training)
    return new


class _Skip(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


@contextmanager
def skipping(model: DiT, blocks: Sequence[int]):
    """Temporarily replace blocks by the identity (an ablation without copying the model)."""
    saved = {i: model.blocks[i] for i in blocks}
    try:
        for i in blocks:
            model.blocks[i] = _Skip()
        yield model
    finally:
        for i, b in saved.items():
            model.blocks[i] = b


# ----------------------------------------------------------------------------
# data for calibration, validation and recovery
# ----------------------------------------------------------------------------


def _fixed_batches(encoder, dataset: str, size: int, batches: int, batch_size: int, seed: int,
                   device: torch.device):
    """Yields (x0, eps, t, context, mask) on device: held-out data (a seed training never uses)
    with fixed noise and logit-normal times, the same on every call."""
    for k in range(batches):
        x0, captions = make_batch(dataset, seed, k, batch_size, size)
        g = torch.Generator().manual_seed(seed * 31 + k)
        eps, t = torch.randn(x0.shape, generator=g), sample_time_logit_normal(len(x0), generator=g)
        ctx, mask = encoder.encode(captions, device)
        yield x0.to(device), eps.to(device), t.to(device), ctx, mask


@torch.no_grad()
def validation_loss(model: DiT, encoder, dataset: str, size: int, batches: int = 4, batch_size: int = 32,
                    seed: int = 90_001, precision: str = "fp32") -> float:
    """Flow-matching loss on fixed held-out batches (a seed training never uses), fixed noise and times."""
    from ditkit.core.guidance import autocast_for

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    total = 0.0
    try:
        for x0, eps, t, ctx, mask in _fixed_batches(encoder, dataset, size, batches, batch_size, seed, device):
            with autocast_for(precision, device):
                v = model(interpolate(x0, eps, t), t, ctx, mask)
            total += float(flow_loss(v.float(), x0, eps).mean())
    finally:
        model.train(was)
    return total / batches


def ablation_losses(model: DiT, encoder, dataset: str, size: int, batches: int = 4, batch_size: int = 32,
                    precision: str = "fp32") -> dict:
    """The measured effect of removing each block alone: validation loss with it skipped,
    minus the full model's. Returns {"base": float, "loss": [per block], "increase": [per block]}."""
    base = validation_loss(model, encoder, dataset, size, batches, batch_size, precision=precision)
    losses = []
    for i in range(len(model.blocks)):
        with skipping(model, [i]):
            losses.append(validation_loss(model, encoder, dataset, size, batches, batch_size, precision=precision))
    return {"base": base, "loss": losses, "increase": [x - base for x in losses]}


# ----------------------------------------------------------------------------
# choosing blocks
# ----------------------------------------------------------------------------


def removable_order(scores: dict, by: str) -> list[int]:
    """Block indices from most to least removable under a selector.

    scores: {"influence": [...], "linearity": [...], "ablation": [...]} per block (only
    the one named by `by` is needed). Low influence, high linearity and low ablation
    loss increase mean removable."""
    if by not in SELECTORS:
        raise ValueError(f"unknown selector {by!r}; allowed: {', '.join(SELECTORS)}")
    s = np.asarray(scores[by], dtype=np.float64)
    order = np.argsort(-s if by == "linearity" else s, kind="stable")
    return [int(i) for i in order]


def block_scores(model: DiT, encoder, by: str, dataset: str, size: int, prompts: Sequence[str],
                 num_timesteps: int = 8, precision: str = "fp32") -> dict:
    """The per-block score a selector needs: from ditkit.analysis.linearity (influence, linearity),
    or measured ablation losses."""
    if by not in SELECTORS:
        raise ValueError(f"unknown selector {by!r}; allowed: {', '.join(SELECTORS)}")
    if by == "ablation":
        return {"ablation": ablation_losses(model, encoder, dataset, size, precision=precision)["increase"]}
    from ditkit.analysis.linearity import analyze_dit

    res = analyze_dit(model, encoder, list(prompts), num_timesteps=num_timesteps)
    return {"influence": res["mean"]["influence"], "linearity": res["mean"]["linearity"]}


def benchmark_score(model: DiT, encoder, dataset: str, sample, per_category: int, seed: int) -> float:
    """The dataset's own benchmark at the model's sampling settings: ShapesEval overall for
    shapes, judge accuracy for digits."""
    from ditkit.evaluation.evaluate import digits_eval, shapes_eval

    _check_benchmark(dataset)
    if dataset == "shapes":
        return float(shapes_eval(model, encoder, sample, per_category, seed)["overall"])
    return float(digits_eval(model, encoder, sample, per_category, seed)["accuracy"])


def _check_benchmark(dataset: str) -> None:
    if dataset not in ("shapes", "digits"):
        raise ValueError(f"no benchmark for dataset {dataset!r} (shapes and digits have one); "
                         "choose blocks with --by influence, linearity or ablation")


def benchmark_screen(model: DiT, encoder, remove: int, dataset: str, size: int, sample,
                     linear_maps: dict | None = None, per_category: int = 10, seed: int = 1,
                     callback=None) -> dict:
    """Choose `remove` blocks by the benchmark itself, jointly: greedily add the block whose
    removal together with those already chosen (replaced by `linear_maps` stand-ins where
    given, else skipped) keeps the benchmark highest, before any recovery; ties go to the
    lower validation-loss increase. Per-block scores judge each block alone and by loss:
    on shapes-64 neither found blocks 1 and 7, which a screen of all 28 pairs by ShapesEval
    did, and the loss increase of the 28 pairs did not predict their ShapesEval (Spearman
    +0.23; docs/benchmarks.md, "Which blocks to remove"). The greedy search costs
    depth + (depth - 1) + ... evaluations instead of all subsets.

    seed 1 is ShapesEval's tuning seed: the reported seed 0 stays unseen.
    Returns {"chosen": sorted blocks, "rounds": [{block: {"benchmark", "loss_increase"}}]}."""
    depth = len(model.blocks)
    check_k(remove, depth)
    _check_benchmark(dataset)  # before any work
    if per_category < 1:
        raise ValueError(f"benchmark prompts per category must be >= 1, got {per_category}")
    base = validation_loss(model, encoder, dataset, size)
    chosen: list[int] = []
    rounds = []
    total = sum(depth - r for r in range(remove))
    done = 0
    for _ in range(remove):
        tried = {}
        for b in range(depth):
            if b in chosen:
                continue
            trial = sorted(chosen + [b])
            pruned = remove_blocks(model, trial, {i: linear_maps[i] for i in trial} if linear_maps else None).eval()
            tried[b] = {"benchmark": benchmark_score(pruned, encoder, dataset, sample, per_category, seed),
                        "loss_increase": validation_loss(pruned, encoder, dataset, size) - base}
            done += 1
            if callback:
                callback(done, total)
        best = max(tried, key=lambda b: (tried[b]["benchmark"], -tried[b]["loss_increase"]))
        chosen.append(best)
        rounds.append(tried)
    return {"chosen": sorted(chosen), "rounds": rounds, "per_category": per_category, "seed": seed}


# ----------------------------------------------------------------------------
# linear replacement and recovery
# ----------------------------------------------------------------------------


@torch.no_grad()
def fit_linear_maps(model: DiT, encoder, blocks: Sequence[int], dataset: str, size: int, batches: int = 4,
                    batch_size: int = 32, seed: int = 80_001, ridge: float = 1e-4) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Least-squares token-wise affine maps Y ≈ X A + b for each block, fitted on its
    inputs/outputs over noisy training-distribution inputs at logit-normal times.
    A small ridge term keeps the solve stable (the residual stream is rank-deficient early)."""
    device = next(model.parameters()).device
    inputs = ((interpolate(x0, eps, t), t, ctx, mask)
              for x0, eps, t, ctx, mask in _fixed_batches(encoder, dataset, size, batches, batch_size, seed, device))
    xs, ys = block_io_rows(model, inputs, blocks)
    return {i: solve_affine(xs[i], ys[i], ridge) for i in blocks}


@torch.no_grad()
def block_io_rows(model: DiT, inputs, blocks: Sequence[int]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Each listed block's input and output tokens, one row per token (float32, CPU), over
    `inputs`, an iterable of (x_t, t, context, mask) batches run through the model in eval mode."""
    from ditkit.analysis.linearity import block_io_hooks

    xs: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
    ys: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}

    def record(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if i in xs:
            xs[i].append(x.reshape(-1, x.shape[-1]))
            ys[i].append(y.reshape(-1, y.shape[-1]))

    was = model.training
    model.eval()
    try:
        with block_io_hooks(model, record):
            for xt, t, ctx, mask in inputs:
                model(xt, t, ctx, mask)
    finally:
        model.train(was)
    return {i: torch.cat(xs[i]) for i in blocks}, {i: torch.cat(ys[i]) for i in blocks}


def solve_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares for Y ≈ X A + b over token rows (float64 normal equations; the
    ridge is relative to the Gram matrix's mean diagonal). Returns (A, b) in float32."""
    x, y = x.double(), y.double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = x1.T @ x1
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    sol = torch.linalg.solve(gram, x1.T @ y)
    return sol[:-1].float(), sol[-1].float()


RECOVERY_TIMES = ("uniform", "logit-normal")
# prune_model's recovery recipe (recovery_tune's options; guidance "model" = the model's
# sampling guidance). Measured on shapes-64: docs/benchmarks.md, "Block pruning".
# Plain velocity distillation with the rate decayed linearly to 0 (and prune_model's lr 5e-5):
# with one block of shapes-64 removed, 2e-4 constant undid what the pruned model kept
# (0.575 -> 0.480 ShapesEval) where 5e-5 decayed recovered to 0.640; with two removed, it
# tied (0.52 vs 0.535; linear stand-ins 0.56 vs 0.515). The other options did not beat it.
DEFAULT_RECOVERY: dict = {"lr_decay": True}


def _run_blocks_recording(states: list):
    """A DiT block_runner that appends every block's output tokens (with their graph) to `states`."""
    def runner(blocks, tokens, block_args):
        for blk in blocks:
            tokens = blk(tokens, *block_args)
            states.append(tokens)
        return tokens
    return runner


def _guided(v: torch.Tensor, g: float) -> torch.Tensor:
    """CFG's velocity v_u + g (v_c - v_u) of a batch laid out as [conditional; unconditional]."""
    n = len(v) // 2
    return v[n:] + g * (v[:n] - v[n:])


def teacher_trajectories(teacher: DiT, encoder, dataset: str, size: int, images: int, guidance: float,
                         steps: int = 25, seed: int = 0, batch_size: int = 16, shift: float = 1.0,
                         above: float = 0.0) -> dict:
    """The states the sampler visits: Euler-`steps` CFG trajectories of the teacher from
    training captions (never evaluation prompts) and fresh noise, every (x_t, t) recorded.
    Forward noising x_t = (1-t) x0 + t eps samples only the data's own marginals, while a
    guided sampler drifts to states of its own (the model's errors and CFG's overshoot
    compound along the path); distilling there targets the errors the user actually sees
    (the on-policy argument of consistency/LCM-style distillation, applied to recovery).
    above: keep only the states with t >= above; 0.8 keeps the layout phase, where on
    shapes-64 the gain is (docs/benchmarks.md, "Which blocks to remove")."""
    from ditkit.core.guidance import guided_velocity
    from ditkit.core.sampling import sample_euler, timesteps

    if images < 1:
        raise ValueError(f"trajectory images must be >= 1, got {images}")
    if not 0.0 <= above < 1.0:
        raise ValueError(f"trajectory states kept above t = {above}: must be in [0, 1)")
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    schedule = timesteps(steps, shift)
    # Only the states at t >= above are kept, so the path stops after the last of them:
    # with above=0.8 that is 5 of 25 steps, a fifth of the cost (Euler is sequential, so
    # the kept states are the same as on the full path).
    schedule = schedule[:int((schedule[:-1] >= above).sum()) + 1]
    xs, ts, caps = [], [], []
    for b in range(0, images, batch_size):
        n = min(batch_size, images - b)
        _, captions = make_batch(dataset, seed + 90_001, b // batch_size, n, size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + 90_001 + b)
        noise = torch.randn((n, teacher.config.in_channels, size, size), generator=g).to(device)
        inner = guided_velocity(teacher, encoder.encode(list(captions), device), encoder.encode([""] * n, device), guidance)

        def recording(x: torch.Tensor, t: float, inner=inner, captions=captions) -> torch.Tensor:
            if t >= above:
                xs.append(x.detach().cpu())
                ts.append(torch.full((len(x),), float(t)))
                caps.extend(captions)
            return inner(x, t)

        with torch.no_grad():
            sample_euler(recording, noise, schedule)
    if was_training:
        teacher.train()
    return {"x": torch.cat(xs), "t": torch.cat(ts), "captions": caps}


def recovery_tune(student: DiT, teacher: DiT, encoder, dataset: str, size: int, steps: int, lr: float = 2e-4,
                  batch_size: int = 16, seed: int = 0, precision: str = "bf16", cfg_dropout: float = 0.1,
                  log_every: int = 50, callback=None, kept: Sequence[int] | None = None,
                  guidance: float = 0.0, feature_weight: float = 0.0, times: str = "logit-normal",
                  lr_decay: bool = False, ema_decay: float = 0.0, trajectories=None,
                  refresh_every: int = 0) -> list[dict]:
    """Distil the unpruned model's velocity into the pruned one on training-distribution
    inputs (SANA 1.5 recovers with a short fine-tune; matching the teacher's velocity
    rather than the data target keeps its behaviour, including its unconditional branch
    for CFG). Returns the loss log.

    Options (all off by default, which is the plain velocity distillation):
    - guidance > 1: every image is run with and without its caption, and the loss is the
      error of the unconditional velocity plus that of the guided velocity
      v_u + g (v_c - v_u) the sampler actually follows (divided by g^2); CFG multiplies
      the error of the difference by g, so this is where the pruned model must be exact.
    - feature_weight > 0 with `kept` (the teacher's index of each student block): also
      match each student block's output tokens to the teacher's output of the same block,
      normalised by the teacher's mean square (feature-level distillation, as BK-SDM does
      for pruned U-Nets); this tells each remaining block what to do, not only the head.
    - times: "uniform" matches the Euler sampler's uniform grid; "logit-normal" the trainer's.
    - lr_decay: linear decay to zero after the warmup, so the last iterate is not noisy.
    - ema_decay > 0: keep an EMA of the student and copy it in at the end (the teacher is
      itself an EMA model).
    - trajectories (from teacher_trajectories): half of every batch is states drawn from
      the teacher's own guided sampling paths instead of forward-noised data. A callable
      student -> such a dict instead records them from the student itself, at the start
      and every `refresh_every` steps (0: once): on-policy distillation, as DAgger
      (Ross et al., AISTATS 2011) corrects a learner on the states its own errors lead
      to; the target is still the teacher's velocity there."""
    from ditkit.training.train import training_autocast, update_ema

    if steps < 0:
        raise ValueError(f"tune steps must be >= 0, got {steps}")
    if times not in RECOVERY_TIMES:
        raise ValueError(f"unknown recovery time sampling {times!r}; allowed: {', '.join(RECOVERY_TIMES)}")
    if feature_weight > 0 and (kept is None or len(kept) != len(student.blocks)):
        raise ValueError("feature matching needs `kept`: the teacher's block index of every student block")
    if refresh_every < 0:
        raise ValueError(f"refresh_every must be >= 0, got {refresh_every}")
    device = next(student.parameters()).device
    precision = training_precision(precision, device)
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    ema = copy.deepcopy(student).requires_grad_(False) if ema_decay > 0 else None
    record_paths = trajectories if callable(trajectories) else None
    warmup = 20
    features = feature_weight > 0
    log = []
    for step in range(steps):
        if record_paths is not None and (step == 0 or (refresh_every and step % refresh_every == 0)):
            trajectories = record_paths(student)
        x0, captions = make_batch(dataset, seed + 70_001, step, batch_size, size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        drop = torch.rand(len(captions), generator=g) < cfg_dropout
        eps = torch.randn(x0.shape, generator=g)
        if times == "uniform":
            t = torch.rand(len(captions), generator=g)
        else:
            t = sample_time_logit_normal(len(captions), generator=g)
        xt = interpolate(x0, eps, t)
        if trajectories is not None:  # the first half of the batch from the sampler's own paths
            pick = torch.randint(len(trajectories["t"]), (len(captions) // 2,), generator=g).tolist()
            xt[:len(pick)] = trajectories["x"][pick]
            t[:len(pick)] = trajectories["t"][pick]
            captions = [trajectories["captions"][j] for j in pick] + list(captions[len(pick):])
        if guidance > 1:  # each image with its caption, then without (the sampler's CFG batch)
            captions = list(captions) + [""] * len(captions)
            xt, t = torch.cat([xt, xt]), torch.cat([t, t])
        else:
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        ctx, mask = encoder.encode(captions, device)
        xt, t = xt.to(device), t.to(device)
        scale = min(1.0, (step + 1) / warmup)  # short linear warmup: the first steps see a fresh optimizer
        if lr_decay and steps > warmup:
            scale *= min(1.0, (steps - step) / (steps - warmup))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        t_states: list[torch.Tensor] = []
        s_states: list[torch.Tensor] = []
        with torch.no_grad(), training_autocast(precision, device):
            target = teacher(xt, t, ctx, mask, block_runner=_run_blocks_recording(t_states) if features else None).float()
        with training_autocast(precision, device):
            v = student(xt, t, ctx, mask, block_runner=_run_blocks_recording(s_states) if features else None).float()
        if guidance > 1:
            n = len(v) // 2
            loss = (torch.mean((v[n:] - target[n:]) ** 2)
                    + torch.mean((_guided(v, guidance) - _guided(target, guidance)) ** 2) / guidance**2)
        else:
            loss = torch.mean((v - target) ** 2)
        entry = {"step": step + 1, "velocity_loss": float(loss.detach())}
        if features:
            feat = sum(torch.mean((s.float() - t_states[i].float()) ** 2) / t_states[i].float().pow(2).mean().clamp_min(1e-8)
                       for s, i in zip(s_states, kept)) / len(s_states)
            loss = loss + feature_weight * feat
            entry["feature_loss"] = float(feat.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if ema is not None:
            update_ema(ema, student, ema_decay)
        entry["distill_loss"] = float(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.append(entry)
        if callback:
            callback(step + 1, steps)
    if ema is not None and steps:
        student.load_state_dict(ema.state_dict())
    student.eval()
    return log


# ----------------------------------------------------------------------------
# the whole recipe
# ----------------------------------------------------------------------------


def default_calibration_prompts(dataset: str, n: int = 16) -> list[str]:
    from ditkit.data import benchmark_prompts

    prompts = benchmark_prompts(dataset, n, seed=777)
    if prompts is None:
        raise ValueError(f"no built-in calibration prompts for dataset {dataset!r}; pass prompts")
    return prompts


def prune_model(model: str | Path, remove: int, by: str = "influence", replace_linear: bool = False,
                tune_steps: int = 500, out_dir: str | Path | None = None, prompts: Sequence[str] | None = None,
                lr: float = 5e-5, batch_size: int = 16, precision: str = "bf16", device: str = "cpu",
                callback=None, recovery: dict | None = None, blocks: Sequence[int] | None = None,
                screen_callback=None, screen_per_category: int = 10) -> dict:
    """Remove `remove` blocks of a model folder / embedded model chosen by `by`, recover with
    `tune_steps` distillation steps, and save the result to out_dir (config.json +
    model.safetensors, recording what was removed). Returns a summary dict.

    recovery: recovery_tune options (guidance, feature_weight, times, lr_decay, ema_decay), plus
    trajectory_images: N to draw half of every batch from the teacher's own CFG paths for N
    training captions, and trajectory_above: T to keep only their states with t >= T
    (teacher_trajectories).

    by "benchmark": choose the blocks jointly by the model's own benchmark on its tuning
    seed (benchmark_screen with screen_per_category prompts per category; screen_callback(done,
    total) reports its evaluations).

    blocks: remove exactly these block indices instead (`remove` must then be their number
    or None). On shapes-64 a pair chosen by ShapesEval with linear stand-ins beat the pair
    that single-block ablation picks (docs/benchmarks.md, "Which blocks to remove")."""
    from ditkit.core.checkpoint import read_model_config, save_model
    from ditkit.api import load

    pipe = load(model, device=device)
    teacher = pipe.model.eval()
    depth = len(teacher.blocks)
    if blocks is not None:
        blocks = _check_remove(teacher, blocks)
        if remove is not None and remove != len(blocks):
            raise ValueError(f"remove={remove} does not match the {len(blocks)} blocks given ({blocks})")
        remove, by = len(blocks), "given"
    check_k(remove, depth)
    if by not in PRUNE_SELECTORS and blocks is None:
        raise ValueError(f"unknown selector {by!r}; allowed: {', '.join(PRUNE_SELECTORS)}")
    if tune_steps < 0:
        raise ValueError(f"tune steps must be >= 0, got {tune_steps}")
    if prompts is not None and not list(prompts):
        raise ValueError("the calibration prompts are empty")
    cfg = pipe.config
    data = cfg.get("data") or {}
    dataset, size = data.get("dataset"), int(data.get("size", pipe.defaults.size))
    if dataset is None:
        raise ValueError("this model does not record its training data (config.json 'data'); "
                         "pruning needs it for calibration and recovery")
    prompts = list(prompts) if prompts is not None else default_calibration_prompts(dataset)
    t0 = time.time()
    all_maps = None  # the stand-ins of every block, when the screen fits them
    if blocks is not None:
        scores, chosen = {}, blocks
    elif remove == 0:
        scores, order, chosen = {}, list(range(depth)), []
    elif by == "benchmark":
        all_maps = fit_linear_maps(teacher, pipe.text_encoder, range(depth), dataset, size) if replace_linear else None
        screen = benchmark_screen(teacher, pipe.text_encoder, remove, dataset, size, pipe.defaults, all_maps,
                                  per_category=screen_per_category, callback=screen_callback)
        scores, chosen = {"benchmark": screen}, screen["chosen"]
    else:
        scores = block_scores(teacher, pipe.text_encoder, by, dataset, size, prompts)
        order = removable_order(scores, by)
        chosen = sorted(order[:remove])
    if not (replace_linear and chosen):
        maps = None
    elif all_maps is not None:  # each block's fit is independent of the others: reuse the screen's
        maps = {i: all_maps[i] for i in chosen}
    else:
        maps = fit_linear_maps(teacher, pipe.text_encoder, chosen, dataset, size)
    student = remove_blocks(teacher, chosen, maps)
    score_seconds = time.time() - t0
    t1 = time.time()
    kept = [i for i in range(depth) if i not in chosen or maps]  # the teacher block behind each student block
    options = {**DEFAULT_RECOVERY, **(recovery or {})}
    if options.get("guidance") == "model":
        options["guidance"] = pipe.defaults.guidance
    images = options.pop("trajectory_images", 0)
    above = options.pop("trajectory_above", 0.0)
    paths = None
    if images and chosen and tune_steps:  # recorded at the model's own sampling settings
        paths = teacher_trajectories(teacher, pipe.text_encoder, dataset, size, images, pipe.defaults.guidance,
                                     pipe.defaults.steps, shift=pipe.defaults.shift, above=above)
    log = recovery_tune(student, teacher, pipe.text_encoder, dataset, size, tune_steps, lr=lr,
                        batch_size=batch_size, precision=precision, callback=callback, kept=kept,
                        trajectories=paths, **options) if chosen else []
    if images:
        options.update(trajectory_images=images, trajectory_above=above)
    tune_seconds = time.time() - t1
    summary = {"source": pipe.source, "removed_blocks": chosen, "by": by, "replace_linear": bool(replace_linear),
               "depth_before": depth, "depth_after": len(student.blocks),
               "parameters_before": sum(p.numel() for p in teacher.parameters()),
               "parameters_after": sum(p.numel() for p in student.parameters()),
               "tune_steps": tune_steps if chosen else 0, "tune_seconds": tune_seconds, "recovery": options if chosen else {},
               "score_seconds": score_seconds, "scores": scores, "tune_log": log}
    if out_dir is not None:
        src = read_model_config(Path(pipe.source))
        extra = {k: v for k, v in src.items() if k not in ("model", "sample", "text_encoder", "format")}
        extra["pruning"] = {k: summary[k] for k in ("source", "removed_blocks", "by", "replace_linear",
                                                    "depth_before", "tune_steps")}
        save_model(out_dir, student, sample=pipe.defaults, text_encoder=cfg.get("text_encoder", "minilm"), extra=extra)
        summary["out_dir"] = str(out_dir)
    summary["model"] = student
    return summary


# ----------------------------------------------------------------------------
# diffusers transformers (PixArtTransformer2DModel, SD3Transformer2DModel)
# ----------------------------------------------------------------------------


def remove_diffusers_blocks(transformer: nn.Module, remove: Sequence[int]) -> nn.Module:
    """A copy of a diffusers transformer without the given `transformer_blocks`; its config's
    num_layers is updated so save_pretrained / from_pretrained round-trip."""
    from ditkit.analysis.linearity import find_blocks

    blocks = find_blocks(transformer)
    depth = len(blocks)
    idx = sorted({int(i) for i in remove})
    if any(not 0 <= i < depth for i in idx) or len(idx) >= depth:
        raise ValueError(f"block indices must be distinct, in 0..{depth - 1}, and leave at least one block; got {list(remove)}")
    new = copy.deepcopy(transformer)
    new.transformer_blocks = nn.ModuleList(b for i, b in enumerate(new.transformer_blocks) if i not in idx)
    new.register_to_config(num_layers=len(new.transformer_blocks))
    return new


def _diffusers_out(transformer: nn.Module, inputs: dict, t: torch.Tensor) -> torch.Tensor:
    return transformer(**{**inputs, "timestep": t}, return_dict=False)[0]


def diffusers_ablation(transformer: nn.Module, inputs: dict) -> list[float]:
    """Data-free ablation: mean squared change of the model output over the calibration
    time bins when each block alone is skipped."""
    from ditkit.analysis.linearity import find_blocks

    blocks = find_blocks(transformer)
    batch = inputs["hidden_states"].shape[0]
    ts = [torch.full((batch,), float(t)) for t in inputs["timestep"]]
    with torch.no_grad():
        ref = [_diffusers_out(transformer, inputs, t) for t in ts]
        costs = []
        for i in range(len(blocks)):
            keep = transformer.transformer_blocks
            transformer.transformer_blocks = nn.ModuleList(b for j, b in enumerate(keep) if j != i)
            try:
                costs.append(float(sum(torch.mean((_diffusers_out(transformer, inputs, t) - r) ** 2)
                                       for t, r in zip(ts, ref)) / len(ts)))
            finally:
                transformer.transformer_blocks = keep
    return costs


def prune_diffusers(path: str | Path, remove: int, by: str = "influence", tune_steps: int = 100,
                    out_dir: str | Path | None = None, lr: float = 1e-4, seed: int = 0, callback=None) -> dict:
    """Prune a diffusers transformer folder (save_pretrained layout) with the same selectors.

    No training data travels with a bare transformer, so scoring, ablation and recovery are
    data-free: Gaussian latents and text states over the time bins (analysis.calibration_inputs),
    and recovery distils the unpruned model's output at random times on fresh Gaussian inputs.
    With real latents and prompt embeddings, call analyze_diffusers / remove_diffusers_blocks directly."""
    from ditkit.analysis.linearity import analyze_diffusers, calibration_inputs, find_blocks, load_diffusers_transformer

    teacher = load_diffusers_transformer(path)
    depth = len(find_blocks(teacher))
    check_k(remove, depth)
    if by not in SELECTORS:
        raise ValueError(f"unknown selector {by!r}; allowed: {', '.join(SELECTORS)}")
    if tune_steps < 0:
        raise ValueError(f"tune steps must be >= 0, got {tune_steps}")
    inputs = calibration_inputs(teacher, seed=seed)
    if by == "ablation":
        scores = {"ablation": diffusers_ablation(teacher, inputs)}
    else:
        scores = {k: v for k, v in analyze_diffusers(teacher, inputs)["mean"].items() if k in ("influence", "linearity")}
    chosen = sorted(removable_order(scores, by)[:remove]) if remove else []
    student = remove_diffusers_blocks(teacher, chosen)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    log = []
    for step in range(tune_steps if chosen else 0):
        fresh = calibration_inputs(teacher, num_timesteps=1, seed=seed + 1000 + step)
        t = torch.rand(fresh["hidden_states"].shape[0], generator=g) * 1000
        with torch.no_grad():
            target = _diffusers_out(teacher, fresh, t)
        loss = torch.mean((_diffusers_out(student, fresh, t) - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"step": step + 1, "distill_loss": float(loss.detach())})
        if callback:
            callback(step + 1, tune_steps)
    student.eval()
    summary = {"source": str(path), "removed_blocks": chosen, "by": by, "depth_before": depth,
               "depth_after": len(student.transformer_blocks),
               "parameters_before": sum(p.numel() for p in teacher.parameters()),
               "parameters_after": sum(p.numel() for p in student.parameters()),
               "tune_steps": tune_steps if chosen else 0, "scores": scores, "tune_log": log[-5:]}
    if out_dir is not None:
        student.save_pretrained(str(out_dir))
        summary["out_dir"] = str(out_dir)
    summary["model"] = student
    return summary
