"""Few-step distillation (latent consistency in flow form, and reflow): the consistency math,
reflow's pairs and loss, runs end to end from Python and the CLI, continuing from an earlier
student, and config errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import save_perturbed_model
from ditkit.cli.main import main
from ditkit.core.config import SampleConfig
from ditkit.accel.distill import (DistillConfig, consistency_fn, distill, distill_loss, load_distill_config,
                                  load_teacher, pseudo_huber)
from ditkit.api import load
from ditkit.engine import generate_tensor, initial_noise
from ditkit.accel.reflow import make_pairs, pair_seeds, reflow_loss


class ConstantVelocity(torch.nn.Module):
    """v(x, t) = c everywhere: the exact velocity of straight paths x_t = x0 + t c."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = torch.nn.Parameter(c)

    def forward(self, x, t, context, mask=None, **kw):
        return self.c.expand_as(x)


class Encoder:
    def encode(self, prompts, device=None):
        return torch.zeros(len(prompts), 2, 4), torch.ones(len(prompts), 2, dtype=torch.bool)


def test_consistency_function_is_the_identity_at_t0_and_the_loss_vanishes_on_straight_paths():
    c = torch.randn(1, 3, 8, 8)
    model = ConstantVelocity(c)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(consistency_fn(model, x, torch.zeros(2), None, None), x)
    # A teacher and student that are the same straight flow are already consistent: loss 0.
    cfg = DistillConfig(grid=10, skip=3, guidance=4.0, precision="fp32")
    loss = distill_loss(model, model, model, Encoder(), cfg, torch.randn(4, 3, 8, 8), ["a"] * 4,
                        torch.Generator().manual_seed(0), torch.device("cpu"))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    # ... and not for a student that disagrees with the teacher.
    loss2 = distill_loss(ConstantVelocity(c + 0.5), model, model, Encoder(), cfg, torch.randn(4, 3, 8, 8), ["a"] * 4,
                         torch.Generator().manual_seed(0), torch.device("cpu"))
    assert float(loss2.detach()) > 0.01


class TextStates:
    """A stand-in text encoder with the tiny DiT's 16-dim states (a fixed function of the prompt)."""

    def encode(self, prompts, device=None):
        states = torch.stack([torch.full((3, 16), float(len(p)) / 10) for p in prompts])
        return states, torch.ones(len(prompts), 3, dtype=torch.bool)


def test_lcm_steps_in_the_training_loop_lower_the_loss_on_a_fixed_batch(make_dit):
    """The student's consistency error against a fixed target shrinks under the loop's steps."""
    import copy

    from ditkit.training.loop import TrainingLoop, TrainSettings

    teacher = make_dit(perturb=True).requires_grad_(False)
    student, target = copy.deepcopy(teacher).requires_grad_(True).train(), copy.deepcopy(teacher)
    cfg = DistillConfig(grid=10, skip=3, guidance=3.0, precision="fp32")
    x0 = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def loss_fn(step):
        return distill_loss(student, target, teacher, TextStates(), cfg, x0, ["a red circle", "", "b", "cc"],
                            torch.Generator().manual_seed(0), torch.device("cpu"))

    with torch.no_grad():
        first = float(loss_fn(0))
    assert first > 0.01  # the teacher is not its own consistent student (its paths are not straight)
    TrainingLoop(student, TrainSettings(steps=30, lr=2e-3, grad_clip=1.0)).run(loss_fn)
    with torch.no_grad():
        assert float(loss_fn(0)) < 0.5 * first


def test_both_distillation_methods_run_in_the_one_loop(tmp_path, monkeypatch):
    from ditkit.training import loop as loop_module

    runs = []
    real_run = loop_module.TrainingLoop.run

    def spy(self, loss_fn, **kw):
        runs.append((self.settings.label, self.ema is not None))
        return real_run(self, loss_fn, **kw)

    monkeypatch.setattr(loop_module.TrainingLoop, "run", spy)
    teacher = save_perturbed_model(tmp_path / "teacher", SampleConfig(steps=2, guidance=3.0, size=32), depth=1)
    for method in ("lcm", "reflow"):
        cfg = DistillConfig(method=method, steps=1, batch_size=2, pairs=2, grid=10, skip=2, precision="fp32")
        distill(str(teacher), cfg, tmp_path / method, progress=False)
    # LCM's target network is the loop's EMA copy; reflow has none
    assert runs == [("distill (lcm)", True), ("distill (reflow)", False)]


def test_pseudo_huber():
    a = torch.randn(3, 4)
    assert float(pseudo_huber(a, a, 0.03)) == 0.0
    assert float(pseudo_huber(a, a + 1, 0.03)) == pytest.approx(((1 + 0.03**2) ** 0.5) - 0.03)


def test_distill_writes_a_few_step_student(tmp_path):
    teacher = save_perturbed_model(tmp_path / "teacher", SampleConfig(steps=4, guidance=3.0, size=32), depth=1)
    cfg = DistillConfig(steps=3, batch_size=2, checkpoint_every=2, log_every=1, precision="fp32", grid=10, skip=2)
    result = distill(str(teacher), cfg, tmp_path / "student")
    assert result["steps"] == 3
    pipe = load(tmp_path / "student")
    # The student was trained: it starts as the teacher and three steps moved its weights.
    before, after = load(teacher).model.state_dict(), pipe.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert pipe.defaults.steps == 4 and pipe.defaults.guidance == 1.0  # no CFG pass at sampling
    assert pipe.config["distilled_from"].endswith("teacher")
    assert pipe.generate("a red circle", steps=1)[0].size == (32, 32)
    rows = [json.loads(x) for x in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["loss"] for r in rows if "loss" in r][-1] == result["loss"]
    with pytest.raises(ValueError, match="not empty"):
        distill(str(teacher), cfg, tmp_path / "student")


def test_distill_cli_and_config_errors(tmp_path, capsys):
    teacher = save_perturbed_model(tmp_path / "teacher", SampleConfig(steps=4, guidance=3.0, size=32), depth=1)
    conf = tmp_path / "d.yaml"
    conf.write_text("distill:\n  steps: 2\n  batch_size: 2\n  grid: 10\n  skip: 2\n  precision: fp32\n"
                    "  sample:\n    steps: 2\n")
    assert main(["distill", "--teacher", str(teacher), "--config", str(conf), "-o", str(tmp_path / "s")]) == 0
    assert load(tmp_path / "s").defaults.steps == 2
    capsys.readouterr()
    for text, needle in (("distill:\n  skip: 60\n", "must be smaller"), ("distill:\n  colour: 1\n", "unknown distill"),
                         ("distill:\n  sample:\n    stepz: 2\n", "unknown distill.sample"),
                         ("distill:\n  method: shortcut\n", "unknown distill.method"),
                         ("distill:\n  method: reflow\n  pairs: 0\n", "distill.pairs must be >= 1")):
        conf.write_text(text)
        code = main(["distill", "--teacher", str(teacher), "--config", str(conf), "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1
        assert not (tmp_path / "x").exists()
    from pathlib import Path

    shipped = load_distill_config(Path(__file__).resolve().parents[1] / "configs" / "distill-shapes.yaml")
    assert shipped.sample["steps"] == 4 and shipped.guidance == 4.0


def test_reflow_pairs_are_the_guided_teachers_own_samples(tmp_path):
    teacher = save_perturbed_model(tmp_path / "teacher", SampleConfig(steps=3, guidance=3.0, size=32), depth=1)
    pipe = load(teacher)
    engine, _ = load_teacher(teacher)
    pairs = make_pairs(engine, 5, guidance=2.0, teacher_steps=2, seed=1, dataset="shapes", size=32, batch_size=2)
    assert pairs["x0"].shape == pairs["eps"].shape == (5, 3, 32, 32) and len(pairs["captions"]) == 5
    seeds = pair_seeds(1, 5)
    assert torch.equal(pairs["eps"], initial_noise(5, (3, 32, 32), seeds, torch.device("cpu")))
    # Each image is where the guided teacher's ODE takes that noise (batch-independent).
    sample = SampleConfig(steps=2, guidance=2.0, size=32)
    one = generate_tensor(pipe.model, pipe.text_encoder, pairs["captions"][3:4], sample, seeds[3:4]).clamp(-1, 1)
    assert torch.allclose(pairs["x0"][3:4], one, atol=1e-5)
    again = make_pairs(engine, 5, guidance=2.0, teacher_steps=2, seed=1, dataset="shapes", size=32, batch_size=5)
    assert torch.allclose(again["x0"], pairs["x0"], atol=1e-5) and again["captions"] == pairs["captions"]
    other = make_pairs(engine, 5, guidance=2.0, teacher_steps=2, seed=2, dataset="shapes", size=32, batch_size=2)
    assert not torch.equal(other["eps"], pairs["eps"])
    with pytest.raises(ValueError, match="pairs must be >= 1"):
        make_pairs(engine, 0, 2.0, 2, 1, "shapes", 32)


def test_reflow_loss_vanishes_exactly_on_the_straight_couplings():
    c = torch.randn(1, 3, 8, 8)
    eps = torch.randn(6, 3, 8, 8)
    pairs = {"x0": eps - c, "eps": eps, "captions": ["a"] * 6}  # every pair is joined by velocity c
    g = torch.Generator().manual_seed(0)
    loss = reflow_loss(ConstantVelocity(c), Encoder(), pairs, 4, "fp32", g, torch.device("cpu"))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-10)
    off = reflow_loss(ConstantVelocity(c + 0.1), Encoder(), pairs, 4, "fp32", g, torch.device("cpu"))
    assert float(off.detach()) == pytest.approx(0.01, rel=1e-4)


def test_reflow_distillation_fits_its_pairs_and_init_continues_a_student(tmp_path):
    teacher = save_perturbed_model(tmp_path / "teacher", SampleConfig(steps=2, guidance=3.0, size=32), depth=1)
    cfg = DistillConfig(method="reflow", steps=40, batch_size=4, pairs=4, lr=2e-3, checkpoint_every=100,
                        log_every=10, precision="fp32", sample={"steps": 2, "guidance": 1.0})
    result = distill(str(teacher), cfg, tmp_path / "reflow")
    rows = [json.loads(x) for x in (tmp_path / "reflow" / "log.jsonl").read_text().splitlines()]
    assert rows[1]["pairs"] == 4 and result["steps"] == 40
    # The student fits the straight couplings better than the teacher it started from.
    pipe = load(teacher)
    pairs = make_pairs(load_teacher(teacher)[0], 4, cfg.guidance, 0, cfg.seed, "shapes", 32, 4)

    def pair_loss(model):
        return float(reflow_loss(model, pipe.text_encoder, pairs, 64, "fp32", torch.Generator().manual_seed(5),
                                 torch.device("cpu")).detach())

    assert pair_loss(load(tmp_path / "reflow").model) < 0.7 * pair_loss(pipe.model)
    # init: a second part starts from the first part's student, not from the teacher.
    start = load(tmp_path / "reflow").model.state_dict()
    cont = DistillConfig(steps=1, batch_size=2, lr=1e-12, grid=10, skip=2, precision="fp32", init=str(tmp_path / "reflow"))
    distill(str(teacher), cont, tmp_path / "part2")
    after = load(tmp_path / "part2").model.state_dict()
    assert all(torch.allclose(after[k], start[k], atol=1e-6) for k in start)
    assert not all(torch.allclose(after[k], pipe.model.state_dict()[k], atol=1e-6) for k in start)
    wide = save_perturbed_model(tmp_path / "wide", SampleConfig(size=32), depth=2)
    with pytest.raises(ValueError, match="different architecture"):
        distill(str(teacher), DistillConfig(steps=1, init=str(wide), precision="fp32"), tmp_path / "part3")
