"""train.pure_noise_fraction: a share of the training samples at exactly t = 1, where the
sampler takes its first step (zero terminal SNR, Lin et al. 2024)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ditkit.core.config import load_config
from ditkit.core.flow import interpolate
from ditkit.training.train import step_batch, train

CONFIG = Path(__file__).parent.parent / "configs" / "shapes-64.yaml"


def _config(tmp_path, *overrides):
    return load_config(CONFIG, [f"train.output_dir={tmp_path / 'run'}", "train.batch_size=64", *overrides])


def test_a_share_of_the_times_is_exactly_one_and_the_rest_are_unchanged(tmp_path):
    plain = step_batch(_config(tmp_path), 5)
    mixed = step_batch(_config(tmp_path, "train.pure_noise_fraction=0.25"), 5)
    at_one = mixed["t"] == 1.0
    assert 6 <= int(at_one.sum()) <= 28  # 16 expected of 64
    assert (plain["t"] < 1.0).all()
    assert torch.equal(mixed["t"][~at_one], plain["t"][~at_one])
    for key in ("x0", "eps"):
        assert torch.equal(mixed[key], plain[key])
    assert mixed["captions"] == plain["captions"]
    # there x_t is the noise itself: nothing of the image is left to read
    assert torch.equal(interpolate(mixed["x0"], mixed["eps"], mixed["t"])[at_one], mixed["eps"][at_one])


def test_the_ends_of_the_range(tmp_path):
    assert (step_batch(_config(tmp_path, "train.pure_noise_fraction=1.0"), 2)["t"] == 1.0).all()
    assert torch.equal(step_batch(_config(tmp_path, "train.pure_noise_fraction=0.0"), 2)["t"],
                       step_batch(_config(tmp_path), 2)["t"])


def test_training_with_it_runs(train_config):
    assert train(train_config(steps=2, pure_noise_fraction=0.5), progress=False)["step"] == 2


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_out_of_range_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="pure_noise_fraction must be in"):
        _config(tmp_path, f"train.pure_noise_fraction={value}")
