"""train.cosine_reg: the layer-linearity regularizer of "Your Transformer is Secretly Linear"."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ditkit.core.encoders import get_text_encoder
from ditkit.core.flow import interpolate
from ditkit.core.model import DiT
from ditkit.training.train import _similarity_recorder, step_batch, training_loss

from conftest import tiny_train_config


@pytest.fixture(scope="module")
def encoder():
    return get_text_encoder("minilm")


def _with_reg(cfg, weight: float):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cosine_reg=weight))


def _model(cfg, depth: int = 3) -> DiT:
    torch.manual_seed(0)
    return DiT(dataclasses.replace(cfg.model, depth=depth))


def _mean_similarity(model: DiT, cfg, encoder, step: int) -> float:
    b = step_batch(cfg, step)
    context, mask = encoder.encode(b["captions"], "cpu")
    sims: list[torch.Tensor] = []
    with torch.no_grad():
        model(interpolate(b["x0"], b["eps"], b["t"]), b["t"], context, mask, block_runner=_similarity_recorder(sims))
    return float(torch.stack(sims).mean())


def test_the_loss_adds_the_weighted_mean_block_similarity(tmp_path, encoder):
    cfg = tiny_train_config(tmp_path / "run", batch_size=4)
    model = _model(cfg).eval()
    device = torch.device("cpu")
    with torch.no_grad():
        plain = float(training_loss(model, cfg, encoder, 0, device))
        regularized = float(training_loss(model, _with_reg(cfg, 0.5), encoder, 0, device))
    sim = _mean_similarity(model, cfg, encoder, 0)
    assert 0 < sim <= 1
    assert regularized == pytest.approx(plain + 0.5 * sim, rel=1e-5)


def test_training_with_the_regularizer_lowers_block_similarity(tmp_path, encoder):
    """The same steps from the same init, with and without the term: with a positive weight
    the blocks change their tokens' direction more (lower input/output cosine similarity)."""
    cfg = tiny_train_config(tmp_path / "run", batch_size=4)
    device = torch.device("cpu")
    result = {}
    for weight in (-1.0, 0.0, 1.0):
        model = _model(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        for step in range(15):
            loss = training_loss(model, _with_reg(cfg, weight), encoder, step, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
        result[weight] = _mean_similarity(model.eval(), cfg, encoder, 100)
    assert result[1.0] < result[0.0] - 0.05, result
    assert result[-1.0] > result[0.0], result  # a negative weight rewards similarity instead


@pytest.mark.parametrize("weight", [-1.5, 2.0])
def test_an_out_of_range_weight_is_refused(tmp_path, weight):
    with pytest.raises(ValueError, match="cosine_reg"):
        tiny_train_config(tmp_path / "run", cosine_reg=weight)
