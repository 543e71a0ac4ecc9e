"""The emoji dataset (ditkit.data.emoji, `ditkit data emoji`) and its benchmark
(ditkit.evaluation.emoji_eval, `ditkit eval emoji`).

The rendering tests need Debian's fonts-noto-color-emoji (`make emoji-font` installs it, as
`make test` does); without the font file they are skipped. The benchmark tests use synthetic
folders and need no font."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from ditkit.data import emoji
from ditkit.data.emoji import Emoji
from ditkit.evaluation.emoji_eval import benchmark, nearest_real, prompt_fidelity, score

from conftest import assert_one_line_error, run_cli

needs_font = pytest.mark.skipif(not emoji.FONT_PATH.is_file(),
                                reason=f"{emoji.FONT_PATH} is absent: install Debian's {emoji.FONT_PACKAGE} "
                                       "(make emoji-font)")

APPLE, ROCKET, HEART = 0x1F34E, 0x1F680, 0x2764


@pytest.fixture(scope="module")
def font():
    return emoji.load_font()


def test_captions_are_lower_case_unicode_names_of_whole_emoji():
    assert emoji.emoji_name(APPLE) == "red apple"
    assert emoji.emoji_name(ROCKET) == "rocket"
    assert emoji.emoji_name(HEART) == "heavy black heart"
    assert Emoji(APPLE, "red apple").stem == "red-apple" and Emoji(APPLE, "red apple").label == "U+1F34E"
    # pieces of flags, skin tones, keycaps and ZWJ sequences are not emoji on their own
    for cp in (0x1F1E6, 0x1F3FB, 0x1F9B0, 0x20E3, 0x200D, 0xFE0F):
        assert emoji.emoji_name(cp) is None, hex(cp)


@needs_font
def test_a_glyph_renders_centered_on_white_and_the_same_every_time(font):
    apple = emoji.render_emoji(font, APPLE)
    assert apple.mode == "RGB" and apple.size == (emoji.SIZE, emoji.SIZE)
    a = np.asarray(apple).astype(int)
    assert (a[0, 0] == 255).all() and (a[-1, -1] == 255).all()  # white background
    red = (a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)
    assert red.mean() > 0.2  # a red apple fills much of the frame
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() - 31.5) < 6 and abs(ys.mean() - 31.5) < 8  # centered
    assert np.array_equal(np.asarray(emoji.render_emoji(font, APPLE)), a)
    assert emoji.render_emoji(font, 0x2100) is None  # ACCOUNT OF: a named symbol the font has no glyph for
    with pytest.raises(ValueError, match="size"):
        emoji.render_emoji(font, APPLE, 4)


@needs_font
def test_render_all_keeps_named_emoji_with_glyphs_sorted_by_name(font):
    items = emoji.render_all(font, 32, [ROCKET, 0x1F1E6, APPLE, 0x2100, 0x1F3FB, HEART, 0x41])
    assert [e.name for e, _ in items] == ["heavy black heart", "red apple", "rocket"]
    assert all(im.size == (32, 32) and np.asarray(im).min() < 255 for _, im in items)


def test_heldout_names_are_a_fixed_hash_choice():
    names = [f"thing {i}" for i in range(200)]
    held = emoji.heldout_names(names, 50)
    assert len(held) == 50 and held == sorted(held) and set(held) <= set(names)
    assert emoji.heldout_names(list(reversed(names)), 50) == held  # independent of the input order
    assert set(emoji.heldout_names(names, 10)) <= set(held)  # a smaller split is a subset
    assert emoji.heldout_names(names, 0) == []
    for bad in (200, -1, 2.5):
        with pytest.raises(ValueError, match="hold out|held-out"):
            emoji.heldout_names(names, bad)


@needs_font
def test_data_emoji_writes_train_heldout_and_manifest_atomically_and_deterministically(tmp_path, capsys):
    out = tmp_path / "emoji"
    code, stdout, err = run_cli(["data", "emoji", "-o", out, "--size", 32], capsys)
    assert code == 0, err
    manifest = json.loads((out / emoji.MANIFEST).read_text())
    train, held = manifest["train"], manifest["heldout"]
    assert len(held) == emoji.HELDOUT and len(train) > 1000 and manifest["count"] == len(train) + len(held)
    assert [h["name"] for h in held] == emoji.heldout_names([e["name"] for e in train + held])
    assert {"red apple", "rocket"} <= {e["name"] for e in train + held}
    for split, entries in (("train", train), ("heldout", held)):
        files = sorted(p.name for p in (out / split).iterdir())
        assert files == sorted(f"{e['name'].replace(' ', '-')}{ext}" for e in entries for ext in (".png", ".txt"))
        for e in entries:
            assert (out / e["file"]).with_suffix(".txt").read_text(encoding="utf-8") == e["name"]
    assert Image.open(next((out / "train").glob("*.png"))).size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emoji"]  # no temporary folder left
    assert f"to {out}" in stdout and str(out / "train") in stdout
    # the same command writes the same bytes
    again = tmp_path / "again"
    assert run_cli(["data", "emoji", "-o", again, "--size", 32], capsys)[0] == 0
    for p in sorted(out.rglob("*.*")):
        assert (again / p.relative_to(out)).read_bytes() == p.read_bytes(), p
    code, _, err = run_cli(["data", "emoji", "-o", out], capsys)
    assert_one_line_error(code, err, "already exists")


def test_data_emoji_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    code, _, err = run_cli(["data", "emoji", "-o", tmp_path / "e", "--font", tmp_path / "none.ttf"], capsys)
    assert_one_line_error(code, err, "apt-get install -y fonts-noto-color-emoji")
    code, _, err = run_cli(["data", "emoji", "-o", tmp_path / "no" / "e"], capsys)
    assert_one_line_error(code, err, "parent folder")
    code, _, err = run_cli(["data", "emoji", "-o", tmp_path / "e", "--heldout", "-3"], capsys)
    assert_one_line_error(code, err, "--heldout")
    assert list(tmp_path.iterdir()) == []


@needs_font
def test_data_emoji_refuses_to_hold_out_everything(tmp_path, capsys):
    code, _, err = run_cli(["data", "emoji", "-o", tmp_path / "e", "--heldout", "100000", "--size", 16], capsys)
    assert_one_line_error(code, err, "at least one must stay for training")
    assert list(tmp_path.iterdir()) == []


# -- the benchmark --------------------------------------------------------------------------------


def synthetic_items(n: int, size: int = 32, seed: int = 0) -> list[tuple[Emoji, Image.Image]]:
    """n distinct blocky random images with captions "thing 0" ... (a stand-in for rendered emoji)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((size, size), Image.NEAREST)
        items.append((Emoji(0x1F300 + i, f"thing {i}"), image))
    return items


def test_nearest_real_finds_each_real_image_itself_and_ties_go_low():
    real = np.stack([np.asarray(im) for _, im in synthetic_items(12)])
    for metric in ("pixel", "lowpass"):
        assert nearest_real(real, real, metric).tolist() == list(range(12))
        assert prompt_fidelity(real, range(12), real, metric) == 1.0
        assert prompt_fidelity(real, [(i + 1) % 12 for i in range(12)], real, metric) == 0.0
    noisy = np.clip(real.astype(int) + np.random.default_rng(1).integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    assert prompt_fidelity(noisy, range(12), real) == 1.0  # a close copy still finds its original
    twins = np.concatenate([real[:1], real[:1]])
    assert nearest_real(real[:1], twins).tolist() == [0]
    with pytest.raises(ValueError, match="distance"):
        nearest_real(real, real, "cosine")
    with pytest.raises(ValueError, match="differ in size"):
        nearest_real(real, real[:, :16, :16])


def test_a_model_that_returns_the_real_image_scores_fidelity_one(tmp_path):
    emoji.write_emoji_dataset(tmp_path / "d", synthetic_items(20), heldout=5, font_path=tmp_path / "none.ttf")
    train, held = emoji.read_split(tmp_path / "d" / "train"), emoji.read_split(tmp_path / "d" / "heldout")
    assert (len(train.names), len(held.names)) == (15, 5)
    bench = benchmark(train, held, train_limit=6)
    assert bench.splits == ["train"] * 6 + ["heldout"] * 5 and len(bench.real) == 20
    assert bench.prompts[-5:] == held.names and bench.prompts[0] == train.names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FWD from a handful of images warns that it is unstable
        perfect = score(bench.real[bench.targets], bench, level=2)
        shifted = score(np.roll(bench.real[bench.targets], 1, axis=0), bench, level=2)
    assert perfect["fidelity"] == {s: {"pixel": 1.0, "lowpass": 1.0} for s in ("train", "heldout")}
    assert abs(perfect["fwd"]["all"]) < 1e-4 and perfect["n"] == {"train": 6, "heldout": 5}
    assert shifted["fidelity"]["train"]["pixel"] == 0.0  # every image is another name's
    assert [r["nearest_pixel"] for r in perfect["per_prompt"]] == bench.prompts


@pytest.mark.filterwarnings("ignore::ditkit.evaluation.fwd.FWDWarning")  # FWD from a handful of images
def test_eval_emoji_runs_on_a_tiny_folder_and_an_untrained_model(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    emoji.write_emoji_dataset(data, synthetic_items(14), heldout=4, font_path=tmp_path / "none.ttf")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["eval", "emoji", "--model", tiny_model_dir, "--data", data, "--out-dir", out,
                                 "--train-limit", 6], capsys)
    assert code == 0, err
    printed = json.loads(stdout)
    saved = json.loads((out / "results.json").read_text())
    assert printed["fidelity"] == saved["fidelity"] and saved["n"] == {"train": 6, "heldout": 4}
    for split in ("train", "heldout"):
        for value in saved["fidelity"][split].values():
            assert 0.0 <= value <= 1.0
        assert saved["fwd"][split] >= 0.0
    assert saved["chance"] == pytest.approx(1 / 14) and len(saved["per_prompt"]) == 10
    assert {r["nearest_pixel"] for r in saved["per_prompt"]} <= {f"thing {i}" for i in range(14)}
    grid = Image.open(out / "grid_heldout.png")
    assert grid.size == (2 + 8 * 34, 2 + 34)  # 4 real | generated pairs, 32 px tiles, 2 px padding
    assert (out / "grid_train.png").is_file() and (out / "report.md").is_file()


def test_eval_emoji_bad_inputs(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["eval", "emoji", "--data", tmp_path], capsys)
    assert_one_line_error(code, err, "--model")
    code, _, err = run_cli(["eval", "emoji", "--model", tiny_model_dir, "--data", tmp_path], capsys)
    assert_one_line_error(code, err, "no train/ folder")
    code, _, err = run_cli(["eval", "emoji", "--model", tiny_model_dir], capsys)
    assert_one_line_error(code, err, "--data")
    emoji.write_emoji_dataset(tmp_path / "big", synthetic_items(4, size=64), heldout=1, font_path=tmp_path / "x")
    code, _, err = run_cli(["eval", "emoji", "--model", tiny_model_dir, "--data", tmp_path / "big"], capsys)
    assert_one_line_error(code, err, "64x64", "samples at 32")
