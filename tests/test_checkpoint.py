"""Checkpoints: bit-exact round trips, clear errors naming the file, atomic writes, exact resume state."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ditkit.core import checkpoint as ckpt
from ditkit.core import files
from ditkit.core.checkpoint import (CONFIG_FILE, MODEL_FILE, STATE_FILE, load_model, load_train_state, save_model,
                               save_train_state)
from ditkit.core.config import Config, SampleConfig
from ditkit.core.model import DiT


def _outputs(model: DiT, context) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.config.in_channels, 16, 16, generator=g)
    states, mask = context(2, 4, model.config.text_dim, lengths=[2, 4])
    with torch.no_grad():
        return model(x, torch.tensor([0.3, 0.8]), states, mask)


@pytest.mark.parametrize("overrides", [dict(), dict(attention="linear", stem_channels=0)])
def test_save_load_round_trip_is_bit_exact(tmp_path, make_dit, context, overrides):
    model = make_dit(perturb=True, **overrides)
    sample = SampleConfig(sampler="heun", steps=7, guidance=2.5, shift=2.0, apg=True, size=48)
    save_model(tmp_path / "m", model, sample=sample, text_encoder="minilm", extra={"trained_steps": 12})
    loaded, cfg = load_model(tmp_path / "m")
    assert not loaded.training
    assert loaded.config == model.config
    assert cfg["sample"] == sample and cfg["trained_steps"] == 12 and cfg["text_encoder"] == "minilm"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(_outputs(model, context), _outputs(loaded, context))


def test_saving_twice_overwrites_in_place(tmp_path, make_dit):
    save_model(tmp_path / "m", make_dit(perturb=True, seed=0))
    newer = make_dit(perturb=True, seed=5)
    save_model(tmp_path / "m", newer)
    loaded, _ = load_model(tmp_path / "m")
    assert all(torch.equal(v, newer.state_dict()[k]) for k, v in loaded.state_dict().items())


def _saved(tmp_path, make_dit):
    folder = tmp_path / "m"
    save_model(folder, make_dit(perturb=True))
    return folder


def _raises_naming(path, fn):
    with pytest.raises(ValueError) as e:
        fn()
    assert str(path) in str(e.value), str(e.value)
    return str(e.value)


def test_missing_folder_raises_naming_the_config(tmp_path):
    _raises_naming(tmp_path / "nope" / CONFIG_FILE, lambda: load_model(tmp_path / "nope"))


def test_missing_weights_raise_naming_the_file(tmp_path, make_dit):
    folder = _saved(tmp_path, make_dit)
    (folder / MODEL_FILE).unlink()
    _raises_naming(folder / MODEL_FILE, lambda: load_model(folder))


@pytest.mark.parametrize("corrupt", ["garbage", "truncated", "empty"])
def test_corrupt_weights_raise_naming_the_file(tmp_path, make_dit, corrupt):
    folder = _saved(tmp_path, make_dit)
    path = folder / MODEL_FILE
    data = path.read_bytes()
    path.write_bytes({"garbage": bytes(range(256)) * 40, "truncated": data[: len(data) // 2], "empty": b""}[corrupt])
    _raises_naming(path, lambda: load_model(folder))


@pytest.mark.parametrize("data", [b'{"model": {"width": 32,', b"not json at all", b"\xff\xfe\x00garbage", b""])
def test_invalid_json_config_raises_naming_the_file(tmp_path, make_dit, data):
    folder = _saved(tmp_path, make_dit)
    (folder / CONFIG_FILE).write_bytes(data)
    _raises_naming(folder / CONFIG_FILE, lambda: load_model(folder))


@pytest.mark.parametrize("edit", [
    lambda c: c.pop("model"),
    lambda c: c["model"].update(widht=32),
    lambda c: c["model"].update(attention="flash"),
    lambda c: c.update(model=None),
    lambda c: c["sample"].update(sampler="ddim"),
])
def test_invalid_config_contents_raise_naming_the_file(tmp_path, make_dit, edit):
    folder = _saved(tmp_path, make_dit)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    edit(cfg)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    _raises_naming(folder / CONFIG_FILE, lambda: load_model(folder))


@pytest.mark.parametrize("key,value", [("width", 64), ("depth", 3), ("stem_channels", 0), ("patch_size", 4)])
def test_config_that_does_not_match_the_weights_raises_naming_the_file(tmp_path, make_dit, key, value):
    folder = _saved(tmp_path, make_dit)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["model"][key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    msg = _raises_naming(folder / MODEL_FILE, lambda: load_model(folder))
    assert "config" in msg


def test_writes_leave_no_temporary_files(tmp_path, make_dit):
    model = make_dit(perturb=True)
    folder = tmp_path / "m"
    for _ in range(2):
        save_model(folder, model)
    opt = torch.optim.AdamW(model.parameters())
    save_train_state(folder, 3, model, copy.deepcopy(model), opt, _config())
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE, STATE_FILE])


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, make_dit, monkeypatch):
    folder = _saved(tmp_path, make_dit)
    before = (folder / MODEL_FILE).read_bytes()

    def dying_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(ckpt, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        save_model(folder, make_dit(perturb=True, seed=9))
    assert (folder / MODEL_FILE).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE])
    load_model(folder)


def test_failed_json_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    target.write_text("old")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)  # the durable write every checkpoint file takes
    with pytest.raises(OSError):
        files.atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------
# training state
# ----------------------------------------------------------------------------


def _config() -> Config:
    return Config()  # only stored as metadata


def _train_steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(2, 3, 16, 16, generator=g)
        states = torch.randn(2, 3, model.config.text_dim, generator=g)
        loss = (model(x, torch.rand(2, generator=g), states) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _assert_modules_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_train_state_round_trip_restores_step_weights_and_adamw_exactly(tmp_path, make_dit):
    model = make_dit(perturb=True).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.8, 0.95))
    _train_steps(model, opt, 3, seed=0)
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 0.3)
    save_train_state(tmp_path, 17, model, ema, opt, _config())

    model2 = make_dit(perturb=True, seed=42).train()
    ema2 = copy.deepcopy(model2).requires_grad_(False)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0, weight_decay=0.5)
    assert load_train_state(tmp_path, model2, ema2, opt2) == 17
    _assert_modules_equal(model, model2)
    _assert_modules_equal(ema, ema2)

    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["state"].keys() == s2["state"].keys()
    for idx in s1["state"]:
        assert s1["state"][idx].keys() == s2["state"][idx].keys()
        for name, v in s1["state"][idx].items():
            w = s2["state"][idx][name]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, (idx, name)
    for g1, g2 in zip(s1["param_groups"], s2["param_groups"]):
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in g1.items()} == \
               {k: (list(v) if isinstance(v, tuple) else v) for k, v in g2.items()}

    # The decisive check: training continues bit-identically.
    _train_steps(model, opt, 2, seed=1)
    _train_steps(model2, opt2, 2, seed=1)
    _assert_modules_equal(model, model2)


def test_train_state_for_another_model_raises(tmp_path, make_dit):
    model = make_dit(perturb=True)
    opt = torch.optim.AdamW(model.parameters())
    save_train_state(tmp_path, 1, model, copy.deepcopy(model), opt, _config())
    other = make_dit(depth=1)
    with pytest.raises(ValueError, match="does not match"):
        load_train_state(tmp_path, other, copy.deepcopy(other), torch.optim.AdamW(other.parameters()))


def test_train_state_missing_or_foreign_raises(tmp_path, make_dit):
    model = make_dit()
    opt = torch.optim.AdamW(model.parameters())
    _raises_naming(tmp_path / STATE_FILE, lambda: load_train_state(tmp_path, model, model, opt))
    # a safetensors file without ditkit's metadata
    ckpt.atomic_save_tensors(tmp_path / STATE_FILE, {"a": torch.zeros(2)})
    _raises_naming(tmp_path / STATE_FILE, lambda: load_train_state(tmp_path, model, model, opt))


@pytest.mark.parametrize("names, needle", [
    (["pytorch_model.bin", "config.json"], r"holds only pickled weights \(pytorch_model.bin\); convert it to safetensors"),
    (["weights.pt", "extra.ckpt"], r"holds only pickled weights \(extra.ckpt, weights.pt\)"),
    (["config.json"], r"holds no weights \(\*.safetensors\)"),
])
def test_folders_without_safetensors_weights_are_refused_naming_what_they_hold(tmp_path, names, needle):
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match=needle):
        ckpt.require_safetensors_weights(tmp_path, "model folder")
    (tmp_path / "model.safetensors").write_bytes(b"x")  # safetensors beside a pickle: the pickle is never read
    ckpt.require_safetensors_weights(tmp_path, "model folder")
