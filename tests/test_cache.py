"""Feature caching and inference precision: threshold 0 is exact, no cache state survives
a generation, SmoothCache schedules refuse runs they were not calibrated for, int8
stays close to fp32 and fp16 is refused on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ditkit
from ditkit.engine.cache import FirstBlockCache, SmoothSchedule, parse_cache_spec
from ditkit.engine.calibration import calibrate_smooth
from ditkit.engine.generate import generate_tensor
from ditkit.core.precision import check_precision, int8_model
from conftest import save_perturbed_model
from conftest import assert_one_line_error, run_cli

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a yellow square"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A 4-block model with non-trivial blocks (so caching has something to skip)."""
    from ditkit.core.config import SampleConfig

    folder = save_perturbed_model(tmp_path_factory.mktemp("cache") / "model", SampleConfig(steps=6, guidance=3.0, size=32))
    return ditkit.load(folder)


def _gen(pipe, **kw):
    return generate_tensor(pipe.model, pipe.text_encoder, PROMPTS, pipe.defaults, seed=1, **kw)


def test_first_block_threshold_zero_is_exact(pipe):
    assert torch.equal(_gen(pipe), _gen(pipe, cache="first-block:0"))


def test_first_block_cache_skips_and_stays_close(pipe):
    made = []

    def factory():
        made.append(FirstBlockCache(0.5))
        return made[-1]

    plain, cached = _gen(pipe), _gen(pipe, cache=factory)
    assert len(made) == 1 and made[0].hits > 0 and made[0].hits < made[0].calls
    assert not torch.equal(plain, cached)
    assert (cached - plain).abs().mean() < 0.5 * plain.abs().mean()


def test_no_cache_state_survives_a_generation(pipe):
    spec = "first-block:0.5"
    a1 = generate_tensor(pipe.model, pipe.text_encoder, PROMPTS[:1], pipe.defaults, seed=1, cache=spec)
    generate_tensor(pipe.model, pipe.text_encoder, PROMPTS[1:], pipe.defaults, seed=5, cache=spec)
    a2 = generate_tensor(pipe.model, pipe.text_encoder, PROMPTS[:1], pipe.defaults, seed=1, cache=spec)
    assert torch.equal(a1, a2)
    # batch-safe: identical rows in one batch stay identical (no residual crosses samples)
    x = generate_tensor(pipe.model, pipe.text_encoder, PROMPTS[:1] * 2, pipe.defaults, seed=[3, 3], cache=spec)
    assert torch.equal(x[0], x[1])


def test_smooth_cache_calibration_schedule_and_refusals(pipe, tmp_path):
    exact = calibrate_smooth(pipe.model, pipe.text_encoder, PROMPTS, pipe.defaults, alpha=0.0)
    assert not any(map(any, exact.reuse))
    path = tmp_path / "s.json"
    exact.save(path)
    assert torch.equal(_gen(pipe), _gen(pipe, cache=f"smooth:{path}"))
    loose = calibrate_smooth(pipe.model, pipe.text_encoder, PROMPTS, pipe.defaults, alpha=10.0, max_consecutive=1)
    assert not any(loose.reuse[0]) and any(map(any, loose.reuse))
    assert all(not (a and b) for r1, r2 in zip(loose.reuse, loose.reuse[1:]) for a, b in zip(r1, r2))
    loose.save(path)
    again = SmoothSchedule.load(path)
    assert again.reuse == loose.reuse and again.steps == 6
    assert not torch.equal(_gen(pipe), _gen(pipe, cache=f"smooth:{path}"))
    from dataclasses import replace

    with pytest.raises(ValueError, match="recalibrate"):
        generate_tensor(pipe.model, pipe.text_encoder, PROMPTS, replace(pipe.defaults, steps=5), cache=f"smooth:{path}")
    with pytest.raises(ValueError, match="recalibrate"):
        generate_tensor(pipe.model, pipe.text_encoder, PROMPTS, replace(pipe.defaults, sampler="heun"),
                        cache=f"smooth:{path}")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for spec in ["smooth:" + str(bad), "smooth:" + str(tmp_path / "none.json"), "smooth:xyz", "first-block:abc",
                 "first-block:-1", "first-block:inf", "first-block:nan", "teacache:0.1"]:
        with pytest.raises(ValueError):
            parse_cache_spec(spec)


def test_precisions(pipe):
    fp32 = _gen(pipe)
    q = _gen(pipe, precision="int8")
    assert not torch.equal(fp32, q)
    assert (q - fp32).abs().mean() < 0.05 * fp32.abs().mean() + 1e-3
    assert int8_model(pipe.model) is int8_model(pipe.model)  # cached while weights are unchanged
    with pytest.raises(ValueError, match="350x"):
        check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="allowed"):
        check_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        check_precision("int8", "cuda")


def test_int8_copy_follows_weight_updates(make_dit):
    model = make_dit(perturb=True)
    first = int8_model(model)
    with torch.no_grad():
        model.final_linear.weight.add_(1.0)
    assert int8_model(model) is not first


def test_int8_copy_of_a_compiled_model_is_quantized(make_dit, context):
    """Pipeline.compile sets the compiled forward as an instance attribute bound to the fp32 model;
    the int8 copy must not inherit it (it ran fp32 before)."""
    model = make_dit(perturb=True)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    states, mask = context(2, 5, model.config.text_dim)
    with torch.no_grad():
        eager = int8_model(model)(x, t, states, mask)
        fresh = make_dit(perturb=True)
        fresh.forward = fresh.forward  # what torch.compile(model.forward) leaves: an instance attribute
        fresh._ditkit_compiled = True
        q = int8_model(fresh)
        assert "forward" not in q.__dict__ and not getattr(q, "_ditkit_compiled", False)
        assert torch.equal(q(x, t, states, mask), eager)
        assert not torch.equal(q(x, t, states, mask), fresh(x, t, states, mask))


def test_cli_cache_precision_and_calibration(pipe, tmp_path, capsys):
    src = pipe.source
    out0, out1 = tmp_path / "a.png", tmp_path / "b.png"
    assert run_cli(["generate", "a red circle", "-o", out0, "--model", src], capsys)[0] == 0
    assert run_cli(["generate", "a red circle", "-o", out1, "--model", src, "--cache", "first-block:0"], capsys)[0] == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out0)), np.asarray(Image.open(out1)))
    sched = tmp_path / "sched.json"
    code, stdout, _ = run_cli(["cache-calibrate", src, "--steps", 4, "--alpha", 0.3, "-o", sched], capsys)
    assert code == 0 and json.loads(stdout)["steps"] == 4
    assert run_cli(["generate", "x", "-o", tmp_path / "c.png", "--model", src, "--steps", 4,
                    "--cache", f"smooth:{sched}"], capsys)[0] == 0
    for args, needle in [
        (["--steps", 5, "--cache", f"smooth:{sched}"], "recalibrate"),
        (["--steps", 4, "--cache", f"smooth:{sched}", "--prior-until", 0.5], "prior steps"),
        (["--cache", "smooth:calibrated"], "cache-calibrate"),
        (["--cache", "warp:1"], "allowed"),
        (["--precision", "fp16"], "350x"),
        (["--precision", "int4"], "allowed"),
    ]:
        target = tmp_path / "bad.png"
        code, _, err = run_cli(["generate", "x", "-o", target, "--model", src, *args], capsys)
        assert_one_line_error(code, err, needle)
        assert not target.exists()


def test_training_falls_back_to_fp32_where_bf16_is_emulated(monkeypatch):
    """bf16 autocast on a CPU without native bf16 (AVX2 only) is ~100x slower than fp32:
    training, distillation and pruning recovery use fp32 there, with a warning."""
    import ditkit.core.precision as precision

    monkeypatch.setattr(precision, "_warned_slow_bf16", False)
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert precision.training_precision("bf16", "cpu") == "fp32"
    assert precision.training_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: True)
    assert precision.training_precision("bf16", "cpu") == "bf16"


def test_bf16_speed_probe(monkeypatch):
    """bf16_is_fast follows oneDNN's probe on CPU, reads a missing probe as slow, and trusts GPUs."""
    from types import SimpleNamespace

    import ditkit.core.precision as precision

    assert precision.bf16_is_fast("cuda") is True and precision.bf16_is_fast("cuda:0") is True
    for native in (True, False):
        monkeypatch.setattr(torch, "ops", SimpleNamespace(mkldnn=SimpleNamespace(
            _is_mkldnn_bf16_supported=lambda native=native: native)))
        assert precision.bf16_is_fast("cpu") is native
        assert precision.bf16_is_fast("cuda") is True  # never probed on a GPU

    def no_onednn():
        raise RuntimeError("torch built without oneDNN")

    monkeypatch.setattr(torch, "ops", SimpleNamespace(mkldnn=SimpleNamespace(_is_mkldnn_bf16_supported=no_onednn)))
    assert precision.bf16_is_fast("cpu") is False
    monkeypatch.setattr(torch, "ops", SimpleNamespace())  # no mkldnn namespace at all
    assert precision.bf16_is_fast("cpu") is False
