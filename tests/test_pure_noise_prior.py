"""sampling.pure_noise_prior and the prior_until setting: the first steps taken from the
model's t = 1 prediction (the caption's mean layout)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import ditkit
from ditkit.cli.main import main
from ditkit.core.sampling import pure_noise_prior, sample_euler, timesteps


def test_prior_steps_follow_the_straight_path_to_the_t1_prediction():
    """A model whose t = 1 prediction is x0 = m (v = x - m there) and whose other answers are
    garbage: the prior steps must follow x_t = (1 - t) m + t eps exactly, untouched by the garbage."""
    g = torch.Generator().manual_seed(0)
    m, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    calls = []

    def velocity(x, t):
        calls.append(t)
        return x - m if t == 1.0 else torch.full_like(x, 1e3)

    ts = timesteps(10)  # 1.0, 0.9, ..., 0.0
    x = sample_euler(pure_noise_prior(velocity, 0.55), eps, ts[:6])  # steps at t = 1.0 ... 0.6, ending at 0.5
    assert torch.allclose(x, 0.5 * m + 0.5 * eps, atol=1e-5)
    assert set(calls) == {1.0}
    assert pure_noise_prior(velocity, 0.55)(eps, 0.3).eq(1e3).all()  # below `until`: the model as usual


def test_until_one_is_the_plain_velocity():
    def velocity(x, t):
        return x * t

    prior = pure_noise_prior(velocity, 1.0)
    x = torch.ones(1, 3, 2, 2)
    for t in (1.0, 0.99, 0.5):
        assert torch.equal(prior(x, t), velocity(x, t))


@pytest.mark.parametrize("until", [0.0, -0.5, 1.5])
def test_out_of_range_is_refused(until):
    with pytest.raises(ValueError, match="prior_until must be in"):
        pure_noise_prior(lambda x, t: x, until)


def test_pipeline_and_model_default(tiny_model_dir, tmp_path):
    plain = ditkit.load(tiny_model_dir)
    a = np.asarray(plain.generate("a red circle", seed=3, steps=4)[0])
    b = np.asarray(plain.generate("a red circle", seed=3, steps=4, prior_until=0.5)[0])
    c = np.asarray(plain.generate("a red circle", seed=3, steps=4, prior_until=0.5)[0])
    assert np.array_equal(b, c) and not np.array_equal(a, b)
    folder = tmp_path / "prior"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["sample"]["prior_until"] = 0.5
    (folder / "config.json").write_text(json.dumps(cfg))
    d = np.asarray(ditkit.load(folder).generate("a red circle", seed=3, steps=4)[0])
    assert np.array_equal(b, d)
    with pytest.raises(ValueError, match="prior_until"):
        plain.generate("x", prior_until=2.0)


def test_cli_flag(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["generate", "a red circle", "-o", str(out), "--model", str(tiny_model_dir), "--prior-until", "0.8"]) == 0
    assert out.is_file()
    for bad in ("0", "1.5", "soon"):
        bad_out = tmp_path / f"bad-{bad}.png"
        code = main(["generate", "a red circle", "-o", str(bad_out), "--model", str(tiny_model_dir), "--prior-until", bad])
        err = capsys.readouterr().err
        assert code == 2 and "--prior-until must be a number in (0, 1]" in err and "Traceback" not in err
        assert not bad_out.exists()


def test_a_prior_model_supplies_the_t1_prediction(tiny_model_dir, tmp_path):
    """The model as its own prior model gives the images of prior_until alone; another prior
    model changes them; a prior that cannot share the noise or the caption is refused."""
    from ditkit.core.checkpoint import save_model
    from ditkit.core.config import SampleConfig
    from ditkit.core.model import DiT, DiTConfig
    from conftest import save_perturbed_model

    pipe = ditkit.load(tiny_model_dir)
    alone = np.asarray(pipe.generate("a red circle", seed=4, steps=4, prior_until=0.5)[0])
    itself = np.asarray(pipe.generate("a red circle", seed=4, steps=4, prior_until=0.5,
                                      prior_model=str(tiny_model_dir))[0])
    assert np.array_equal(alone, itself)
    other = save_perturbed_model(tmp_path / "other", SampleConfig(steps=2, size=32), depth=1)
    swapped = np.asarray(pipe.generate("a red circle", seed=4, steps=4, prior_until=0.5, prior_model=str(other))[0])
    assert not np.array_equal(alone, swapped)
    odd = tmp_path / "odd"
    save_model(odd, DiT(DiTConfig(width=32, depth=1, heads=2, patch_size=8, stem_channels=4, sample_size=32,
                                  in_channels=4, out_channels=4)), SampleConfig(size=32))
    with pytest.raises(ValueError, match="in_channels=4.*must match"):
        pipe.generate("a red circle", prior_model=str(odd))
    with pytest.raises(ValueError, match="prior model: unknown model"):
        pipe.generate("a red circle", prior_model="no-such-prior")


def test_cli_unknown_prior_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "p.png"
    code = main(["generate", "a red circle", "-o", str(out), "--model", str(tiny_model_dir), "--prior-model", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "prior model: unknown model 'nope'" in err and "Traceback" not in err
    assert not out.exists()
