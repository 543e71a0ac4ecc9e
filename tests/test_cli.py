"""The CLI: every bad input of the foundation issue gives one line on stderr, exit 2,
no traceback and no output file; good input writes what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.cli.main import main

from conftest import assert_one_line_error, run_cli


def test_generate_writes_image(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "a.png"
    code, stdout, _ = run_cli(["generate", "a red circle", "-o", out, "--model", tiny_model_dir], capsys)
    assert code == 0 and out.is_file()
    assert Image.open(out).size == (32, 32)
    assert str(out) in stdout


def test_batch_generation_same_seed_same_images(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\ntwo blue squares\na green triangle\n")
    outs = []
    for name in ("d1", "d2"):
        code, _, _ = run_cli(["generate", "--prompts-file", prompts, "--out-dir", tmp_path / name,
                              "--model", tiny_model_dir, "--seed", 3], capsys)
        assert code == 0
        files = sorted((tmp_path / name).iterdir())
        assert [f.name for f in files] == ["0000.png", "0001.png", "0002.png"]
        outs.append([np.asarray(Image.open(f)) for f in files])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
    # image k of a batch equals the same prompt generated alone with seed + k
    code, _, _ = run_cli(["generate", "two blue squares", "-o", tmp_path / "one.png", "--model", tiny_model_dir,
                          "--seed", 4], capsys)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), outs[0][1])


@pytest.mark.parametrize("args,needle", [
    (["--sampler", "foo"], "allowed: euler, heun, dpm2m"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--size", "30"], "multiple of the model's patch size"),
    (["--size", "4096"], "between"),
    (["--precision", "fp64"], "allowed: fp32, bf16, int8, fp16"),
])
def test_bad_sampling_args(tiny_model_dir, tmp_path, capsys, args, needle):
    out = tmp_path / "x.png"
    code, _, err = run_cli(["generate", "a red circle", "-o", out, "--model", tiny_model_dir, *args], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_unknown_model_lists_embedded(tmp_path, capsys):
    code, _, err = run_cli(["generate", "x", "-o", tmp_path / "x.png", "--model", "no-such-model"], capsys)
    assert_one_line_error(code, err, "unknown model 'no-such-model'")


def test_output_in_missing_folder(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["generate", "x", "-o", tmp_path / "missing" / "x.png", "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_missing_and_empty_prompts_file(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["generate", "--prompts-file", tmp_path / "nope.txt", "--out-dir", tmp_path / "o",
                            "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli(["generate", "--prompts-file", empty, "--out-dir", tmp_path / "o",
                            "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, "no prompts")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    code, _, err = run_cli(["generate", "--prompts-file", binary, "--out-dir", tmp_path / "o",
                            "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, "unreadable")
    assert not (tmp_path / "o").exists()


def test_corrupt_weights(tiny_model_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file at all")
    out = tmp_path / "x.png"
    code, _, err = run_cli(["generate", "x", "-o", out, "--model", bad], capsys)
    assert_one_line_error(code, err, "model.safetensors", "corrupt")
    assert not out.exists()
    (bad / "model.safetensors").unlink()
    code, _, err = run_cli(["generate", "x", "-o", out, "--model", bad], capsys)
    assert_one_line_error(code, err, "missing")


def test_empty_prompt_is_unconditional_and_long_prompt_warns(tiny_model_dir, tmp_path, capsys):
    code, _, _ = run_cli(["generate", "", "-o", tmp_path / "u.png", "--model", tiny_model_dir], capsys)
    assert code == 0 and (tmp_path / "u.png").is_file()
    long_prompt = " ".join(["red circle"] * 200)
    with pytest.warns(UserWarning, match="truncated"):
        code, _, _ = run_cli(["generate", long_prompt, "-o", tmp_path / "l.png", "--model", tiny_model_dir], capsys)
    assert code == 0


def test_info_reports_parameters(tiny_model_dir, capsys):
    code, out, _ = run_cli(["info", tiny_model_dir], capsys)
    info = json.loads(out)
    assert code == 0 and info["parameters"] > 0 and info["config"]["model"]["width"] == 32


def test_eval_shapes_json_and_outputs(tiny_model_dir, tmp_path, capsys):
    code, out, _ = run_cli(["eval", "shapes", "--model", tiny_model_dir, "--per-category", 1, "--out-dir",
                            tmp_path / "ev"], capsys)
    res = json.loads(out)
    assert code == 0
    assert set(res["categories"]) == {"single_object", "two_object", "counting", "position"}
    assert 0.0 <= res["overall"] <= 1.0
    assert (tmp_path / "ev" / "grid.png").is_file() and len(list((tmp_path / "ev" / "images").iterdir())) == 4


def test_train_bad_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  stepz: 3\n")
    code, _, err = run_cli(["train", cfg], capsys)
    assert_one_line_error(code, err, "stepz", "allowed")
    code, _, err = run_cli(["train", tmp_path / "missing.yaml"], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_real_process_exit_code_and_debug(tmp_path):
    """Through a real process: exit 2, one stderr line, and --debug shows the traceback."""
    cmd = [sys.executable, "-m", "ditkit.cli.main", "generate", "x", "-o", str(tmp_path / "x.png"), "--model", "nope"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr
