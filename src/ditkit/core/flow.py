"""Rectified flow, the pure math (Liu et al. 2022; Esser et al. 2024, "SD3").

Conventions, written once for all of ditkit:
    t = 0 is data, t = 1 is noise
    x_t = (1 - t) x0 + t eps                       (SD3 Eq. 1 with a_t = 1 - t, b_t = t)
    v   = dx_t/dt = eps - x0                       (the regression target)
    x0  = x_t - t v,    eps = x_t + (1 - t) v       (conversions used by guidance and samplers)
"""

from __future__ import annotations

import math

import torch


def _bt(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar, (B,) or leading-dims time (a clip's per-frame (B, F)) against x (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim))) if t.ndim else t


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps."""
    t = _bt(t, x0)
    return (1 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def x0_from_velocity(x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x - _bt(t, x) * v


def eps_from_velocity(x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x + (1 - _bt(t, x)) * v


def velocity_from_x0(x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Inverse of x0_from_velocity; t must be > 0."""
    return (x - x0) / _bt(t, x).clamp_min(1e-8)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution-dependent timestep shift (Esser et al. 2024, Eq. 23):
    t' = s t / (1 + (s - 1) t). s > 1 spends more time near noise, which larger
    images need because they keep more signal at a given noise level."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (shift * t + (1 - t))  # = s t / (1 + (s - 1) t), exact at t = 0 and 1


def shift_for_resolution(height: int, width: int, base_size: int, base_shift: float = 1.0) -> float:
    """SD3 Sec. 5.3.2: the shift grows with sqrt(pixels / base pixels)."""
    return base_shift * math.sqrt((height * width) / float(base_size * base_size))


def sample_time_logit_normal(n: int, mean: float = 0.0, std: float = 1.0,
                             generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logit-normal training times (SD3 Sec. 3.1, Eq. 19): t = sigmoid(u), u ~ N(mean, std).
    Puts more weight on intermediate times, where the velocity is hardest to predict."""
    u = torch.randn(n, generator=generator, device=device) * std + mean
    return torch.sigmoid(u)


def flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
              target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample conditional flow-matching loss ||v_pred - (eps - x0)||^2, mean over
    all but the batch dimension (SD3 Eq. 7 with uniform weighting in v). Returns (B,).
    `target` replaces eps - x0 (a lower-variance estimate of the same expectation)."""
    target = velocity_target(x0, eps) if target is None else target
    err = (v_pred.float() - target.float()) ** 2
    return err.flatten(1).mean(1)


def posterior_mean_x0(x_t: torch.Tensor, t: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] over a reference set: the Stable Target Field estimator (Xu et al.,
    ICLR 2023, Eq. 6) in rectified-flow form.

    candidates: (B, K, C, H, W), images drawn from the same conditional distribution as
    the x0 that made x_t (candidate 0 should be that x0 itself). Each is weighted by the
    likelihood of x_t under it, N(x_t; (1 - t) x0_k, t^2 I). At high t the weights are
    nearly uniform and the estimate is the mean of the set, a target whose variance is
    about 1/K of a single x0's; as t falls they concentrate on the x0 that made x_t.
    """
    tb = t.view(-1, 1).to(torch.float64)
    diff = (x_t.unsqueeze(1) - (1 - tb.view(-1, 1, 1, 1, 1)) * candidates).to(torch.float64)
    log_w = -diff.pow(2).flatten(2).sum(2) / (2 * tb.clamp_min(1e-4) ** 2)  # (B, K)
    w = torch.softmax(log_w, dim=1).to(candidates.dtype)
    return torch.einsum("bk,bkchw->bchw", w, candidates)


def velocity_target_from_x0_estimate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                                     x0_estimate: torch.Tensor) -> torch.Tensor:
    """The velocity that points from x_t = (1 - t) x0 + t eps to an estimate of x0,
    (x_t - x0_estimate) / t, written as eps - x0 + (x0 - x0_estimate) / t so that it is
    exactly velocity_target(x0, eps) wherever the estimate is x0 itself."""
    return eps - x0 + (x0 - x0_estimate) / _bt(t, x0).clamp_min(1e-4)
