"""LoRA adapters (ditkit.core.lora, Pipeline.load_lora, `generate --lora`, train.lora) on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_one_line_error, run_cli, tiny_dit_config
from safetensors.torch import load_file, save_file

import ditkit
from ditkit.core import lora
from ditkit.core.checkpoint import load_model, save_model
from ditkit.core.config import Config, SampleConfig
from ditkit.core.model import DiT
from ditkit.training.loop import TrainSettings, TrainingLoop

SAMPLE = SampleConfig(steps=2, guidance=2.0, size=32)
PROMPT = "a red circle"


def _perturbed(seed: int, **overrides) -> DiT:
    torch.manual_seed(seed)
    model = DiT(tiny_dit_config(text_dim=384, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _save_adapter(base_dir: Path, out: Path, seed: int = 0, **lora_kw) -> Path:
    """An adapter on base_dir's model whose A and B are random (a trained-looking, non-zero update)."""
    model, _ = load_model(base_dir)
    wrapped = lora.apply_lora(model, **{"rank": 2, "alpha": 4.0, **lora_kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return lora.save_adapter(wrapped, out, lora.base_info(wrapped, str(base_dir)))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("base") / "model", _perturbed(0), SAMPLE)


@pytest.fixture(scope="module")
def adapter_dir(base_dir, tmp_path_factory) -> Path:
    return _save_adapter(base_dir, tmp_path_factory.mktemp("lora") / "adapter")


def _images(pipe, prompts=(PROMPT, "two blue squares"), seed=0) -> torch.Tensor:
    return pipe.engine.generate(pipe.request(list(prompts), seed))


# ----------------------------------------------------------------------------
# the pipeline: scale, merge, unmerge, unload
# ----------------------------------------------------------------------------

def test_scale_zero_is_the_base_exactly_and_scale_one_is_not(base_dir, adapter_dir):
    pipe = ditkit.load(base_dir)
    base = _images(pipe)
    pipe.load_lora(adapter_dir, scale=0.0)
    assert torch.equal(_images(pipe), base)
    pipe.set_lora_scale(1.0)
    assert (_images(pipe) - base).abs().max() > 1e-2
    assert pipe.loras == [(str(adapter_dir), 1.0)]


def test_merge_matches_the_adapter_and_unmerge_unload_restore_exactly(base_dir, adapter_dir):
    pipe = ditkit.load(base_dir)
    base_model = pipe.model
    base = _images(pipe)
    pipe.load_lora(adapter_dir, scale=0.7)
    with_adapter = _images(pipe)
    pipe.merge_lora()
    assert not any(".lora_" in n for n, _ in pipe.model.named_parameters())  # plain Linear layers again
    merged = _images(pipe)
    assert (merged - with_adapter).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unmerge_lora"):
        pipe.load_lora(adapter_dir)
    pipe.unmerge_lora()
    assert torch.equal(_images(pipe), with_adapter)
    pipe.unload_lora()
    assert pipe.model is base_model and pipe.loras == []
    assert torch.equal(_images(pipe), base)


def test_two_adapters_add_up_and_int8_runs_with_an_unmerged_adapter(base_dir, adapter_dir, tmp_path):
    other = _save_adapter(base_dir, tmp_path / "other", seed=1)
    pipe = ditkit.load(base_dir)
    pipe.load_lora(adapter_dir, 0.5).load_lora(other, 0.5)
    both = _images(pipe)
    pipe.unload_lora().load_lora(adapter_dir, 0.5)
    assert (both - _images(pipe)).abs().max() > 1e-3
    int8 = pipe.engine.generate(pipe.request([PROMPT], 0, precision="int8"))
    assert torch.isfinite(int8).all()


def test_a_change_during_a_generation_leaves_that_generation_alone(base_dir, adapter_dir):
    """The server shares a pipeline across threads: a LoRA loaded while images are being sampled
    swaps in a new model for the next request; the running one finishes on the model it began with."""
    pipe = ditkit.load(base_dir)
    base = _images(pipe)

    def load_midway(info: dict) -> None:
        if not pipe.loras:
            pipe.load_lora(adapter_dir)

    during = pipe.engine.generate(pipe.request([PROMPT, "two blue squares"], 0), load_midway)
    assert pipe.loras and torch.equal(during, base)
    assert not torch.equal(_images(pipe), base)


def test_diffusers_names_are_aliases():
    assert ditkit.Pipeline.load_lora_weights is ditkit.Pipeline.load_lora
    assert ditkit.Pipeline.fuse_lora is ditkit.Pipeline.merge_lora
    assert ditkit.Pipeline.unfuse_lora is ditkit.Pipeline.unmerge_lora
    assert ditkit.Pipeline.unload_lora_weights is ditkit.Pipeline.unload_lora


# ----------------------------------------------------------------------------
# training: only the adapters learn
# ----------------------------------------------------------------------------

def test_only_adapter_parameters_receive_gradients_and_are_optimised(base_dir, context):
    model, _ = load_model(base_dir)
    wrapped = lora.apply_lora(model, rank=2, alpha=2.0, targets=["attn.qkv", "mlp.fc2"])
    loop = TrainingLoop(wrapped, TrainSettings(steps=1, lr=1e-3))
    states, mask = context(2, 5, 384)
    out = wrapped(torch.randn(2, 3, 32, 32), torch.rand(2), states, mask)
    out.square().mean().backward()
    with_grad = {n for n, p in wrapped.named_parameters() if p.grad is not None}
    adapters = {n for n, _ in wrapped.named_parameters() if ".lora_" in n}
    assert with_grad == adapters and len(adapters) == 2 * 2 * 2  # A and B of 2 targets in 2 blocks
    optimised = {id(p) for group in loop.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for n, p in wrapped.named_parameters() if n in adapters}


def test_fresh_adapters_leave_the_model_unchanged(base_dir, context):
    model, _ = load_model(base_dir)
    states, mask = context(2, 5, 384)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    before = model(x, t, states, mask)
    assert torch.equal(lora.apply_lora(model)(x, t, states, mask), before)


# ----------------------------------------------------------------------------
# the adapter folder
# ----------------------------------------------------------------------------

def test_save_and_load_round_trip_in_peft_format(base_dir, adapter_dir, context):
    assert sorted(p.name for p in adapter_dir.iterdir()) == sorted([lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS,
                                                                    lora.BASE_FILE])
    keys = load_file(str(adapter_dir / lora.ADAPTER_WEIGHTS))
    assert all(k.startswith("base_model.model.blocks.") and ".lora_" in k for k in keys)
    states, mask = context(1, 4, 384)
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    ours = lora.load_adapter(load_model(base_dir)[0], adapter_dir)
    # peft's own loader reads the same folder into the same model
    from peft import PeftModel

    theirs = PeftModel.from_pretrained(load_model(base_dir)[0], str(adapter_dir))
    with torch.no_grad():
        assert torch.equal(ours(x, t, states, mask), theirs(x, t, states, mask))
    # the saved A and B are the ones loaded
    loaded = {k: v for k, v in ours.state_dict().items() if ".lora_" in k}
    assert len(loaded) == len(keys)
    for k, v in keys.items():
        assert torch.equal(loaded[k.replace(".weight", ".lora0.weight")], v)


def test_an_embedded_adapter_resolves_by_name():
    names = lora.embedded_adapters()
    assert "shapes-64-lora-pink" in names and "shapes-64-lora-pink" not in ditkit.embedded_models()
    assert lora.resolve_adapter("shapes-64-lora-pink").is_dir()
    adapter = lora.read_adapter("shapes-64-lora-pink")
    assert adapter.base.name == "shapes-64"


# ----------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [math.nan, math.inf, "1"])
def test_scale_must_be_finite(base_dir, adapter_dir, scale):
    pipe = ditkit.load(base_dir)
    with pytest.raises(ValueError, match="LoRA scale must be a finite number"):
        pipe.load_lora(adapter_dir, scale=scale)
    assert pipe.loras == []


def test_an_adapter_for_another_base_is_refused(tmp_path, adapter_dir):
    same_config = save_model(tmp_path / "same-config", _perturbed(5), SAMPLE)
    with pytest.raises(ValueError, match="for another base.*other weights"):
        ditkit.load(same_config).load_lora(adapter_dir)
    wider = save_model(tmp_path / "wider", _perturbed(0, width=64), SAMPLE)
    with pytest.raises(ValueError, match=r"for another base.*differs.*\['width'\]"):
        ditkit.load(wider).load_lora(adapter_dir)


def _broken(adapter_dir: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in adapter_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_missing_or_corrupt_adapter_files_name_the_file(base_dir, adapter_dir, tmp_path):
    pipe = ditkit.load(base_dir)
    cases = {}
    f = _broken(adapter_dir, tmp_path, "no-weights")
    (f / lora.ADAPTER_WEIGHTS).unlink()
    cases[f] = "adapter_model.safetensors are missing"
    f = _broken(adapter_dir, tmp_path, "pickled")
    (f / lora.ADAPTER_WEIGHTS).rename(f / "adapter_model.bin")
    cases[f] = "never loads"
    f = _broken(adapter_dir, tmp_path, "corrupt")
    (f / lora.ADAPTER_WEIGHTS).write_bytes(b"not a safetensors file")
    cases[f] = "adapter_model.safetensors is corrupt"
    f = _broken(adapter_dir, tmp_path, "nan")
    tensors = load_file(str(f / lora.ADAPTER_WEIGHTS))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], math.nan)
    save_file(tensors, str(f / lora.ADAPTER_WEIGHTS))
    cases[f] = "holds NaN"
    f = _broken(adapter_dir, tmp_path, "no-config")
    (f / lora.ADAPTER_CONFIG).unlink()
    cases[f] = "adapter_config.json is missing"
    f = _broken(adapter_dir, tmp_path, "bad-json")
    (f / lora.ADAPTER_CONFIG).write_text("{not json")
    cases[f] = "adapter_config.json is not valid JSON"
    f = _broken(adapter_dir, tmp_path, "no-base")
    (f / lora.BASE_FILE).unlink()
    cases[f] = "ditkit_base.json is missing"
    f = _broken(adapter_dir, tmp_path, "bad-base")
    (f / lora.BASE_FILE).write_text(json.dumps({"base_model": "x"}))
    cases[f] = "ditkit_base.json is invalid"
    f = _broken(adapter_dir, tmp_path, "not-lora")
    cfg = json.loads((f / lora.ADAPTER_CONFIG).read_text())
    (f / lora.ADAPTER_CONFIG).write_text(json.dumps({**cfg, "peft_type": "LOHA"}))
    cases[f] = "'LOHA' adapter"
    f = _broken(adapter_dir, tmp_path, "shapes")
    tensors = load_file(str(f / lora.ADAPTER_WEIGHTS))
    tensors[first] = torch.zeros(3, 3)
    save_file(tensors, str(f / lora.ADAPTER_WEIGHTS))
    cases[f] = "does not fit the model"
    for folder, message in cases.items():
        with pytest.raises(ValueError, match=message) as e:
            pipe.load_lora(folder)
        assert str(folder) in str(e.value)
        assert pipe.loras == []
    with pytest.raises(ValueError, match="not an embedded adapter.*and not a folder"):
        pipe.load_lora(tmp_path / "nowhere")


def test_unknown_targets_and_bad_lora_settings_are_refused(base_dir):
    with pytest.raises(ValueError, match="unknown LoRA targets.*allowed: attn.qkv"):
        lora.apply_lora(load_model(base_dir)[0], targets=["final_linear"])
    for bad, message in [({"rank": 0}, "rank"), ({"dropout": 1.0}, "dropout"), ({"targets": "qkv"}, "targets"),
                         ({"alpha": math.nan}, "alpha"), ({"size": 2}, "unknown keys")]:
        with pytest.raises(ValueError, match=message):
            Config.from_dict({"train": {"init_from": "shapes-64", "lora": bad}})
    with pytest.raises(ValueError, match="init_from"):
        Config.from_dict({"train": {"lora": {}}})


# ----------------------------------------------------------------------------
# the CLI
# ----------------------------------------------------------------------------

def test_generate_with_lora_from_the_cli(base_dir, adapter_dir, tmp_path, capsys):
    args = ["generate", PROMPT, "--model", base_dir, "--seed", "3"]
    assert run_cli([*args, "-o", tmp_path / "base.png"], capsys)[0] == 0
    assert run_cli([*args, "--lora", f"{adapter_dir}:0", "-o", tmp_path / "zero.png"], capsys)[0] == 0
    assert run_cli([*args, "--lora", adapter_dir, "--lora", f"{adapter_dir}:-0.5", "-o", tmp_path / "two.png"],
                   capsys)[0] == 0
    assert (tmp_path / "zero.png").read_bytes() == (tmp_path / "base.png").read_bytes()
    assert (tmp_path / "two.png").read_bytes() != (tmp_path / "base.png").read_bytes()


def test_cli_bad_lora_inputs_are_one_line_errors(base_dir, adapter_dir, tmp_path, capsys):
    args = ["generate", PROMPT, "--model", base_dir, "-o", tmp_path / "x.png"]
    assert_one_line_error(*run_cli([*args, "--lora", f"{adapter_dir}:nan"], capsys)[::2], "LoRA scale", "nan")
    other = save_model(tmp_path / "other", _perturbed(7), SAMPLE)
    code, _, err = run_cli(["generate", PROMPT, "--model", other, "--lora", adapter_dir, "-o", tmp_path / "x.png"],
                           capsys)
    assert_one_line_error(code, err, "for another base")
    assert_one_line_error(*run_cli([*args, "--lora", tmp_path / "missing"], capsys)[::2], "unknown LoRA")
    assert not (tmp_path / "x.png").exists()


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_a_lora_training_run_from_the_cli_resumes_exactly(base_dir, tmp_path, capsys):
    base_cfg = json.loads((base_dir / "config.json").read_text())
    config = {"model": base_cfg["model"], "data": {"dataset": "shapes", "size": 32, "mix": {"extra_colors": 1.0}},
              "sample": base_cfg["sample"],
              "train": {"init_from": str(base_dir), "lora": {"rank": 2, "alpha": 4, "targets": ["attn.qkv", "mlp.fc1"]},
                        "steps": 4, "batch_size": 2, "lr": 1e-2, "warmup_steps": 1, "ema_decay": 0.5,
                        "precision": "fp32", "checkpoint_every": 1, "log_every": 1, "seed": 3}}
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(config))
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(["train", path, "--no-progress", "--set", f"train.output_dir={full}"], capsys)[0] == 0
    assert run_cli(["train", path, "--no-progress", "--set", f"train.output_dir={part}", "--set", "train.steps=2"],
                   capsys)[0] == 0
    assert [s for s, _ in _losses(part)] == [1, 2]
    code, out, _ = run_cli(["train", path, "--no-progress", "--resume", "--set", f"train.output_dir={part}"], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["step"] == 4
    assert _losses(part) == _losses(full) and len({loss for _, loss in _losses(full)}) == 4
    a, b = (load_file(str(run / "lora" / lora.ADAPTER_WEIGHTS)) for run in (full, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)  # the adapters learned something
    # the run's adapter loads onto its base and changes the images
    pipe = ditkit.load(base_dir)
    base = _images(pipe)
    assert (_images(pipe.load_lora(full / "lora")) - base).abs().max() > 0
