"""`ditkit generate --prompts-file F --out-dir D` streams: each batch is written (atomically, one
file at a time) as soon as it is sampled, the images are exactly those of one in-memory
Pipeline.generate call, and an old run's numbered images are refused unless --overwrite."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ditkit
from ditkit.api import Pipeline
from ditkit.core.files import is_orphan_temp

from conftest import assert_one_line_error, run_cli

PROMPTS = ["a red circle", "", "two blue squares", "a green triangle", "a yellow square to the left of a red circle"]


def mean_red(image: Image.Image, prompt: str) -> float:
    """A verifier for best-of tests (the CLI imports it as test_batch_output:mean_red)."""
    return float(np.asarray(image)[..., 0].mean())


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(p if p else "   " for p in ["a red circle", *PROMPTS[2:]]) + "\n\n")
    return path


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 4, so a few prompts span several batches."""
    monkeypatch.setattr("ditkit.cli.generate.BATCH_SIZE", 4)
    return 4


def pixels(folder):
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def file_prompts():
    return ["a red circle", *PROMPTS[2:]]  # the blank line is skipped


@pytest.mark.parametrize("extra,kwargs", [
    ([], {}),
    (["--best-of", "3", "--verifier", "test_batch_output:mean_red"], {"best_of": 3, "verifier": mean_red}),
])
def test_streamed_images_equal_one_in_memory_run(tiny_model_dir, prompts_file, tmp_path, capsys, small_batches,
                                                  extra, kwargs):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["generate", "--prompts-file", prompts_file, "--out-dir", out, "--model",
                                 tiny_model_dir, "--seed", 5, "--num-images", 3, *extra], capsys)
    assert code == 0, err
    n = len(file_prompts()) * 3
    assert sorted(p.name for p in out.iterdir()) == [f"{i:04d}.png" for i in range(n)]
    reference = ditkit.load(str(tiny_model_dir)).generate(file_prompts(), num_images=3, seed=5,
                                                         batch_size=small_batches, **kwargs)
    got = pixels(out)
    assert len(got) == len(reference) == n
    for i, (a, b) in enumerate(zip(got, reference)):
        assert np.array_equal(a, np.asarray(b)), i
    assert len({a.tobytes() for a in got}) == n  # the seeds differ, so do the images
    # stderr is not a terminal here: one plain line per batch, the last one saying all are written
    lines = [line for line in err.splitlines() if line.startswith("generate:")]
    assert lines[-1] == f"generate: {n}/{n} images written to {out}" and len(lines) > 1
    assert f"wrote {n} images" in stdout


def test_each_batch_is_on_disk_before_the_next_is_sampled(tiny_model_dir, prompts_file, tmp_path, capsys,
                                                          small_batches, monkeypatch):
    out = tmp_path / "out"
    real_generate = Pipeline.generate
    calls = []

    def generate_then_fail(self, prompts, **kwargs):
        calls.append(sorted(p.name for p in out.iterdir()))
        if len(calls) == 2:  # the second batch dies; the first must already be written, whole
            raise ValueError("the engine failed")
        return real_generate(self, prompts, **kwargs)

    monkeypatch.setattr(Pipeline, "generate", generate_then_fail)
    code, _, err = run_cli(["generate", "--prompts-file", prompts_file, "--out-dir", out, "--model",
                            tiny_model_dir, "--seed", 5, "--num-images", 2], capsys)
    progress = [line for line in err.splitlines() if line.startswith("generate:")]
    assert progress == [f"generate: 4/8 images written to {out}"]
    assert_one_line_error(code, "\n".join(line for line in err.splitlines() if line not in progress),
                          "the engine failed")
    first = [f"{i:04d}.png" for i in range(small_batches)]
    assert calls == [[], first]
    assert sorted(p.name for p in out.iterdir()) == first  # no temporaries, nothing of the failed batch
    monkeypatch.setattr(Pipeline, "generate", real_generate)
    reference = ditkit.load(str(tiny_model_dir)).generate(file_prompts()[:2], num_images=2, seed=5,
                                                         batch_size=small_batches)
    for a, b in zip(pixels(out), reference):
        assert np.array_equal(a, np.asarray(b))


def test_an_old_run_is_refused_unless_overwrite(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f"{i:04d}.png" for i in range(9)]  # an earlier, longer run
    for p in stale:
        Image.new("RGB", (32, 32)).save(p)
    keep = ["notes.txt", "grid.png", "0001.jpg", "12.png", "0001.png.bak", "cover-0001.png"]
    for name in keep:
        (out / name).write_bytes(b"the user's")
    orphan = out / ".0003.png.ditkit-abcd1234.tmp.png"  # left by a killed run
    orphan.write_bytes(b"half")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    code, _, err = run_cli(["generate", "--prompts-file", prompts_file, "--out-dir", out, "--model",
                            tiny_model_dir], capsys)
    assert_one_line_error(code, err, "already holds 9 numbered images", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused: nothing touched

    code, _, err = run_cli(["generate", "--prompts-file", prompts_file, "--out-dir", out, "--model",
                            tiny_model_dir, "--overwrite"], capsys)
    assert code == 0, err
    n = len(file_prompts())
    names = {p.name for p in out.iterdir()}
    assert names == {f"{i:04d}.png" for i in range(n)} | set(keep)  # 0004-0008 gone, the orphan too
    assert all((out / name).read_bytes() == b"the user's" for name in keep)
    assert not any(is_orphan_temp(name) for name in names)
    assert all(Image.open(out / f"{i:04d}.png").getextrema() != ((0, 0),) * 3 for i in range(n))


def test_a_folder_without_numbered_images_needs_no_overwrite(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "readme.txt").write_text("mine")
    code, _, err = run_cli(["generate", "--prompts-file", prompts_file, "--out-dir", out, "--model",
                            tiny_model_dir], capsys)
    assert code == 0, err
    assert (out / "readme.txt").read_text() == "mine"
    assert len(list(out.glob("[0-9][0-9][0-9][0-9].png"))) == len(file_prompts())


def test_a_bad_prompts_file_fails_before_the_folder_is_made(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"a red circle\n" * 50 + b"\xff\xfe broken\n")  # the error is past the first batch
    code, _, err = run_cli(["generate", "--prompts-file", bad, "--out-dir", tmp_path / "out", "--model",
                            tiny_model_dir], capsys)
    assert_one_line_error(code, err, "unreadable")
    assert not (tmp_path / "out").exists()


def test_prompts_are_read_lazily(tmp_path):
    """The file is streamed: the count is known before iteration, and iteration yields the same
    prompts as reading the whole file, line separators other than \\n included."""
    from ditkit.cli.common import PromptsFile, read_prompts_file

    path = tmp_path / "p.txt"
    text = "  a red circle \r\n\n\ttwo squares\u2028a triangle\x0cthree\n   \n"
    path.write_text(text, encoding="utf-8", newline="")
    prompts = PromptsFile(path)
    assert len(prompts) == 4
    assert list(prompts) == [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert read_prompts_file(str(path)) == list(prompts)
