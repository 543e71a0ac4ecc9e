"""Training: the loss goes down, resume replays an uninterrupted run exactly, configs validate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditkit.core.checkpoint import MODEL_FILE, STATE_FILE, load_model
from ditkit.core.config import Config, apply_overrides, load_config
from ditkit.core.encoders import get_text_encoder
from ditkit.core.model import DiT
from ditkit.training.train import train, training_loss


@pytest.fixture(scope="module")
def encoder():
    return get_text_encoder("minilm")


def _losses(folder) -> list[tuple]:
    """(step, loss, lr, grad_norm) of every loss line in log.jsonl (timings differ between runs)."""
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows if "loss" in r]


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / MODEL_FILE))


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(train_config, encoder):
    cfg = train_config(batch_size=4)
    torch.manual_seed(0)
    model = DiT(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    device = torch.device("cpu")
    with torch.no_grad():
        first = float(training_loss(model, cfg, encoder, 0, device))
        assert float(training_loss(model, cfg, encoder, 0, device)) == first  # the loss of a step is deterministic
    for _ in range(25):
        loss = training_loss(model, cfg, encoder, 0, device)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(training_loss(model, cfg, encoder, 0, device))
    assert last < 0.75 * first, (first, last)


def test_train_writes_a_loadable_model_and_a_log(train_config):
    cfg = train_config(steps=4)
    result = train(cfg, progress=False)
    out = Path(cfg.train.output_dir)
    assert result["step"] == 4
    assert [r[0] for r in _losses(out)] == [1, 2, 3, 4]
    assert all(r[1] > 0 for r in _losses(out))
    # lr 1e-3 with 2 warmup steps: step k of the warmup runs at (k + 1) / 2 of it, then constant
    assert [r[2] for r in _losses(out)] == pytest.approx([0.5e-3, 1e-3, 1e-3, 1e-3])
    model, saved = load_model(out / "model")
    assert saved["trained_steps"] == 4 and model.config == cfg.model
    assert (out / STATE_FILE).is_file()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_resume_after_stop_replays_the_uninterrupted_run(train_config):
    full = train_config("full")
    train(full, progress=False)
    part = train_config("part")
    assert train(part, progress=False, stop_after=3)["step"] == 3
    assert train(part, resume=True, progress=False)["step"] == 6
    out_full, out_part = Path(full.train.output_dir), Path(part.train.output_dir)
    assert [r[0] for r in _losses(out_full)] == list(range(1, 7))
    assert _losses(out_part) == _losses(out_full)
    a, b = _weights(out_full), _weights(out_part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Killed(Exception):
    pass


def _kill_at(step):
    def on_step(done, loss):
        if done == step:
            raise _Killed

    return on_step


def test_resume_after_a_kill_between_checkpoints_replays_the_uninterrupted_run(train_config):
    """Killed at step 5 with the last checkpoint at step 4: the log lines past step 4 are dropped and replayed."""
    full = train_config("full", steps=7, checkpoint_every=2)
    train(full, progress=False)
    part = train_config("part", steps=7, checkpoint_every=2)
    with pytest.raises(_Killed):
        train(part, progress=False, on_step=_kill_at(6))
    assert [r[0] for r in _losses(Path(part.train.output_dir))] == [1, 2, 3, 4, 5]
    train(part, resume=True, progress=False)
    assert _losses(Path(part.train.output_dir)) == _losses(Path(full.train.output_dir))
    a, b = _weights(Path(full.train.output_dir)), _weights(Path(part.train.output_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_kill_before_the_first_checkpoint_replays_the_uninterrupted_run(train_config):
    """Killed before any checkpoint exists, `--resume` starts over; the log must not keep the dead run's lines."""
    full = train_config("full", steps=4, checkpoint_every=3)
    train(full, progress=False)
    part = train_config("part", steps=4, checkpoint_every=3)
    with pytest.raises(_Killed):
        train(part, progress=False, on_step=_kill_at(3))
    assert not (Path(part.train.output_dir) / STATE_FILE).exists()
    train(part, resume=True, progress=False)
    assert _losses(Path(part.train.output_dir)) == _losses(Path(full.train.output_dir))


def test_refuses_an_output_dir_that_holds_a_run(train_config):
    cfg = train_config(steps=2)
    train(cfg, progress=False)
    out = Path(cfg.train.output_dir)
    log_before, state_before = (out / "log.jsonl").read_bytes(), (out / STATE_FILE).read_bytes()
    with pytest.raises(ValueError, match=STATE_FILE) as e:
        train(cfg, progress=False)
    assert "resume" in str(e.value)
    assert (out / "log.jsonl").read_bytes() == log_before and (out / STATE_FILE).read_bytes() == state_before


def test_text_dim_mismatch_raises(train_config):
    cfg = train_config(steps=1)
    cfg.model.text_dim = 16
    with pytest.raises(ValueError, match="384"):
        train(cfg, progress=False)


# ----------------------------------------------------------------------------
# config parsing
# ----------------------------------------------------------------------------


def test_apply_overrides_parses_yaml_scalars():
    d = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.0002", "model.depth=4", "train.precision=fp32",
                                                  "sample.apg=true", "text_encoder=/models/t5", "model.mlp_ratio=2.5"])
    assert d["train"] == {"lr": 0.0002, "precision": "fp32"}
    assert d["model"] == {"depth": 4, "mlp_ratio": 2.5}
    assert d["sample"] == {"apg": True}
    assert d["text_encoder"] == "/models/t5"
    cfg = Config.from_dict(d)
    assert cfg.train.lr == 0.0002 and cfg.model.depth == 4 and cfg.sample.apg is True


def test_override_in_scientific_notation_is_a_float():
    cfg = Config.from_dict(apply_overrides({}, ["train.lr=1e-4"]))
    assert cfg.train.lr == 1e-4


def test_wrongly_typed_value_raises_value_error():
    with pytest.raises(ValueError, match="lr"):
        Config.from_dict(apply_overrides({}, ["train.lr=abc"]))


@pytest.mark.parametrize("bad", ["train.lr", "=3"])
def test_malformed_override_raises(bad):
    with pytest.raises(ValueError):
        Config.from_dict(apply_overrides({}, [bad]))


def test_override_into_a_scalar_raises():
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"text_encoder": "minilm"}, ["text_encoder.path=x"])


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,override,allowed", [
    ("train:\n  lrr: 0.1\n", [], "'batch_size'"),
    ("train:\n  lr: 0.1\n", ["train.lrr=0.1"], "'batch_size'"),
    ("model:\n  widht: 32\n", [], "'width'"),
    ("data:\n  sise: 32\n", [], "'size'"),
    ("sample:\n  stepz: 3\n", [], "'steps'"),
    ("trian:\n  lr: 0.1\n", [], "'train'"),
])
def test_unknown_keys_raise_listing_allowed_ones(tmp_path, text, override, allowed):
    with pytest.raises(ValueError, match="unknown") as e:
        load_config(_yaml(tmp_path, text), override)
    assert allowed in str(e.value)


@pytest.mark.parametrize("override,options", [
    ("model.attention=flash", ["softmax", "linear"]),
    ("train.precision=fp16", ["fp32", "bf16"]),
    ("sample.sampler=ddim", ["euler", "heun", "dpm2m"]),
    ("data.dataset=mnist", ["shapes"]),
])
def test_unknown_choices_list_the_options(tmp_path, override, options):
    with pytest.raises(ValueError) as e:
        load_config(_yaml(tmp_path, "{}\n"), [override])
    assert all(o in str(e.value) for o in options)


@pytest.mark.parametrize("override,match", [
    ("train.steps=0", "train.steps"), ("train.cfg_dropout=1.0", "cfg_dropout"), ("train.lr=-0.1", "train.lr"),
    ("data.size=16", "data.size"), ("train.ema_decay=1.5", "ema_decay"),
    ("data.mix.colors=1", "data.mix: unknown mix categories"), ("data.mix.position=-1", "data.mix.*>= 0"),
    ("data.mix=0.5", "data.mix must be a mapping"),
])
def test_out_of_range_values_raise(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        load_config(_yaml(tmp_path, "{}\n"), [override])


def test_data_mix_is_read_from_overrides_and_refused_for_digits(tmp_path):
    cfg = load_config(_yaml(tmp_path, "{}\n"), ["data.mix.position=0.5"])
    assert cfg.data.mix == {"position": 0.5}
    with pytest.raises(ValueError, match="dataset 'digits' has none"):
        load_config(_yaml(tmp_path, "{}\n"), ["data.dataset=digits", "data.mix.position=0.5"])


def test_bad_files_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(_yaml(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ValueError, match="mapping"):
        load_config(_yaml(tmp_path, "- a\n- b\n"))
    with pytest.raises(ValueError, match="mapping"):
        load_config(_yaml(tmp_path, "train: 3\n"))


@pytest.mark.parametrize("name", ["shapes-64", "shapes-64-gpu", "shapes-64-inpaint", "shapes-upscale", "digits-32"])
def test_shipped_config_loads_and_round_trips(tmp_path, name):
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(path, ["train.steps=10", "model.depth=2"])
    from ditkit.core.conditions import check_task

    check_task(cfg.train.task, cfg.model.cond_channels)
    assert cfg.train.steps == 10 and cfg.model.depth == 2 and cfg.model.text_dim == 384
    assert cfg.data.size == cfg.model.sample_size == cfg.sample.size
    assert Config.from_dict(cfg.to_dict()) == cfg
    # train() writes config.yaml as JSON, which is YAML too: it must load back.
    (tmp_path / "config.yaml").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "config.yaml") == cfg


def test_learning_rate_schedule_warmup_stable_cooldown():
    from ditkit.core.config import Config
    from ditkit.training.train import lr_at

    cfg = Config.from_dict({"train": {"steps": 100, "lr": 1.0, "warmup_steps": 10, "cooldown_steps": 20}})
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(lr == pytest.approx(1.0) for lr in lrs[10:80])
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))  # strictly decreasing cooldown
    assert lrs[99] == pytest.approx(1 / 20)


# ----------------------------------------------------------------------------
# the one training loop: parameter groups, and who runs on it
# ----------------------------------------------------------------------------


def test_parameter_groups_exempt_norms_biases_and_tables_from_weight_decay(make_dit):
    from ditkit.training.loop import parameter_groups

    model = make_dit(positions="rope+abs", depth=2)
    decay, exempt = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    names = dict(model.named_parameters())
    assert sorted(decay["names"] + exempt["names"]) == sorted(names)  # every parameter exactly once
    expected_exempt = {n for n, p in names.items() if p.ndim == 1}  # biases, norm gains (RMSNorm q/k, cross LayerNorm)
    expected_exempt |= {"blocks.0.scale_shift_table", "blocks.1.scale_shift_table", "final_table", "abs_pos.weight"}
    assert set(exempt["names"]) == expected_exempt
    assert {"blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.0.attn.q_norm.weight",
            "blocks.0.attn.qkv.bias", "t_embed.0.bias"} <= set(exempt["names"])
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "blocks.1.cross_attn.kv.weight",
            "adaln_single.1.weight", "patch_embed.weight", "final_linear.weight"} <= set(decay["names"])
    assert len(exempt["names"]) == len(expected_exempt) and len(decay["names"]) == len(names) - len(expected_exempt)
    # in model order within each group, so optimizer state indices follow the model
    order = list(names)
    assert decay["names"] == sorted(decay["names"], key=order.index)


def test_weight_decay_shrinks_only_the_decayed_group(make_dit):
    """With zero gradients an AdamW step only applies the decoupled decay p *= 1 - lr * wd."""
    from ditkit.training.loop import TrainingLoop, TrainSettings, parameter_groups

    model = make_dit(perturb=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loop = TrainingLoop(model, TrainSettings(steps=1, lr=0.1, weight_decay=0.5))
    loop.run(lambda step: sum(p.sum() for p in model.parameters()) * 0.0)
    decay, exempt = parameter_groups(model, 0.5)
    after = dict(model.named_parameters())
    assert all(torch.allclose(after[n], before[n] * (1 - 0.1 * 0.5)) for n in decay["names"])
    assert all(torch.equal(after[n], before[n]) for n in exempt["names"])


def test_train_runs_its_steps_in_the_one_loop(train_config, monkeypatch):
    from ditkit.training import loop as loop_module

    calls = []
    real_run = loop_module.TrainingLoop.run

    def spy(self, loss_fn, **kw):
        calls.append(self)
        return real_run(self, loss_fn, **kw)

    monkeypatch.setattr(loop_module.TrainingLoop, "run", spy)
    assert train(train_config(steps=2), progress=False)["step"] == 2
    assert len(calls) == 1 and isinstance(calls[0].model, DiT) and calls[0].ema is not None


def test_no_trainer_keeps_its_own_optimizer_step():
    """zero_grad / backward / step exist once, in training/loop.py."""
    import ditkit.accel.distill
    import ditkit.accel.reflow
    import ditkit.training.train

    for module in (ditkit.training.train, ditkit.accel.distill, ditkit.accel.reflow):
        text = Path(module.__file__).read_text()
        assert not any(w in text for w in ("zero_grad", ".backward(", "AdamW(", "clip_grad_norm_")), module.__name__


def test_lr_schedule_of_the_loop_at_hand_computed_points():
    from ditkit.training.loop import TrainSettings, lr_at

    s = TrainSettings(steps=10, lr=2.0, warmup_steps=4, cooldown_steps=5)
    assert [lr_at(k, s) for k in range(10)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 1.6, 1.2, 0.8, 0.4])


def test_resume_moves_a_state_saved_before_parameter_groups_into_them(tmp_path, make_dit):
    """A run folder written when AdamW had one group of all parameters still resumes exactly."""
    from ditkit.core.checkpoint import save_train_state
    from ditkit.training.loop import TrainingLoop, TrainSettings

    model = make_dit(perturb=True)
    old = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sum((p ** 2).sum() for p in model.parameters()).backward()
    old.step()
    save_train_state(tmp_path, 7, model, copy.deepcopy(model), old, Config())
    fresh = make_dit()
    loop = TrainingLoop(fresh, TrainSettings(steps=10, lr=1e-3, ema_decay=0.9))
    assert len(loop.optimizer.param_groups) == 2
    assert loop.resume(tmp_path) == 7
    saved = {n: old.state[p] for n, p in model.named_parameters()}
    for n, p in fresh.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n])
        assert all(torch.equal(loop.optimizer.state[p][k], saved[n][k]) for k in ("exp_avg", "exp_avg_sq", "step"))


# ----------------------------------------------------------------------------
# leftovers of a kill, and what --resume needs
# ----------------------------------------------------------------------------

def test_resume_removes_our_orphaned_temp_files_and_keeps_look_alikes(train_config):
    """A kill mid-write leaves atomic_write's temporary files (tests/test_resume_kill.py kills a
    real process); on resume they go, while a user's files with similar names stay."""
    cfg = train_config(steps=2)
    train(cfg, progress=False)
    out = Path(cfg.train.output_dir)
    ours = [out / ".train_state.safetensors.ditkit-ab12cd34.tmp", out / "model" / ".model.safetensors.ditkit-x_9y8z7w.tmp",
            out / ".loss.png.ditkit-qwertyui.tmp.png"]
    theirs = [out / ".train_state.safetensors.tmp", out / "model" / ".model.safetensors.mine.tmp",
              out / "model" / "model.safetensors.ditkit-ab12cd34.tmp"]
    for p in ours + theirs:
        p.write_bytes(b"left behind")
    cfg.train.steps = 3
    train(cfg, resume=True, progress=False)
    assert [p for p in ours if p.exists()] == []
    assert all(p.read_bytes() == b"left behind" for p in theirs)


def test_resume_without_a_run_folder_is_an_error_naming_it(train_config, tmp_path, capsys):
    import yaml

    from ditkit.cli.main import main

    cfg = train_config("never-ran")
    out = Path(cfg.train.output_dir)
    with pytest.raises(ValueError, match=f"nothing to resume: the run folder {out} .*does not exist"):
        train(cfg, resume=True, progress=False)
    assert not out.exists()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    code = main(["train", str(config), "--resume", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(out) in err[0] and "nothing to resume" in err[0], err
    assert not out.exists()
    out.mkdir()  # a folder without a run in it is no run either
    with pytest.raises(ValueError, match="holds no run"):
        train(cfg, resume=True, progress=False)


@pytest.mark.parametrize("argv", [["train", "{dir}"], ["distill", "--config", "{dir}", "-o", "{dir}/student"]])
def test_a_folder_given_as_the_config_file_says_so(tmp_path, capsys, argv):
    from ditkit.cli.main import main

    code = main([a.format(dir=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{str(tmp_path)!r} is a folder" in err[0], err
    assert "does not exist" not in err[0]
