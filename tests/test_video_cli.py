"""`ditkit video` from the command line (issue 29, "Use", "Tests" and "Bad input"): good runs
write a GIF, an MP4 or a folder of frames that decode to the clip asked for; every bad input is
one line on stderr, exit 2, no traceback and no output. A tiny random VideoDiT (4 frames of
32x32, 2 steps) keeps each run to a fraction of a second after the text encoder has loaded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ditkit.cli.main import build_parser
from ditkit.core.limits import MAX_FRAMES
from ditkit.core.video_io import mp4_frames, mp4_scale, read_video
from ditkit.data.video import still_caption

from conftest import assert_one_line_error, run_cli, save_tiny_video_model

PROMPT = "a red circle moving to the right"
FRAMES, SIZE = 4, 32  # the tiny model's clip length and frame side


@pytest.fixture(scope="module")
def video_model_dir(tmp_path_factory):
    return save_tiny_video_model(tmp_path_factory.mktemp("tiny-video") / "model", FRAMES, SIZE)


def video(args, capsys, model):
    return run_cli(["video", *args, "--model", model], capsys)


def pixels(frames) -> list[np.ndarray]:
    return [np.asarray(f.convert("RGB")) for f in frames]


def folder_frames(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("frame_*.png"))]


# -- good runs ------------------------------------------------------------------------------------

def test_gif_decodes_to_the_clip(video_model_dir, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code, stdout, err = video([PROMPT, "-o", out, "--seed", 1], capsys, video_model_dir)
    assert code == 0, err
    frames = read_video(out)
    assert len(frames) == FRAMES and all(f.size == (SIZE, SIZE) for f in frames)
    assert str(out) in stdout and f"{FRAMES} frames" in stdout and f"{SIZE}x{SIZE}" in stdout
    assert len(stdout.strip().splitlines()) == 1


def test_mp4_decodes_to_the_clip(video_model_dir, tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    out, ref = tmp_path / "clip.mp4", tmp_path / "ref"
    code, stdout, err = video([PROMPT, "-o", out, "--seed", 1], capsys, video_model_dir)
    assert code == 0, err
    k = mp4_scale((SIZE, SIZE))
    stored = read_video(out)
    assert len(stored) == FRAMES and all(f.size == (SIZE * k, SIZE * k) for f in stored)
    assert f"stored at {SIZE * k}x{SIZE * k}" in stdout
    # the same clip as lossless PNGs: the MP4 scaled back is close to it (H.264 at CRF 18)
    assert video([PROMPT, "-o", ref, "--seed", 1], capsys, video_model_dir)[0] == 0
    back = pixels(mp4_frames(out, (SIZE, SIZE)))
    assert len(back) == FRAMES and all(b.shape == (SIZE, SIZE, 3) for b in back)
    err_mean = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(back, folder_frames(ref))])
    assert err_mean < 6, err_mean


def test_folder_gets_numbered_pngs(video_model_dir, tmp_path, capsys):
    out = tmp_path / "frames"
    code, stdout, err = video([PROMPT, "-o", f"{out}/"], capsys, video_model_dir)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:03d}.png" for i in range(FRAMES)]
    assert all(f.shape == (SIZE, SIZE, 3) for f in folder_frames(out))
    assert f"wrote {FRAMES} frames to {out}" in stdout


def test_same_seed_same_gif_other_seed_other_clip(video_model_dir, tmp_path, capsys):
    for name, seed in (("a.gif", 5), ("b.gif", 5), ("c.gif", 6)):
        assert video([PROMPT, "-o", tmp_path / name, "--seed", seed], capsys, video_model_dir)[0] == 0
    a, b, c = (tmp_path / n for n in ("a.gif", "b.gif", "c.gif"))
    assert a.read_bytes() == b.read_bytes()
    assert all(np.array_equal(x, y) for x, y in zip(pixels(read_video(a)), pixels(read_video(b))))
    assert not all(np.array_equal(x, y) for x, y in zip(pixels(read_video(a)), pixels(read_video(c))))


def test_frames_other_than_the_models(video_model_dir, tmp_path, capsys):
    for n in (1, 6):
        out = tmp_path / f"f{n}"
        code, _, err = video([PROMPT, "-o", out, "--frames", n], capsys, video_model_dir)
        assert code == 0, err
        assert len(folder_frames(out)) == n


def test_image_is_frame_zero_resized(video_model_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    first = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    first.save(tmp_path / "first.png")
    out = tmp_path / "i2v"
    code, _, err = video([PROMPT, "-o", out, "--image", tmp_path / "first.png"], capsys, video_model_dir)
    assert code == 0, err
    frames = folder_frames(out)
    assert len(frames) == FRAMES
    # Pipeline.generate_video resizes the given frame to size x size (core.images.to_tensor: bicubic)
    assert np.array_equal(frames[0], np.asarray(first.resize((SIZE, SIZE), Image.BICUBIC)))
    # the other frames are sampled, not copies of the first
    assert not np.array_equal(frames[1], frames[0])


def test_image_model_chain_draws_frame_zero(video_model_dir, tiny_model_dir, tmp_path, capsys):
    out, still = tmp_path / "chain", tmp_path / "still.png"
    code, _, err = video([PROMPT, "-o", out, "--image-model", tiny_model_dir, "--seed", 3], capsys, video_model_dir)
    assert code == 0, err
    # frame 0 is the image model's picture of the prompt without its motions, same seed
    code, _, err = run_cli(["generate", still_caption(PROMPT), "-o", still, "--model", tiny_model_dir,
                            "--seed", 3], capsys)
    assert code == 0, err
    frames = folder_frames(out)
    assert len(frames) == FRAMES
    assert np.array_equal(frames[0], np.asarray(Image.open(still).convert("RGB")))


def test_overwrite_replaces_an_earlier_clip(video_model_dir, tmp_path, capsys):
    out = tmp_path / "frames"
    assert video([PROMPT, "-o", out, "--frames", 6], capsys, video_model_dir)[0] == 0
    code, _, err = video([PROMPT, "-o", out, "--frames", 2, "--overwrite"], capsys, video_model_dir)
    assert code == 0, err
    # a shorter clip leaves none of the longer one's frames behind
    assert sorted(p.name for p in out.iterdir()) == ["frame_000.png", "frame_001.png"]


def test_default_model_is_the_video_model():
    args = build_parser().parse_args(["video", PROMPT, "-o", "x.gif"])
    assert args.model == "shapes-video" and args.frames is None and args.fps == 8


# -- bad input: one line, exit 2, nothing written -------------------------------------------------

@pytest.mark.parametrize("output,args,needle", [
    ("x.gif", ["--frames", "0"], "--frames must be an integer from 1 to"),
    ("x.gif", ["--frames", "-3"], "--frames must be an integer from 1 to"),
    ("x.gif", ["--frames", str(MAX_FRAMES + 1)], f"from 1 to {MAX_FRAMES}"),
    ("x.gif", ["--frames", "two"], "--frames must be an integer"),
    ("x.gif", ["--size", "30"], "multiple of the model's patch size 8"),
    ("x.png", [], "the suffix must be .gif or .mp4"),
    ("x.avi", [], "got '.avi'"),
    ("x.gif", ["--steps", "0"], "--steps must be >= 1"),
    ("x.gif", ["--fps", "0"], "fps must be a number from 0.5 to 60"),
    ("x.gif", ["--fps", "nan"], "fps must be a number from 0.5 to 60"),
    ("x.gif", ["--guidance", "-1"], "--guidance must be >= 0"),
    ("x.gif", ["--sampler", "foo"], "unknown sampler 'foo'"),
    ("x.gif", ["--precision", "fp64"], "unknown precision"),
    ("x.gif", ["--seed", "-1"], "seed must be an integer with 0 <= seed"),
    ("x.gif", ["--image", "first.png", "--image-model", "shapes-64"], "not allowed with argument --image"),
    ("x.gif", ["--image-model", "no-such-model"], "unknown model 'no-such-model'"),
    ("frames", ["--image", "missing.png"], "does not exist"),
])
def test_bad_input(video_model_dir, tmp_path, capsys, output, args, needle):
    (tmp_path / "first.png").write_bytes(b"")  # only its name matters where it is used with another error
    args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    out = tmp_path / output
    code, stdout, err = video([PROMPT, "-o", out, *args], capsys, video_model_dir)
    assert_one_line_error(code, err, needle)
    assert not out.exists() and stdout == ""


def test_undecodable_image(video_model_dir, tmp_path, capsys):
    fake = tmp_path / "x.png"
    fake.write_text("not an image, only text\n")
    out = tmp_path / "out.gif"
    code, _, err = video([PROMPT, "-o", out, "--image", fake], capsys, video_model_dir)
    assert_one_line_error(code, err, "is not an image PIL can read", "x.png")
    assert not out.exists()


def test_image_model_as_model_names_a_video_model(tmp_path, capsys):
    out = tmp_path / "out.gif"
    code, _, err = run_cli(["video", PROMPT, "-o", out, "--model", "shapes-64"], capsys)
    assert_one_line_error(code, err, "image model", "shapes-video")
    assert not out.exists()


def test_video_model_as_image_model(video_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = video([PROMPT, "-o", out, "--image-model", video_model_dir], capsys, video_model_dir)
    assert_one_line_error(code, err, "is a video model", "image model")
    assert not out.exists()


@pytest.mark.parametrize("output", ["missing/x.gif", "missing/x.mp4", "missing/frames"])
def test_output_in_missing_folder(video_model_dir, tmp_path, capsys, output):
    code, _, err = video([PROMPT, "-o", tmp_path / output], capsys, video_model_dir)
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "missing").exists()


def test_folder_with_an_earlier_clip_is_refused(video_model_dir, tmp_path, capsys):
    out = tmp_path / "frames"
    out.mkdir()
    old = [out / f"frame_{i:03d}.png" for i in range(3)]
    for p in old:
        Image.new("RGB", (SIZE, SIZE), "white").save(p)
    before = [p.read_bytes() for p in old]
    code, _, err = video([PROMPT, "-o", out], capsys, video_model_dir)
    assert_one_line_error(code, err, "already holds 3 frames", "--overwrite")
    assert [p.read_bytes() for p in old] == before


def test_output_that_is_a_file_without_suffix(video_model_dir, tmp_path, capsys):
    out = tmp_path / "clip"  # no suffix: a folder output, but a file is there
    out.write_text("keep me")
    code, _, err = video([PROMPT, "-o", out], capsys, video_model_dir)
    assert_one_line_error(code, err, "is a file")
    assert out.read_text() == "keep me"
