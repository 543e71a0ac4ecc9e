"""The Stable Target Field (train.stf_refs): the posterior-mean x0 estimate, its references,
and how it enters the training step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditkit.core.config import load_config
from ditkit.data.shapes import reference_images
from ditkit.evaluation.shapes_scoring import score_image
from ditkit.core.flow import interpolate, posterior_mean_x0, velocity_target, velocity_target_from_x0_estimate
from ditkit.training.train import step_batch, train

CAPTION = "a red circle to the left of a blue square"


def _candidates(k: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, k, 3, 8, 8, generator=g) * 2 - 1


def test_at_pure_noise_the_estimate_is_the_mean_of_the_set():
    cands = _candidates()
    x_t = torch.randn(1, 3, 8, 8)  # at t = 1, x_t carries no information about x0
    est = posterior_mean_x0(x_t, torch.ones(1), cands)
    torch.testing.assert_close(est, cands.mean(1), rtol=0, atol=1e-6)


def test_at_low_noise_the_estimate_is_the_x0_that_made_x_t():
    cands = _candidates()
    t = torch.full((1,), 0.05)
    x_t = interpolate(cands[:, 0], torch.randn(1, 3, 8, 8), t)
    torch.testing.assert_close(posterior_mean_x0(x_t, t, cands), cands[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [0.5, 0.9, 0.97, 0.995])
def test_the_estimate_is_a_convex_combination_of_the_set(t):
    cands = _candidates(seed=1)
    tt = torch.full((1,), t)
    est = posterior_mean_x0(interpolate(cands[:, 0], torch.randn(1, 3, 8, 8), tt), tt, cands)
    assert (est >= cands.amin(1) - 1e-6).all() and (est <= cands.amax(1) + 1e-6).all()


def test_the_velocity_target_is_the_plain_one_where_the_estimate_is_x0():
    x0, eps, t = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4)
    assert torch.equal(velocity_target_from_x0_estimate(x0, eps, t, x0), velocity_target(x0, eps))
    est = torch.randn(4, 3, 8, 8)  # otherwise it points from x_t to the estimate
    v = velocity_target_from_x0_estimate(x0, eps, t, est)
    torch.testing.assert_close(interpolate(x0, eps, t) - t.view(-1, 1, 1, 1) * v, est, rtol=0, atol=1e-5)


def _pixels(image: torch.Tensor) -> np.ndarray:
    return ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_references_are_scenes_of_the_caption():
    refs = reference_images(CAPTION, np.random.default_rng(0), 8, 64)
    assert refs.shape == (8, 3, 64, 64) and refs.min() >= -1 and refs.max() <= 1
    assert all(score_image(_pixels(r), CAPTION) for r in refs)
    assert not torch.equal(refs[0], refs[1])  # fresh layouts, not copies
    unconditional = reference_images("", np.random.default_rng(0), 8, 64)
    assert unconditional.shape == (8, 3, 64, 64)


def _config(tmp_path: Path, *overrides: str):
    return load_config(Path(__file__).parent.parent / "configs" / "shapes-64.yaml",
                       [f"train.output_dir={tmp_path / 'run'}", "train.batch_size=16", *overrides])


def test_step_batch_estimates_only_above_the_threshold_and_is_deterministic(tmp_path):
    cfg = _config(tmp_path, "train.stf_refs=16", "train.stf_min_t=0.6", "train.time_mean=1.0")
    b = step_batch(cfg, 3)
    low, high = b["t"] < 0.6, b["t"] >= 0.6
    assert low.any() and high.any()
    assert torch.equal(b["x0_estimate"][low], b["x0"][low])
    assert torch.equal(step_batch(cfg, 3)["x0_estimate"], b["x0_estimate"])
    plain = step_batch(_config(tmp_path, "train.time_mean=1.0"), 3)
    assert plain["x0_estimate"] is None and torch.equal(plain["x0"], b["x0"]) and torch.equal(plain["t"], b["t"])


def test_at_high_noise_the_estimate_is_nearer_the_caption_mean_than_one_image(tmp_path):
    """What the estimator is for: near t = 1 the regression target moves from one random
    layout toward E[x0 | caption], the best prediction there."""
    cfg = _config(tmp_path, "train.stf_refs=64", "train.stf_min_t=0.0", "train.cfg_dropout=0.0",
                  "train.time_mean=8.0", "train.time_std=0.01")
    b = step_batch(cfg, 0)
    assert (b["t"] > 0.99).all()
    rng = np.random.default_rng(123)
    nearer = 0
    for i, caption in enumerate(b["captions"]):
        mean = reference_images(caption, rng, 256, 64).mean(0)
        nearer += float((b["x0_estimate"][i] - mean).pow(2).mean()) < 0.5 * float((b["x0"][i] - mean).pow(2).mean())
    assert nearer == len(b["captions"]), nearer


def test_training_with_the_estimate_runs_and_is_refused_where_it_cannot_work(train_config, tmp_path):
    cfg = train_config(steps=2, stf_refs=4, stf_min_t=0.0)
    assert train(cfg, progress=False)["step"] == 2
    digits = load_config(Path(__file__).parent.parent / "configs" / "digits-32.yaml",
                         [f"train.output_dir={tmp_path / 'digits'}", "train.stf_refs=4"])
    with pytest.raises(ValueError, match="stf_refs needs"):
        train(digits, progress=False)
    assert not (tmp_path / "digits").exists()  # refused before anything is written


@pytest.mark.parametrize("override,match", [("train.stf_refs=-1", "stf_refs"), ("train.stf_min_t=1.0", "stf_min_t")])
def test_bad_settings_raise(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, override)
