"""Guidance: closures that turn a conditional model into a velocity function.

    velocity = guided_velocity(model, cond, uncond, scale=4.0, apg=APG(), interval=(0.0, 1.0))
    x0 = sample_euler(velocity, noise, ts)

Classifier-free guidance (Ho & Salimans 2022) on every channel, with the
conditional and unconditional passes in one batched forward. APG (Sadat et
al., ICLR 2025, "Eliminating oversaturation and artifacts of high guidance
scales", Alg. 1) works in x0 space: the guidance update D_c - D_u is averaged
with (negative) momentum, its norm is capped, and it is split into a part
parallel to D_c (which causes over-saturation, weighted by eta) and an
orthogonal part (which improves quality). The guidance interval (Kynkäänniemi
et al., NeurIPS 2024) applies guidance only for t in [lo, hi] and runs the
conditional pass alone elsewhere.

Each call of guided_velocity returns a new closure with its own momentum
buffer: state lives for one generation only, never across requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ditkit.core.flow import velocity_from_x0, x0_from_velocity
from ditkit.core.precision import autocast

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
Context = tuple[torch.Tensor, torch.Tensor]  # (states (B, L, D), mask (B, L))


@dataclass(frozen=True)
class APG:
    """APG settings. eta: weight of the parallel component (0 = drop it, the paper's
    default); momentum: beta of the running average (the paper uses negative
    values); norm_threshold: cap on the update's RMS per image (the paper's r,
    divided by sqrt(C*H*W) so one value works at every size; 0 = no cap)."""
    eta: float = 0.0
    momentum: float = -0.5
    norm_threshold: float = 0.3


def pad_contexts(a: Context, b: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate two (states, mask) batches along the batch, padding to the longer length."""
    (sa, ma), (sb, mb) = a, b
    length = max(sa.shape[1], sb.shape[1])

    def pad(s: torch.Tensor, m: torch.Tensor):
        extra = length - s.shape[1]
        if extra:
            s = torch.cat([s, s.new_zeros(s.shape[0], extra, s.shape[2])], 1)
            m = torch.cat([m, m.new_zeros(m.shape[0], extra)], 1)
        return s, m

    sa, ma = pad(sa, ma)
    sb, mb = pad(sb, mb)
    return torch.cat([sa, sb]), torch.cat([ma, mb])


def autocast_for(precision: str, device: torch.device):
    """bf16 / fp16 autocast, or nothing (fp32, and int8 whose Linear layers are quantized)."""
    return autocast(precision, device)


def model_velocity(model: torch.nn.Module, context: Context, precision: str = "fp32") -> Velocity:
    """The conditional velocity v(x, t) of a DiT for a fixed batch of text states."""
    states, mask = context

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.float32)
        with torch.no_grad(), autocast_for(precision, x.device):
            v = model(x, tt, states, mask)
        return v.to(x.dtype)

    return velocity


def _project(diff: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split diff into parts parallel and orthogonal to ref, per sample over (C, H, W) (APG Eq. 8), in fp64."""
    dtype = diff.dtype
    d, r = diff.double(), ref.double()
    unit = torch.nn.functional.normalize(r.flatten(1), dim=1).view_as(r)
    par = (d * unit).flatten(1).sum(1).view(-1, *([1] * (d.ndim - 1))) * unit
    return par.to(dtype), (d - par).to(dtype)


def apg_update(d_cond: torch.Tensor, d_uncond: torch.Tensor, scale: float, apg: APG,
               buffer: dict) -> torch.Tensor:
    """APG (Sadat et al. 2025, Alg. 1) in x0 space; returns the guided x0. `buffer` holds the momentum."""
    diff = d_cond - d_uncond
    if apg.momentum != 0:
        avg = buffer.get("avg")
        diff = diff + apg.momentum * avg if avg is not None else diff
        buffer["avg"] = diff
    if apg.norm_threshold > 0:
        rms = diff.flatten(1).norm(dim=1) / diff[0].numel() ** 0.5
        factor = (apg.norm_threshold / rms.clamp_min(1e-12)).clamp(max=1.0)
        diff = diff * factor.view(-1, *([1] * (diff.ndim - 1)))
    par, orth = _project(diff, d_cond)
    return d_cond + (scale - 1) * (orth + apg.eta * par)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): v = v_u + s (v_c - v_u), on every channel.
    The one place the formula is written; samplers, distillation and pruning recovery call it."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided_velocity(model: torch.nn.Module, cond: Context, uncond: Context, scale: float,
                    apg: APG | None = None, interval: tuple[float, float] = (0.0, 1.0),
                    precision: str = "fp32") -> Velocity:
    """CFG (or APG) velocity. `cond` and `uncond` are (states, mask) for the same batch size B.
    scale = 1 is the conditional model; scale = 0 the unconditional one."""
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")
    lo, hi = interval
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got ({lo}, {hi})")
    conditional = model_velocity(model, cond, precision)
    if scale == 1.0:
        return conditional
    both_states, both_mask = pad_contexts(cond, uncond)
    both = model_velocity(model, (both_states, both_mask), precision)
    buffer: dict = {}  # APG momentum: per generation, since each call builds a new closure

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        if not lo <= t <= hi:
            return conditional(x, t)
        v_cond, v_uncond = both(torch.cat([x, x]), t).chunk(2)
        if apg is None:
            return cfg_combine(v_cond, v_uncond, scale)
        d_cond, d_uncond = x0_from_velocity(x, t, v_cond), x0_from_velocity(x, t, v_uncond)
        return velocity_from_x0(x, t, apg_update(d_cond, d_uncond, scale, apg, buffer))

    return velocity
