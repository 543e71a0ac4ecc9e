"""ditkit's Euler sampler against diffusers' FlowMatchEulerDiscreteScheduler (the peer).

diffusers' `sigmas` are ditkit's t (both: x_t = (1 - t) x0 + t eps, model predicts eps - x0).
The scheduler is built locally; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditkit.core.flow import shift_time
from ditkit.core.sampling import sample_euler, timesteps

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402


def analytic_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """A fixed nonlinear velocity field standing in for a model."""
    return torch.tanh(x) * (1.0 + t) - 0.3 * x * t**2 + 0.1 * torch.cos(3 * x + t)


def _diffusers_trajectory(scheduler, x: torch.Tensor) -> list[torch.Tensor]:
    """The usual diffusers denoising loop; the model sees sigma = timestep / 1000 (what it was trained on)."""
    states = [x]
    for i, step_t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        x = scheduler.step(analytic_velocity(x, sigma), step_t, x).prev_sample
        states.append(x)
    return states


def _ditkit_trajectory(x: torch.Tensor, ts: torch.Tensor) -> list[torch.Tensor]:
    states = []

    def velocity(x, t):
        states.append(x)
        return analytic_velocity(x, t)

    states.append(sample_euler(velocity, x, ts))
    return states


def _noise():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 10, 28])
def test_euler_reproduces_the_diffusers_trajectory_on_its_grid(shift, steps):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    ts = scheduler.sigmas.double()  # steps + 1 values ending in 0
    assert len(ts) == steps + 1 and ts[-1] == 0
    ref = _diffusers_trajectory(scheduler, _noise())
    ours = _ditkit_trajectory(_noise(), ts)
    assert len(ours) == len(ref) == steps + 1
    for i, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=lambda m: f"step {i}: {m}")


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 10, 28])
def test_ditkit_grid_is_diffusers_with_uniform_sigmas(shift, steps):
    """ditkit's grid = diffusers given sigmas linspace(1, 1/n, n): the scheduler shifts them once and appends 0."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist())
    torch.testing.assert_close(scheduler.sigmas.double(), timesteps(steps, shift), rtol=0, atol=1e-6)
    ref = _diffusers_trajectory(scheduler, _noise())
    ours = _ditkit_trajectory(_noise(), timesteps(steps, shift))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 28])
def test_diffusers_default_grid_formula(shift, steps):
    """Pins down diffusers' default grid, for the record: n points from 1 to shift(1/1000) (the
    scheduler's sigma_min, already shifted in __init__), shifted *again*, then a final 0.
    So its last non-zero sigma is shift(shift(1/1000)), not shift(1/n) as in ditkit."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    sigma_min = shift_time(torch.tensor(1 / 1000, dtype=torch.float64), shift)
    expected = torch.cat([shift_time(torch.linspace(1.0, float(sigma_min), steps, dtype=torch.float64), shift),
                          torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(scheduler.sigmas.double(), expected, rtol=0, atol=1e-6)



def test_shift_matches_diffusers_static_shift():
    """ditkit.core.flow.shift_time is the scheduler's static (non-dynamic) shift of its training sigmas."""
    for shift in (0.5, 1.0, 3.0, 6.0):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        unshifted = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
        torch.testing.assert_close(scheduler.sigmas.double(), shift_time(unshifted, shift), rtol=0, atol=1e-6)
