"""`ditkit eval` beyond plain ShapesEval: best-of-N sweeps, the digits benchmark, FWD,
and the files each run leaves (JSON, PNG plots, a Markdown report)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.cli.main import main
from conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def tiny_digits_dir(tmp_path_factory):
    """A tiny model folder that says it was trained on digits (so its default verifier is `digits`)."""
    from ditkit.core.checkpoint import save_model
    from ditkit.core.config import SampleConfig
    from ditkit.core.model import DiT, DiTConfig

    torch.manual_seed(0)
    model = DiT(DiTConfig(width=32, depth=1, heads=2, patch_size=8, stem_channels=4, sample_size=32))
    with torch.no_grad():
        model.out_conv.weight.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("digits") / "model"
    save_model(folder, model, SampleConfig(steps=2, guidance=2.0, size=32), extra={"data": {"dataset": "digits", "size": 32}})
    return folder


def test_generate_best_of_uses_the_models_verifier(tiny_digits_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "d.png"
    code, stdout, _ = run_cli(["generate", "a handwritten digit 3", "-o", out, "--model", tiny_digits_dir,
                               "--best-of", 3], capsys)
    assert code == 0 and out.exists()
    # a model with no dataset has no default verifier: one line, no file
    out2 = tmp_path / "s.png"
    code, _, err = run_cli(["generate", "a red circle", "-o", out2, "--model", tiny_model_dir, "--best-of", 2], capsys)
    assert_one_line_error(code, err, "--verifier")
    assert not out2.exists()
    # the digits verifier refuses a prompt that names no digit
    code, _, err = run_cli(["generate", "a red circle", "-o", out2, "--model", tiny_digits_dir, "--best-of", 2], capsys)
    assert_one_line_error(code, err, "handwritten digit")
    assert not out2.exists()


def test_eval_shapes_best_of_writes_curve_and_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "scaling"
    code, stdout, _ = run_cli(["eval", "shapes", "--model", tiny_model_dir, "--per-category", 1,
                               "--best-of", "1,2", "--out-dir", out], capsys)
    assert code == 0
    rows = json.loads(stdout)["rows"]
    assert [r["best_of"] for r in rows] == [1, 2]
    assert rows[1]["overall"] >= rows[0]["overall"]  # the verifier is the judge: more candidates never hurt
    for name in ["results.json", "scaling.png", "grid.png", "report.md"]:
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "ditkit eval shapes" in report and "| N |" in report


def test_eval_shapes_writes_plot_and_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    code, _, _ = run_cli(["eval", "shapes", "--model", tiny_model_dir, "--per-category", 1, "--out-dir", out], capsys)
    assert code == 0
    assert (out / "scores.png").stat().st_size > 0
    assert "ShapesEval" in (out / "report.md").read_text()


def test_eval_digits_writes_scores_plots_and_report(tiny_digits_dir, tmp_path, capsys):
    out = tmp_path / "digits"
    code, stdout, _ = run_cli(["eval", "digits", "--model", tiny_digits_dir, "--per-digit", 1, "--no-fwd",
                               "--out-dir", out], capsys)
    assert code == 0
    res = json.loads(stdout)
    assert 0 <= res["accuracy"] <= 1 and len(res["per_digit"]) == 10 and res["n"] == 10
    for name in ["results.json", "grid.png", "per_digit.png", "confusion.png", "report.md"]:
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("args,needle", [
    (["eval", "digits", "--per-digit", "0"], "--per-digit"),
    (["eval", "shapes", "--best-of", "0,2"], "--best-of"),
    (["eval", "shapes", "--best-of", "2", "--verifier", "nope"], "unknown verifier"),
    (["eval", "digits", "--out-dir", "/nonexistent-dir-xyz/out"], "does not exist"),
])
def test_eval_bad_input(args, needle, tiny_model_dir, capsys):
    code, _, err = run_cli([*args, "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, needle)


def _image_folder(path, n: int, seed: int, size: int = 32):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_eval_fwd_folders_stats_and_model(tiny_model_dir, tmp_path, capsys):
    a, b = _image_folder(tmp_path / "a", 20, 0), _image_folder(tmp_path / "b", 20, 1)
    stats = tmp_path / "a.npz"
    code, stdout, _ = run_cli(["eval", "fwd", a, b, "--save-stats", stats, "--out-dir", tmp_path / "r"], capsys)
    assert code == 0
    d_ab = json.loads(stdout)["fwd"]
    assert d_ab > 0 and stats.exists() and (tmp_path / "r" / "report.md").exists()
    code, stdout, _ = run_cli(["eval", "fwd", stats, b], capsys)  # saved statistics stand in for the folder
    assert code == 0 and json.loads(stdout)["fwd"] == pytest.approx(d_ab)
    code, stdout, _ = run_cli(["eval", "fwd", a, a], capsys)
    assert abs(json.loads(stdout)["fwd"]) < 1e-6
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    code, stdout, _ = run_cli(["eval", "fwd", "--model", tiny_model_dir, "--reference", b, "--num", 4,
                               "--prompts-file", prompts], capsys)
    assert code == 0 and json.loads(stdout)["n_a"] == 4
    code, _, err = run_cli(["eval", "fwd", "--model", tiny_model_dir, "--reference", b, "--num", 4], capsys)
    assert_one_line_error(code, err, "--prompts-file")  # no dataset recorded, so no default prompts


def test_eval_clears_orphaned_temporaries_in_out_dir(tmp_path, capsys):
    """A killed earlier eval left temporary files in --out-dir and its images/: the next run
    removes those (ditkit's names only) and keeps the user's files."""
    a, b = _image_folder(tmp_path / "a", 12, 0), _image_folder(tmp_path / "b", 12, 1)
    out = tmp_path / "r"
    (out / "images").mkdir(parents=True)
    orphans = [out / ".results.json.ditkit-ab12cd34.tmp", out / "images" / ".0003.png.ditkit-zz99yy88.tmp.png"]
    users = [out / ".results.json.tmp", out / "images" / ".0003.png.swp", out / "notes.txt"]
    for path in orphans + users:
        path.write_bytes(b"x")
    code, _, _ = run_cli(["eval", "fwd", a, b, "--out-dir", out], capsys)
    assert code == 0
    assert not any(p.exists() for p in orphans)
    assert all(p.read_bytes() == b"x" for p in users)
    assert json.loads((out / "results.json").read_text())["n_a"] == 12


def test_eval_fwd_bad_input(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    a = _image_folder(tmp_path / "a", 4, 0)
    for args, needle in [
        ([empty, a], "no"),
        ([a], "two image folders"),
        ([a, a, "--save-stats", tmp_path / "s.txt"], ".npz"),
        ([a, tmp_path / "missing.npz"], "does not exist"),
        (["--model", tiny_model_dir], "--reference"),
    ]:
        code, _, err = run_cli(["eval", "fwd", *args], capsys)
        assert_one_line_error(code, err, needle)


def test_eval_digits_reports_fwd_against_an_equal_size_real_baseline(tiny_digits_dir, tmp_path, capsys):
    code, stdout, _ = run_cli(["eval", "digits", "--model", tiny_digits_dir, "--per-digit", 2], capsys)
    assert code == 0
    f = json.loads(stdout)["fwd"]
    assert f["images"] == 20  # the real-train baseline uses as many images as were generated
    assert f["generated_vs_test"] > f["train_vs_test"] > 0  # an untrained model is further from real digits
    assert f["ratio"] == pytest.approx(f["generated_vs_test"] / f["train_vs_test"])
