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
    """Broadcast a (B,) or scalar time against x (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


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


def flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample conditional flow-matching loss ||v_pred - (eps - x0)||^2, mean over
    all but the batch dimension (SD3 Eq. 7 with uniform weighting in v). Returns (B,)."""
    err = (v_pred.float() - velocity_target(x0, eps).float()) ** 2
    return err.flatten(1).mean(1)
