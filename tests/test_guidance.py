"""CFG, APG and the guidance interval as closures around a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ditkit.core.guidance import APG, apg_update, guided_velocity, model_velocity, pad_contexts
from ditkit.core.sampling import sample_euler, sample_heun, timesteps


class ToyModel(nn.Module):
    """A model whose output depends on x, t and the masked mean of the text states on every
    channel, so conditional and unconditional outputs differ on all channels. Works in float64."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, channels, dtype=torch.float64))

    def forward(self, x, t, states, mask):
        m = mask.to(states.dtype)[..., None]
        pooled = (states * m).sum(1) / m.sum(1).clamp_min(1)  # (B, C)
        tt = t.to(x.dtype).view(-1, 1, 1, 1)
        return (0.5 + tt) * x * self.w.view(1, -1, 1, 1).to(x.dtype) + pooled.to(x.dtype)[:, :, None, None] * (1 + tt) \
            + torch.sin(x * pooled.to(x.dtype)[:, :, None, None])


def _toy_setup(b: int = 2, c: int = 4, hw: int = 6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, hw, hw, generator=g, dtype=torch.float64)
    cond = (torch.randn(b, 3, c, generator=g, dtype=torch.float64), torch.ones(b, 3, dtype=torch.bool))
    uncond = (torch.zeros(b, 2, c, dtype=torch.float64), torch.ones(b, 2, dtype=torch.bool))
    return ToyModel(c), x, cond, uncond


def _dit_setup(make_dit, context):
    model = make_dit(perturb=True, in_channels=4, out_channels=4)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    cond = context(2, 6, 16, seed=1, lengths=[4, 6])
    uncond = context(2, 2, 16, seed=2)
    return model, x, cond, uncond


@pytest.mark.parametrize("t", [0.9, 0.5, 0.2])
def test_cfg_is_the_guidance_formula_on_every_channel(make_dit, context, t):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    v_c = model_velocity(model, cond)(x, t)
    v_u = model_velocity(model, uncond)(x, t)
    assert ((v_c - v_u).abs().amax(dim=(0, 2, 3)) > 1e-4).all()  # the two passes differ on every channel
    v = guided_velocity(model, cond, uncond, scale=4.0)(x, t)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), rtol=0, atol=1e-5)
    changed = (v - v_c).abs().amax(dim=(0, 2, 3))
    assert (changed > 1e-4).all(), f"CFG left channels unchanged: {changed}"


def test_cfg_changes_every_channel_toy():
    model, x, cond, uncond = _toy_setup(c=5)
    v_c = model_velocity(model, cond)(x, 0.5)
    v_u = model_velocity(model, uncond)(x, 0.5)
    v = guided_velocity(model, cond, uncond, scale=3.0)(x, 0.5)
    torch.testing.assert_close(v, v_u + 3.0 * (v_c - v_u))
    assert ((v - v_c).abs().amax(dim=(0, 2, 3)) > 1e-3).all()


def test_scale_one_is_the_conditional_model_and_zero_the_unconditional(make_dit, context):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    v_c = model_velocity(model, cond)(x, 0.6)
    assert torch.equal(guided_velocity(model, cond, uncond, scale=1.0)(x, 0.6), v_c)
    assert torch.equal(guided_velocity(model, cond, uncond, scale=1.0, apg=APG())(x, 0.6), v_c)
    torch.testing.assert_close(guided_velocity(model, cond, uncond, scale=0.0)(x, 0.6),
                               model_velocity(model, uncond)(x, 0.6), rtol=0, atol=1e-5)


def test_contexts_of_different_lengths_are_padded_and_masked(make_dit, context):
    """The batched cond+uncond pass pads the shorter context; padding must not change either half."""
    model, x, cond, uncond = _dit_setup(make_dit, context)
    states, mask = pad_contexts(cond, uncond)
    assert states.shape == (4, 6, 16) and mask.shape == (4, 6)
    assert torch.equal(mask[2:, 2:], torch.zeros(2, 4, dtype=torch.bool))
    both = model_velocity(model, (states, mask))(torch.cat([x, x]), 0.4)
    torch.testing.assert_close(both[:2], model_velocity(model, cond)(x, 0.4), rtol=0, atol=1e-5)
    torch.testing.assert_close(both[2:], model_velocity(model, uncond)(x, 0.4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [1.0, 0.7, 0.3, 0.05])
def test_apg_without_momentum_cap_or_projection_is_cfg(t):
    model, x, cond, uncond = _toy_setup()
    apg = APG(eta=1.0, momentum=0.0, norm_threshold=0.0)
    cfg = guided_velocity(model, cond, uncond, scale=5.0)(x, t)
    torch.testing.assert_close(guided_velocity(model, cond, uncond, scale=5.0, apg=apg)(x, t), cfg, rtol=0, atol=1e-10)


def test_apg_without_momentum_cap_or_projection_is_cfg_dit(make_dit, context):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    apg = APG(eta=1.0, momentum=0.0, norm_threshold=0.0)
    for t in (0.9, 0.5):
        torch.testing.assert_close(guided_velocity(model, cond, uncond, 4.0, apg=apg)(x, t),
                                   guided_velocity(model, cond, uncond, 4.0)(x, t), rtol=0, atol=1e-5)


def test_apg_update_components():
    """eta = 0 removes the part of the update parallel to D_cond; the norm cap bounds the update's RMS."""
    g = torch.Generator().manual_seed(0)
    d_c, d_u = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    out = apg_update(d_c, d_u, 3.0, APG(eta=0.0, momentum=0.0, norm_threshold=0.0), {})
    delta = (out - d_c).flatten(1)
    torch.testing.assert_close((delta * d_c.flatten(1)).sum(1), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-10)
    capped = apg_update(d_c, d_u, 3.0, APG(eta=1.0, momentum=0.0, norm_threshold=0.1), {})
    rms = ((capped - d_c) / 2.0).flatten(1).norm(dim=1) / (3 * 4 * 4) ** 0.5
    assert (rms <= 0.1 + 1e-9).all()


def test_apg_momentum_does_not_leak_between_generations(make_dit, context):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    apg = APG(eta=0.0, momentum=-0.5, norm_threshold=0.3)
    ts = timesteps(4)
    first = sample_heun(guided_velocity(model, cond, uncond, 4.0, apg=apg), x, ts)
    second = sample_heun(guided_velocity(model, cond, uncond, 4.0, apg=apg), x, ts)
    assert torch.equal(first, second)
    # The state is real: reusing one closure for a second generation carries momentum over.
    reused = guided_velocity(model, cond, uncond, 4.0, apg=apg)
    sample_heun(reused, x, ts)
    assert not torch.allclose(sample_heun(reused, x, ts), first)


def test_apg_momentum_changes_the_second_call():
    model, x, cond, uncond = _toy_setup()
    with_m = guided_velocity(model, cond, uncond, 4.0, apg=APG(eta=1.0, momentum=-0.5, norm_threshold=0.0))
    without = guided_velocity(model, cond, uncond, 4.0, apg=APG(eta=1.0, momentum=0.0, norm_threshold=0.0))
    torch.testing.assert_close(with_m(x, 0.8), without(x, 0.8))  # first call: no history yet
    assert not torch.allclose(with_m(x, 0.6), without(x, 0.6))


@pytest.mark.parametrize("use_apg", [False, True])
def test_guidance_interval(make_dit, context, use_apg):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    apg = APG() if use_apg else None
    velocity = guided_velocity(model, cond, uncond, 4.0, apg=apg, interval=(0.3, 0.6))
    conditional = model_velocity(model, cond)
    for t in (0.95, 0.61, 0.29, 0.1):
        assert torch.equal(velocity(x, t), conditional(x, t))
    full = guided_velocity(model, cond, uncond, 4.0, apg=apg)
    for t in (0.6, 0.45, 0.3):
        v = velocity(x, t)
        assert (v - conditional(x, t)).abs().max() > 1e-4
        if not use_apg:
            torch.testing.assert_close(v, full(x, t), rtol=0, atol=0)


def test_guidance_interval_in_a_sampler_counts_passes(make_dit, context):
    """Inside the interval one batched (2B) pass, outside one conditional (B) pass."""
    model, x, cond, uncond = _dit_setup(make_dit, context)
    batches = []
    model.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    sample_euler(guided_velocity(model, cond, uncond, 4.0, interval=(0.2, 0.5)), x, timesteps(10))
    # t = 1.0 .. 0.1: guided at 0.5, 0.4, 0.3, 0.2
    assert batches == [2, 2, 2, 2, 2, 4, 4, 4, 4, 2]


@pytest.mark.parametrize("scale", [-0.1, -4.0])
def test_negative_scale_raises(make_dit, context, scale):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    with pytest.raises(ValueError, match="guidance scale must be >= 0"):
        guided_velocity(model, cond, uncond, scale)


@pytest.mark.parametrize("interval", [(0.6, 0.3), (-0.1, 0.5), (0.2, 1.5)])
def test_bad_interval_raises(make_dit, context, interval):
    model, x, cond, uncond = _dit_setup(make_dit, context)
    with pytest.raises(ValueError, match="interval"):
        guided_velocity(model, cond, uncond, 4.0, interval=interval)
