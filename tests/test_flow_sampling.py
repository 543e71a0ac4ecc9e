"""Rectified-flow math and the samplers, checked against the exact flow between
N(0, 1) noise and Gaussian data, whose velocity field is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from ditkit.core import flow
from ditkit.core.guidance import model_velocity
from ditkit.engine.generate import generate_tensor, initial_noise
from ditkit.core.config import SampleConfig
from ditkit.core.sampling import SAMPLERS, get_sampler, nfe, sample, sample_dpm2m, sample_euler, sample_heun, timesteps

# ----------------------------------------------------------------------------
# flow.py
# ----------------------------------------------------------------------------


def test_interpolate_endpoints_and_velocity_is_the_time_derivative():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    assert torch.equal(flow.interpolate(x0, eps, torch.zeros(3)), x0)
    assert torch.equal(flow.interpolate(x0, eps, torch.ones(3)), eps)
    t, h = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64), 1e-3
    x0d, epsd = x0.double(), eps.double()
    deriv = (flow.interpolate(x0d, epsd, t + h) - flow.interpolate(x0d, epsd, t - h)) / (2 * h)
    torch.testing.assert_close(deriv, flow.velocity_target(x0d, epsd))


@pytest.mark.parametrize("t", [torch.tensor([0.1, 0.5, 0.9]), torch.tensor(0.3), 0.6])
def test_velocity_x0_eps_conversions_are_consistent(t):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    xt = flow.interpolate(x0, eps, t)
    v = flow.velocity_target(x0, eps)
    torch.testing.assert_close(flow.x0_from_velocity(xt, t, v), x0)
    torch.testing.assert_close(flow.eps_from_velocity(xt, t, v), eps)
    torch.testing.assert_close(flow.velocity_from_x0(xt, t, x0), v)
    # per-sample times broadcast per sample, not per channel
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        for i in range(3):
            torch.testing.assert_close(xt[i], (1 - t[i]) * x0[i] + t[i] * eps[i])


def test_flow_loss_is_per_sample_mse_to_the_velocity():
    g = torch.Generator().manual_seed(2)
    x0, eps, v = (torch.randn(4, 3, 4, 4, generator=g) for _ in range(3))
    loss = flow.flow_loss(v, x0, eps)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, ((v - (eps - x0)) ** 2).mean(dim=(1, 2, 3)))
    assert torch.count_nonzero(flow.flow_loss(eps - x0, x0, eps)) == 0


@pytest.mark.parametrize("shift", [0.3, 1.0, 2.0, 3.0, 10.0])
def test_shift_time_endpoints_fixed_and_monotone(shift):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    s = flow.shift_time(t, shift)
    assert s[0] == 0
    torch.testing.assert_close(s[-1], t[-1], rtol=0, atol=1e-15)  # exact for shift >= 1; see test_timesteps_grid
    assert (s.diff() > 0).all()
    if shift > 1:
        assert (s[1:-1] > t[1:-1]).all()  # more time near noise
    elif shift < 1:
        assert (s[1:-1] < t[1:-1]).all()
    else:
        assert torch.equal(s, t)
    # shifting by a then b is shifting by a * b (a Moebius map family)
    torch.testing.assert_close(flow.shift_time(flow.shift_time(t, shift), 2.0), flow.shift_time(t, 2.0 * shift))


def test_shift_time_rejects_non_positive_shift():
    with pytest.raises(ValueError, match="shift"):
        flow.shift_time(torch.tensor([0.5]), 0.0)


def test_logit_normal_times_are_in_open_unit_interval_and_seeded():
    t1 = flow.sample_time_logit_normal(1000, generator=torch.Generator().manual_seed(0))
    t2 = flow.sample_time_logit_normal(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2)
    assert ((t1 > 0) & (t1 < 1)).all()
    assert abs(float(t1.median()) - 0.5) < 0.05


# ----------------------------------------------------------------------------
# timesteps
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 7, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_timesteps_grid(steps, shift):
    ts = timesteps(steps, shift)
    assert len(ts) == steps + 1
    assert ts[0] == 1.0 and ts[-1] == 0.0
    assert (ts.diff() < 0).all()
    torch.testing.assert_close(ts, flow.shift_time(torch.linspace(1, 0, steps + 1, dtype=torch.float64), shift))


def test_timesteps_partial_range():
    ts = timesteps(4, 1.0, t_max=0.6, t_min=0.2)
    torch.testing.assert_close(ts, torch.tensor([0.6, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64))


@pytest.mark.parametrize("steps", [0, -3])
def test_timesteps_rejects_fewer_than_one_step(steps):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        timesteps(steps)


# ----------------------------------------------------------------------------
# samplers on the exact Gaussian flow
# ----------------------------------------------------------------------------

MU = torch.tensor([2.0, -1.0, 0.5, 0.0], dtype=torch.float64)
STD = torch.tensor([0.5, 1.5, 1.0, 0.2], dtype=torch.float64)


def gaussian_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """Marginal velocity E[eps - x0 | x_t = x] of x_t = (1-t) x0 + t eps, x0 ~ N(MU, STD^2), eps ~ N(0, 1).

    Per dimension x_t ~ N(m_t, var_t), m_t = (1-t) MU, var_t = (1-t)^2 STD^2 + t^2, and by Gaussian
    conditioning E[x0 | x] = MU + (1-t) STD^2 (x - m_t) / var_t, E[eps | x] = t (x - m_t) / var_t."""
    var = (1 - t) ** 2 * STD**2 + t**2
    m = (1 - t) * MU
    e_x0 = MU + (1 - t) * STD**2 * (x - m) / var
    e_eps = t * (x - m) / var
    return e_eps - e_x0


def _noise(n: int = 20000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _error(sampler, steps: int, shift: float = 1.0) -> float:
    """RMS distance to the exact ODE solution. The exact flow map of this linear field is
    x_0 = MU + STD * z for the noise z, so this measures pure discretisation error."""
    z = _noise(4000)
    x = sampler(gaussian_velocity, z, timesteps(steps, shift))
    return float(((x - (MU + STD * z)) ** 2).mean().sqrt())


def test_gaussian_velocity_is_the_exact_flow():
    """Sanity check of the test's own field: it transports N(m_t, var_t) along x_t = m_t + sqrt(var_t) z."""
    z = _noise(10)
    for t in (0.1, 0.5, 0.9):
        h = 1e-5
        path = lambda s: (1 - s) * MU + torch.sqrt((1 - s) ** 2 * STD**2 + s**2) * z  # noqa: E731
        x = path(t)
        torch.testing.assert_close(gaussian_velocity(x, t), (path(t + h) - path(t - h)) / (2 * h))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_recovers_the_target_gaussian(name):
    x = get_sampler(name)(gaussian_velocity, _noise(), timesteps(100))
    torch.testing.assert_close(x.mean(0), MU, rtol=0, atol=0.03)
    torch.testing.assert_close(x.std(0), STD, rtol=0.05, atol=0.0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_recovers_the_target_with_shift(name):
    x = sample(gaussian_velocity, _noise(), sampler=name, steps=100, shift=3.0)
    torch.testing.assert_close(x.mean(0), MU, rtol=0, atol=0.03)
    # shift 3 leaves Euler fewer steps near the data, where the narrowest dimension (std 0.2) is decided
    torch.testing.assert_close(x.std(0), STD, rtol=0.03, atol=0.015)


@pytest.mark.parametrize("steps", [4, 8])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_higher_order_samplers_beat_euler_at_equal_steps(steps, shift):
    euler = _error(sample_euler, steps, shift)
    assert _error(sample_heun, steps, shift) < 0.8 * euler
    assert _error(sample_dpm2m, steps, shift) < 0.9 * euler


def test_convergence_orders():
    """Halving the step size halves Euler's error (order 1) and quarters Heun's (order 2).
    DPM-Solver++(2M) on a uniform-in-t grid converges at an empirical order of ~1.3-1.7 in this
    range (its lambda steps near t = 0 and t = 1 do not shrink), but is an order of magnitude
    more accurate than Euler at 32 steps."""
    def order(s):
        return math.log2(_error(s, 16) / _error(s, 32))

    assert 0.8 < order(sample_euler) < 1.2
    assert order(sample_heun) > 1.8
    assert _error(sample_dpm2m, 32) < 0.1 * _error(sample_euler, 32)


def test_one_euler_step_from_pure_noise_lands_on_the_data_mean():
    """At t = 1 the optimal x0 prediction is the data mean; a single step goes there."""
    x = sample_euler(gaussian_velocity, _noise(100), timesteps(1))
    torch.testing.assert_close(x, MU.expand(100, 4))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_nfe_and_callback(name):
    calls, progress = [], []

    def velocity(x, t):
        assert isinstance(t, float) and 0 < t <= 1  # the model is never asked about t = 0
        calls.append(t)
        return gaussian_velocity(x, t)

    x = get_sampler(name)(velocity, _noise(8), timesteps(5), progress.append)
    assert len(calls) == nfe(name, 5)
    assert [(p["step"], p["steps"]) for p in progress] == [(i, 5) for i in range(1, 6)]
    assert all(set(p) == {"step", "steps", "t", "x", "x0"} for p in progress)
    assert [p["t"] for p in progress] == [float(t) for t in timesteps(5)[:-1]]
    for p in progress:  # x0 is the denoised estimate at the step's start: x - t v(x, t)
        torch.testing.assert_close(p["x0"], p["x"] - p["t"] * gaussian_velocity(p["x"], p["t"]))
    assert torch.equal(progress[0]["x"], _noise(8))
    if name in ("euler", "dpm2m"):  # their last step lands on x0 exactly
        assert torch.equal(progress[-1]["x0"], x)


def test_callback_does_not_change_the_samples():
    for name in SAMPLERS:
        plain = get_sampler(name)(gaussian_velocity, _noise(8), timesteps(4, 3.0))
        watched = get_sampler(name)(gaussian_velocity, _noise(8), timesteps(4, 3.0), lambda info: None)
        assert torch.equal(plain, watched)


def test_unknown_sampler_lists_options():
    with pytest.raises(ValueError) as e:
        get_sampler("ddim")
    assert "'ddim'" in str(e.value) and all(k in str(e.value) for k in SAMPLERS)
    with pytest.raises(ValueError, match="euler"):
        sample(gaussian_velocity, _noise(2), sampler="ddim")
    with pytest.raises(ValueError, match="euler"):
        nfe("ddim", 4)


# ----------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_result(tiny_model, context, name):
    states, mask = context(2, 5, 16, lengths=[3, 5])
    velocity = model_velocity(tiny_model, (states, mask))

    def run(seed):
        noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        return get_sampler(name)(velocity, noise, timesteps(3))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


class _FakeEncoder:
    """Deterministic text states without loading a language model: hash of each word."""

    dim = 16

    def encode(self, prompts, device=None):
        seqs = []
        for p in prompts:
            words = p.split() or ["<empty>"]
            seqs.append(torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, w))))
                                     for w in words]))
        length = max(len(s) for s in seqs)
        states = torch.zeros(len(seqs), length, self.dim)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool)
        for i, s in enumerate(seqs):
            states[i, :len(s)], mask[i, :len(s)] = s, True
        return states, mask


@pytest.mark.parametrize("sampler", ["euler", "dpm2m"])
def test_pipeline_same_seed_same_image_independent_of_batch(tiny_model, sampler):
    cfg = SampleConfig(sampler=sampler, steps=3, guidance=3.0, size=16)
    enc = _FakeEncoder()
    a = generate_tensor(tiny_model, enc, ["red circle", "a blue square on top"], cfg, seed=5)
    b = generate_tensor(tiny_model, enc, ["red circle", "a blue square on top"], cfg, seed=5)
    assert torch.equal(a, b)
    # image i uses seed + i, whatever else is in the batch
    alone = generate_tensor(tiny_model, enc, ["a blue square on top"], cfg, seed=6)
    torch.testing.assert_close(alone[0], a[1], rtol=0, atol=1e-5)
    chunked = generate_tensor(tiny_model, enc, ["red circle", "a blue square on top"], cfg, seed=5, batch_size=1)
    torch.testing.assert_close(chunked, a, rtol=0, atol=1e-5)
    assert not torch.allclose(generate_tensor(tiny_model, enc, ["red circle"], cfg, seed=6)[0], a[0])


def test_initial_noise_per_image_seeds():
    n3 = initial_noise(3, (3, 8, 8), seed=10, device=torch.device("cpu"))
    n1 = initial_noise(1, (3, 8, 8), seed=12, device=torch.device("cpu"))
    assert torch.equal(n3[2], n1[0])
