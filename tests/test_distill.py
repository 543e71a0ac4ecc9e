"""Few-step distillation (latent consistency in flow form): the consistency math, a run
end to end from Python and the CLI, and config errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import save_perturbed_model
from ditkit.cli import main
from ditkit.config import SampleConfig
from ditkit.distill import DistillConfig, consistency_fn, distill, distill_loss, load_distill_config, pseudo_huber
from ditkit.pipeline import load


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


def test_pseudo_huber():
    a = torch.randn(3, 4)
    assert float(pseudo_huber(a, a, 0.03)) == 0.0
    assert float(pseudo_huber(a, a + 1, 0.03)) == pytest.approx(((1 + 0.03**2) ** 0.5) - 0.03)


def test_distill_writes_a_few_step_student(tmp_path):
    teacher = save_perturbed_model(tmp_path / "teacher", SampleConfig(steps=4, guidance=3.0, size=32), depth=1)
    cfg = DistillConfig(steps=3, batch_size=2, checkpoint_every=2, log_every=1, precision="fp32", grid=10, skip=2)
    result = distill(str(teacher), cfg, tmp_path / "student")
    assert result["steps"] == 3 and result["loss"] >= 0
    pipe = load(tmp_path / "student")
    assert pipe.defaults.steps == 4 and pipe.defaults.guidance == 1.0  # no CFG pass at sampling
    assert pipe.config["distilled_from"].endswith("teacher")
    assert pipe.generate("a red circle", steps=1)[0].size == (32, 32)
    rows = [json.loads(x) for x in (tmp_path / "student" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
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
                         ("distill:\n  sample:\n    stepz: 2\n", "unknown distill.sample")):
        conf.write_text(text)
        code = main(["distill", "--teacher", str(teacher), "--config", str(conf), "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1
        assert not (tmp_path / "x").exists()
    from pathlib import Path

    shipped = load_distill_config(Path(__file__).resolve().parents[1] / "configs" / "distill-shapes.yaml")
    assert shipped.sample["steps"] == 4 and shipped.guidance == 4.0
