"""positions="rope+abs": RoPE plus a zero-initialised learned map of the sin-cos table."""
import json

import pytest
import torch

from conftest import make_context, perturb_, tiny_dit_config, tiny_train_config
from ditkit.core.checkpoint import load_model
from ditkit.core.model import DiT, load_base_weights
from ditkit.training.train import train


def _inputs(size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, size, size, generator=g), torch.tensor([0.3, 0.8]), *make_context(2, 5, 16)


def test_rope_model_loaded_into_rope_abs_gives_the_same_output():
    torch.manual_seed(0)
    base = perturb_(DiT(tiny_dit_config()))
    abs_model = DiT(tiny_dit_config(positions="rope+abs"))
    load_base_weights(abs_model, base.state_dict(), new=("abs_pos.weight",))
    with torch.no_grad():
        assert torch.equal(abs_model(*_inputs()), base(*_inputs()))
        assert torch.equal(abs_model(*_inputs(48)), base(*_inputs(48)))  # other sizes too


def test_abs_map_gives_tokens_their_place():
    torch.manual_seed(0)
    model = perturb_(DiT(tiny_dit_config(positions="rope+abs")))
    x, t, ctx, mask = _inputs()
    with torch.no_grad():
        before = model(x, t, ctx, mask)
        torch.nn.init.normal_(model.abs_pos.weight, std=0.5)
        after = model(x, t, ctx, mask)
    assert not torch.allclose(before, after, atol=1e-4)
    assert model.abs_pos.weight.requires_grad


def test_base_without_the_new_tensor_is_refused_unless_named():
    base = DiT(tiny_dit_config())
    with pytest.raises(ValueError, match="abs_pos.weight"):
        load_base_weights(DiT(tiny_dit_config(positions="rope+abs")), base.state_dict())


def test_training_can_turn_a_rope_model_into_rope_abs(tmp_path):
    base = tiny_train_config(tmp_path / "base", steps=2)
    train(base, progress=False)
    cfg = tiny_train_config(tmp_path / "abs", steps=2, init_from=str(tmp_path / "base" / "model"))
    cfg.model.positions = "rope+abs"
    assert train(cfg, progress=False)["step"] == 2
    saved = json.loads((tmp_path / "abs" / "model" / "config.json").read_text())
    assert saved["model"]["positions"] == "rope+abs"
    model = load_model(tmp_path / "abs" / "model")[0]
    assert model.abs_pos is not None and model.abs_pos.weight.abs().sum() > 0  # it learned something


def test_other_config_changes_still_refuse_init_from(tmp_path):
    base = tiny_train_config(tmp_path / "base", steps=2)
    train(base, progress=False)
    cfg = tiny_train_config(tmp_path / "other", steps=2, init_from=str(tmp_path / "base" / "model"))
    cfg.model.positions = "sincos"
    with pytest.raises(ValueError, match="positions"):
        train(cfg, progress=False)
