"""Recovery after pruning: a short fine-tune that distils the unpruned model's velocity into
the pruned one (SANA 1.5, Xie et al. 2025, Sec. 2.3), optionally on the states the guided
sampler actually visits (teacher_trajectories). The optimizer steps (warmup, decay, clipping,
EMA) are those of the one training loop, ditkit.training.loop; only the loss is defined here."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ditkit.core.guidance import cfg_combine
from ditkit.core.flow import interpolate, sample_time_logit_normal
from ditkit.core.model import DiT
from ditkit.core.precision import training_precision
from ditkit.core.sampling import sample_euler, timesteps
from ditkit.data import make_batch
from ditkit.engine.velocity import prompt_velocity
from ditkit.training.loop import TrainingLoop, TrainSettings, training_autocast

RECOVERY_TIMES = ("uniform", "logit-normal")
# prune_model's recovery recipe (recovery_tune's options; guidance "model" = the model's
# sampling guidance). Measured on shapes-64: docs/benchmarks.md, "Block pruning".
# Plain velocity distillation with the rate decayed linearly to 0 (and prune_model's lr 5e-5):
# with one block of shapes-64 removed, 2e-4 constant undid what the pruned model kept
# (0.575 -> 0.480 ShapesEval) where 5e-5 decayed recovered to 0.640; with two removed, it
# tied (0.52 vs 0.535; linear stand-ins 0.56 vs 0.515). The other options did not beat it.
DEFAULT_RECOVERY: dict = {"lr_decay": True}
RECOVERY_WARMUP = 20  # short linear warmup: the first steps see a fresh optimizer


def _run_blocks_recording(states: list):
    """A DiT block_runner that appends every block's output tokens (with their graph) to `states`."""
    def runner(blocks, tokens, block_args):
        for blk in blocks:
            tokens = blk(tokens, *block_args)
            states.append(tokens)
        return tokens
    return runner


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
    shapes-64 the gain is (docs/benchmarks.md, "Which blocks to remove").
    Returns {"x": (N, C, size, size) on the CPU, "t": (N,), "captions": [N]}."""
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
        inner = prompt_velocity(teacher, encoder, captions, guidance)

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
                  log_every: int = 50, callback: Callable[[int, int], None] | None = None,
                  kept: Sequence[int] | None = None, guidance: float = 0.0, feature_weight: float = 0.0,
                  times: str = "logit-normal", lr_decay: bool = False, ema_decay: float = 0.0,
                  trajectories=None, refresh_every: int = 0) -> list[dict]:
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
    warmup = RECOVERY_WARMUP
    settings = TrainSettings(steps=steps, lr=lr, warmup_steps=warmup, grad_clip=1.0,
                             # lr_decay: linear to zero over the steps after the warmup
                             cooldown_steps=steps - warmup if lr_decay and steps > warmup else 0,
                             ema_decay=ema_decay, ema_warmup=False, log_every=log_every)
    loop = TrainingLoop(student, settings)  # AdamW without weight decay (settings.weight_decay = 0)
    record_paths = trajectories if callable(trajectories) else None
    paths = None if record_paths is not None else trajectories
    features = feature_weight > 0

    def loss_fn(step: int) -> tuple[torch.Tensor, dict]:
        nonlocal paths
        if record_paths is not None and (step == 0 or (refresh_every and step % refresh_every == 0)):
            paths = record_paths(student)
        x0, captions = make_batch(dataset, seed + 70_001, step, batch_size, size)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        drop = torch.rand(len(captions), generator=g) < cfg_dropout
        eps = torch.randn(x0.shape, generator=g)
        if times == "uniform":
            t = torch.rand(len(captions), generator=g)
        else:
            t = sample_time_logit_normal(len(captions), generator=g)
        xt = interpolate(x0, eps, t)
        if paths is not None:  # the first half of the batch from the sampler's own paths
            pick = torch.randint(len(paths["t"]), (len(captions) // 2,), generator=g).tolist()
            xt[:len(pick)] = paths["x"][pick]
            t[:len(pick)] = paths["t"][pick]
            captions = [paths["captions"][j] for j in pick] + list(captions[len(pick):])
        if guidance > 1:  # each image with its caption, then without (the sampler's CFG batch)
            captions = list(captions) + [""] * len(captions)
            xt, t = torch.cat([xt, xt]), torch.cat([t, t])
        else:
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        ctx, mask = encoder.encode(captions, device)
        xt, t = xt.to(device), t.to(device)
        t_states: list[torch.Tensor] = []
        s_states: list[torch.Tensor] = []
        with torch.no_grad(), training_autocast(precision, device):
            target = teacher(xt, t, ctx, mask, block_runner=_run_blocks_recording(t_states) if features else None).float()
        with training_autocast(precision, device):
            v = loop.net(xt, t, ctx, mask, block_runner=_run_blocks_recording(s_states) if features else None).float()
        if guidance > 1:  # batch laid out as [conditional; unconditional]
            n = len(v) // 2
            loss = (torch.mean((v[n:] - target[n:]) ** 2)
                    + torch.mean((cfg_combine(v[:n], v[n:], guidance)
                                  - cfg_combine(target[:n], target[n:], guidance)) ** 2) / guidance**2)
        else:
            loss = torch.mean((v - target) ** 2)
        extra = {"velocity_loss": float(loss.detach())}
        if features:
            feat = sum(torch.mean((s.float() - t_states[i].float()) ** 2) / t_states[i].float().pow(2).mean().clamp_min(1e-8)
                       for s, i in zip(s_states, kept)) / len(s_states)
            loss = loss + feature_weight * feat
            extra["feature_loss"] = float(feat.detach())
        return loss, extra

    log: list[dict] = []

    def on_step(done: int, loss: float, stats: dict) -> None:
        if done % log_every == 0 or done == steps:
            entry = {"step": done, "velocity_loss": stats["velocity_loss"]}
            if features:
                entry["feature_loss"] = stats["feature_loss"]
            log.append({**entry, "distill_loss": loss})
        if callback:
            callback(done, steps)

    loop.run(loss_fn, on_step=on_step)
    if loop.ema is not None and steps:
        student.load_state_dict(loop.ema.state_dict())
    student.eval()
    return log
