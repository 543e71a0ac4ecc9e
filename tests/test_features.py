"""Precomputed text features (`ditkit data prepare`, data.features) and training on a folder
data set from the CLI: the features are the encoder's states bit for bit, so a run that reads
them takes exactly the loss sequence of a run that encodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ditkit.cli.data import prepare_features
from ditkit.cli.main import main
from ditkit.core.config import Config, DataConfig
from ditkit.core.encoders import get_text_encoder
from ditkit.data.features import INDEX_FILE, PrecomputedText, open_features

CAPTIONS = ["a red square", "two small blue circles next to a very large green triangle", "a cat",
            "a handwritten digit 7", "  a cat  ", "an emoji of a smiling face with sunglasses", "a cat", "x"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """8 captioned images (two share a caption, one caption has stray spaces)."""
    root = tmp_path_factory.mktemp("features") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, text in enumerate(CAPTIONS):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(text)
    return root


@pytest.fixture(scope="module")
def features(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "features"
    info = prepare_features(Config(data=DataConfig(kind="folder", path=str(folder), size=32)), out)
    assert info == {"captions": 7, "shards": 1, "dim": 384}  # 6 distinct stripped captions + ""
    return out


def test_precomputed_features_equal_the_encoder_bit_for_bit(features):
    encoder = get_text_encoder("minilm")
    stored = PrecomputedText(features, "minilm")
    assert stored.dim == encoder.dim == 384
    batches = [CAPTIONS, ["", "a cat", ""], [CAPTIONS[1]], ["x", CAPTIONS[5], "", "a red square"]]
    for batch in batches:
        want_states, want_mask = encoder.encode(batch, "cpu")
        got_states, got_mask = stored.encode(batch, "cpu")
        assert torch.equal(got_states, want_states) and torch.equal(got_mask, want_mask)
        assert got_states.dtype == torch.float32 and got_mask.dtype == torch.bool
    states, mask = stored.encode(["x", CAPTIONS[1]], "cpu")
    assert mask[0].sum() < mask[1].sum() and not states[0, ~mask[0]].any()  # zero padding after the short one


def test_missing_captions_and_wrong_folders_are_clear_errors(features, folder, tmp_path):
    stored = PrecomputedText(features)
    with pytest.raises(ValueError, match="caption 'a dog' is not in the precomputed text features"):
        stored.encode(["a cat", "a dog"], "cpu")
    with pytest.raises(ValueError, match="encoded with text encoder 'minilm'.*'/some/t5'"):
        PrecomputedText(features, "/some/t5")
    with pytest.raises(ValueError, match="not a features folder"):
        PrecomputedText(tmp_path)
    (folder.parent / "more").mkdir()
    Image.new("RGB", (32, 32)).save(folder.parent / "more" / "a.png")
    (folder.parent / "more" / "a.txt").write_text("a caption nobody prepared")
    other = DataConfig(kind="folder", path=str(folder.parent / "more"), size=32, features=str(features))
    with pytest.raises(ValueError, match="1 captions of the data are not in .* 'a caption nobody prepared'"):
        open_features(other, "minilm")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_config(path: Path, run_dir: Path, data: dict) -> Path:
    config = {
        "model": {"width": 32, "depth": 2, "heads": 2, "patch_size": 8, "sample_size": 32, "text_dim": 384,
                  "stem_channels": 4, "mlp_ratio": 2.0},
        "data": {"size": 32, **data},
        "train": {"output_dir": str(run_dir), "steps": 4, "batch_size": 4, "lr": 1.0e-3, "warmup_steps": 1,
                  "precision": "fp32", "checkpoint_every": 4, "log_every": 1, "eval_every": 0,
                  "cfg_dropout": 0.3, "seed": 0, "device": "cpu"},
        "sample": {"steps": 2, "size": 32},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_data_prepare_cli(folder, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", {"kind": "folder", "path": str(folder)})
    code, out, err = run_cli(["data", "prepare", str(config), "-o", str(tmp_path / "f")], capsys)
    assert code == 0, err
    assert json.loads(out)["captions"] == 7 and (tmp_path / "f" / INDEX_FILE).is_file()
    code, _, err = run_cli(["data", "prepare", str(config), "-o", str(tmp_path / "f")], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    builtin = write_config(tmp_path / "b.yaml", tmp_path / "run", {"dataset": "shapes"})
    code, _, err = run_cli(["data", "prepare", str(builtin), "-o", str(tmp_path / "g")], capsys)
    assert code == 2 and "no fixed caption list" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists() and not any(p.name.startswith(".g") for p in tmp_path.iterdir())
    missing = write_config(tmp_path / "m.yaml", tmp_path / "run", {"kind": "hf", "path": str(tmp_path / "nope")})
    code, _, err = run_cli(["data", "prepare", str(missing), "-o", str(tmp_path / "h")], capsys)
    assert code == 2 and "does not exist" in err


def test_train_on_a_folder_from_the_cli_with_and_without_features(folder, features, tmp_path, capsys):
    plain = write_config(tmp_path / "plain.yaml", tmp_path / "plain", {"kind": "folder", "path": str(folder)})
    code, out, err = run_cli(["train", str(plain), "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out)["step"] == 4 and (tmp_path / "plain" / "model" / "model.safetensors").is_file()
    cached = write_config(tmp_path / "cached.yaml", tmp_path / "cached",
                          {"kind": "folder", "path": str(folder), "features": str(features)})
    code, _, err = run_cli(["train", str(cached), "--no-progress"], capsys)
    assert code == 0, err
    first, second = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert len(first) == 4 and first == second
    saved = json.loads((tmp_path / "plain" / "model" / "config.json").read_text())["data"]
    assert saved["kind"] == "folder" and saved["dataset"] == ""


def test_training_skips_a_corrupt_image_and_logs_the_count(folder, tmp_path, capsys):
    broken = tmp_path / "images"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", {"kind": "folder", "path": str(broken)})
    with pytest.warns(UserWarning, match="2.png"):  # the warning names the file
        code, _, err = run_cli(["train", str(config), "--no-progress"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses(tmp_path / "run")) == 4 and sum(r.get("skipped", 0) for r in rows) >= 1
