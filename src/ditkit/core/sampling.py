"""Pure ODE samplers for rectified flow, in the manner of k-diffusion.

Every sampler is a function
    sampler(velocity, x, ts, callback=None) -> x0
where `velocity(x, t) -> v` (t a python float in [0, 1]) is the only contract
with the model, `x` is the starting noise at ts[0] and `ts` decreases to 0. No
hidden state: all randomness comes from the caller's torch.Generator when it
draws `x`, so requests can run concurrently.

After each step the sampler calls callback(info) with a StepInfo dict, as
k-diffusion's samplers pass x, sigma and the denoised image:
    step   steps done (1 .. steps)          steps  the step count
    t      the time the step started from   x      the state at t, (B, C, H, W)
    x0     the model's denoised estimate at (x, t): x - t v for rectified flow
           (x_t = (1 - t) x0 + t eps, v = eps - x0), a live preview of the image.
x0 is computed only when a callback is given, and never feeds back into the step.
"""

from __future__ import annotations

import math
from typing import Callable, TypedDict

import torch

from ditkit.core.flow import shift_time

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


class StepInfo(TypedDict):
    """What a sampler reports after each step (see the module docstring)."""
    step: int
    steps: int
    t: float
    x: torch.Tensor
    x0: torch.Tensor


Callback = Callable[[StepInfo], None]


def _report(callback: Callback | None, step: int, steps: int, t: float, x: torch.Tensor, v: torch.Tensor) -> None:
    """Call back with the step's state and its denoised estimate x0 = x - t v."""
    if callback:
        callback({"step": step, "steps": steps, "t": t, "x": x, "x0": x - t * v})


def timesteps(steps: int, shift: float = 1.0, t_max: float = 1.0, t_min: float = 0.0) -> torch.Tensor:
    """steps + 1 times from t_max down to t_min, uniform then shifted (SD3 Eq. 23).

    This equals diffusers' FlowMatchEulerDiscreteScheduler with
    set_timesteps(sigmas=linspace(1, 1/n, n)) and the same shift. diffusers'
    default grid differs: it is uniform from 1 to shift(1e-3) (shifted twice)
    before the final 0, so its last step is tiny; ours spends steps evenly."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    return shift_time(ts, shift) if shift != 1.0 else ts


def sample_euler(velocity: Velocity, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """First-order Euler: x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)."""
    n = len(ts) - 1
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = velocity(x, t)
        x_next = x + (t_next - t) * v
        _report(callback, i + 1, n, t, x, v)
        x = x_next
    return x


def sample_heun(velocity: Velocity, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1): an Euler predictor,
    then the trapezoid rule. The last step to t = 0 is plain Euler, as in EDM,
    because the model is not evaluated at t = 0. 2 NFE per step except the last."""
    n = len(ts) - 1
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = velocity(x, t)
        x_pred = x + (t_next - t) * v
        if t_next > 0:
            x_next = x + (t_next - t) * 0.5 * (v + velocity(x_pred, t_next))
        else:
            x_next = x_pred
        _report(callback, i + 1, n, t, x, v)
        x = x_next
    return x


def _lambda(t: float) -> float:
    """Half log-SNR of the flow path: log(alpha_t / sigma_t) = log((1 - t) / t)."""
    t = min(max(t, 1e-12), 1 - 1e-12)
    return math.log(1 - t) - math.log(t)


def sample_dpm2m(velocity: Velocity, x: torch.Tensor, ts: torch.Tensor, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) written for the flow path
    alpha_t = 1 - t, sigma_t = t, on the data prediction x0 = x - t v.

    First-order step (exact for a constant x0):
        x_next = (t_next / t) x + ((1 - t_next) - (1 - t) t_next / t) * D
    with D = x0 for the first and last steps and, in between, the multistep
    correction D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i,
    h = lambda_next - lambda. One NFE per step."""
    n = len(ts) - 1
    x0_prev, h_prev = None, None
    for i in range(n):
        t, t_next = float(ts[i]), float(ts[i + 1])
        x0 = x - t * velocity(x, t)
        if t_next <= 0:
            x_next = x0
        else:
            h = _lambda(t_next) - _lambda(t)
            d = x0
            if x0_prev is not None and h_prev is not None and t < 1.0:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x_next = (t_next / t) * x + ((1 - t_next) - (1 - t) * t_next / t) * d
            h_prev = h if t < 1.0 else None
        x0_prev = x0
        if callback:  # x0 is already the data prediction here
            callback({"step": i + 1, "steps": n, "t": t, "x": x, "x0": x0})
        x = x_next
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpm2m": sample_dpm2m,
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)  # the one list of sampler names (config, CLI, errors)


def pure_noise_prior(velocity: Velocity, until: float, prior: Velocity | None = None) -> Velocity:
    """Take the first steps from the caption alone: for t >= until, query `prior` (default:
    the model itself) at t = 1 and move toward its x0 there, v = (x_t - x0) / t; below, the
    model as usual.

    Why: a model's first steps read the layout from the noise. Near t = 1 the faint image in
    x_t is mostly noise, and a model that reads it places objects where the noise happens
    to suggest, whatever the caption says ("left of" or "right of": docs/models.md). At
    t = 1 the input carries nothing, so a model trained there (train.pure_noise_fraction)
    predicts E[x0 | caption], the caption's mean layout, and ignores its input. Taking the
    steps above `until` from that prediction lays the caption's layout down first; the
    steps below draw the objects into it. A separate prior model trained only at t = 1 (a
    small "layout prior", as Kandinsky 2 and DALL-E 2 put a prior before their decoder)
    learns that mean far sooner than a fine-tune of the main model does (docs/models.md)."""
    if not 0.0 < until <= 1.0:
        raise ValueError(f"prior_until must be in (0, 1], got {until}")
    at_one = velocity if prior is None else prior

    def prior_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        if t < until:
            return velocity(x, t)
        x0 = x - at_one(x, 1.0)  # at t = 1, x_t = eps and v = eps - x0
        return (x - x0) / t

    return prior_velocity


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(velocity: Velocity, noise: torch.Tensor, sampler: str = "euler", steps: int = 20,
           shift: float = 1.0, callback: Callback | None = None) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (noise) to t = 0 (data)."""
    return get_sampler(sampler)(velocity, noise, timesteps(steps, shift), callback)


def nfe(sampler: str, steps: int) -> int:
    """Model evaluations a sampler spends for `steps` steps (before CFG doubling)."""
    get_sampler(sampler)
    return 2 * steps - 1 if sampler == "heun" else steps
