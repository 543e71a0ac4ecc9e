"""The video evaluation (issue 29, "Evaluation" and "Tests"): the scorer reads ground-truth clips
of the moving-shapes world perfectly and refuses wrong captions, frozen clips and blanked frames;
first-frame PSNR; the benchmark's prompts; the benchmark and `ditkit eval video` end to end on a
tiny random VideoDiT (4 frames of 32x32, 2 steps), and its bad input through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.core.video_io import read_video
from ditkit.data.shapes import ShapeObject, render
from ditkit.data.video import (DIRECTIONS, GROWING, MOTIONS, STILL, clip_for_caption, format_video_caption,
                               make_video_batch, min_growth, min_speed, parse_video_caption, render_clip)
from ditkit.evaluation.video_eval import (VIDEO_CATEGORIES, reference_clips, save_video_outputs,
                                          video_benchmark_prompts, video_eval)
from ditkit.evaluation.video_scoring import (MotionThresholds, aggregate, clip_arrays, json_safe, psnr,
                                             score_clip)

from conftest import assert_one_line_error, run_cli, save_tiny_video_model

FRAMES, SIZE = 4, 32  # the tiny model's clip length and frame side


def ground_truth(n: int, seed: int = 0):
    """n world clips (B, F, 3, S, S) float in [-1, 1] at S = 32, F = 8, and their captions."""
    return make_video_batch(seed, 0, n)


# -- the scorer on ground truth -------------------------------------------------------------------

def test_ground_truth_clips_score_perfectly():
    clips, captions = ground_truth(40)
    scores = [score_clip(clip, caption) for clip, caption in zip(clips, captions)]
    summary = aggregate(scores)
    assert summary["per_frame_correct"] == summary["motion_accuracy"] == 1.0
    assert summary["object_motion_accuracy"] == summary["temporal_consistency"] == 1.0
    # every motion kind was there to be read
    assert {o["motion"] for s in scores for o in s["objects"]} == set(MOTIONS)
    assert all(o["predicted"] == o["motion"] and o["found"] == 8 for s in scores for o in s["objects"])


def test_every_benchmark_caption_has_a_ground_truth_clip_that_scores_perfectly():
    pairs = video_benchmark_prompts(6, seed=3)
    captions = [p for _, p in pairs]
    for size, frames in ((32, 8), (SIZE, FRAMES), (48, 6)):
        clips = reference_clips(captions, 3, size, frames)  # PIL frames
        assert all(len(c) == frames and c[0].size == (size, size) for c in clips)
        summary = aggregate([score_clip(c, p) for c, p in zip(clips, captions)], [c for c, _ in pairs])
        assert summary["motion_accuracy"] == summary["per_frame_correct"] == summary["temporal_consistency"] == 1.0
        assert list(summary["categories"]) == list(VIDEO_CATEGORIES)


def test_shuffled_captions_score_near_chance():
    clips, captions = ground_truth(40, seed=1)
    shuffled = captions[1:] + captions[:1]  # each clip against the next clip's caption
    summary = aggregate([score_clip(c, p) for c, p in zip(clips, shuffled)])
    assert summary["motion_accuracy"] < 0.5 and summary["per_frame_correct"] < 0.5, summary


def test_motions_are_right_exactly_where_a_shuffled_motion_happens_to_be_the_true_one():
    """Same objects, motions drawn at random: motion accuracy is the chance of drawing the truth."""
    clips, captions = ground_truth(40, seed=2)
    rng = np.random.default_rng(0)
    hits = []
    for clip, caption in zip(clips, captions):
        items = parse_video_caption(caption)
        while True:
            drawn = [(c, s, MOTIONS[int(rng.integers(len(MOTIONS)))]) for c, s, _ in items]
            if sum(m == GROWING for *_, m in drawn) <= 1:
                break
        score = score_clip(clip, format_video_caption(drawn))
        assert score["per_frame_correct"] == 1.0  # the objects are right, only motions may be wrong
        assert score["motion_correct"] == (drawn == items)
        assert [o["correct"] for o in score["objects"]] == [a == b for a, b in zip(drawn, items)]
        hits.append(score["motion_correct"])
    assert 0 < np.mean(hits) < 0.5  # near chance (1/6 for one object, 1/36 for two)


def test_reversed_clip_reverses_its_motion():
    caption = "a red circle moving to the right and a blue square growing"
    clip = render_clip(clip_for_caption(caption, np.random.default_rng(0)))
    backward = score_clip(clip[::-1], caption)
    assert [o["predicted"] for o in backward["objects"]] == ["moving to the left", None]  # None: shrinking
    assert not backward["motion_correct"] and backward["per_frame_correct"] == 1.0


def test_a_frozen_clip_is_standing_still_not_moving():
    clip = render_clip(clip_for_caption("a green triangle moving to the right", np.random.default_rng(4)))
    frozen = [clip[0]] * 8
    moving = score_clip(frozen, "a green triangle moving to the right")
    assert not moving["motion_correct"] and moving["objects"][0]["predicted"] == STILL
    assert moving["per_frame_correct"] == 1.0 and moving["temporal_consistency"] == 1.0
    assert score_clip(frozen, "a green triangle standing still")["motion_correct"]


def test_a_blanked_frame_breaks_per_frame_correctness_consistency_and_motion():
    caption = "a purple square moving down and a yellow circle standing still"
    clip = render_clip(clip_for_caption(caption, np.random.default_rng(5)))
    assert score_clip(clip, caption)["motion_correct"]
    clip[3] = Image.new("RGB", clip[3].size, "white")
    score = score_clip(clip, caption)
    assert score["frames_correct"] == [True, True, True, False, True, True, True, True]
    assert score["per_frame_correct"] == 7 / 8 and not score["all_frames_correct"]
    assert score["temporal_consistency"] == 5 / 7  # the two steps into and out of frame 3
    assert [o["found"] for o in score["objects"]] == [7, 7]
    assert not score["motion_correct"] and all(o["predicted"] is None for o in score["objects"])


def test_an_object_that_changes_color_or_jumps_is_not_consistent():
    def frames(*objects_per_frame):
        return [render(objs, 32) for objs in objects_per_frame]

    here, there = ShapeObject("circle", "orange", 4, 4, 8), ShapeObject("circle", "orange", 20, 4, 8)
    blue = ShapeObject("circle", "blue", 4, 4, 8)
    caption = "an orange circle standing still"
    assert score_clip(frames(*[[here]] * 8), caption)["temporal_consistency"] == 1.0
    recolored = score_clip(frames(*[[here]] * 4, *[[blue]] * 4), caption)
    assert recolored["temporal_consistency"] == 6 / 7 and recolored["per_frame_correct"] == 0.5
    # 16 px in one frame: over the jump limit (8 px at S = 32, F = 8), though every frame is right
    jumped = score_clip(frames(*[[here]] * 4, *[[there]] * 4), caption)
    assert jumped["temporal_consistency"] == 6 / 7 and jumped["per_frame_correct"] == 1.0
    assert not jumped["motion_correct"]  # it moved 16 px: not standing still
    # an extra object appearing for one frame breaks the two steps around it
    other = ShapeObject("square", "green", 20, 20, 8)
    flicker = score_clip(frames(*[[here]] * 3, [here, other], *[[here]] * 4), caption)
    assert flicker["temporal_consistency"] == 5 / 7 and flicker["motion_correct"]


def test_thresholds_come_from_the_worlds_least_motion():
    t = MotionThresholds.for_clip(32, 8)
    assert t.move == 7 * min_speed(32, 8) / 2 == 7.0
    assert t.grow == 7 * min_growth(32, 8) / 2 == 7.0
    assert t.jump == 4 * min_speed(32, 8)


def test_clip_inputs_agree():
    clip = render_clip(clip_for_caption("a red square moving up", np.random.default_rng(8)))
    arrays = clip_arrays(clip)
    as_uint8 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    as_float = as_uint8.float() / 127.5 - 1
    assert all(np.array_equal(a, b) for a, b in zip(arrays, clip_arrays(as_uint8)))
    assert all(np.array_equal(a, b) for a, b in zip(arrays, clip_arrays(as_float)))
    assert score_clip(as_float, "a red square moving up")["motion_correct"]
    with pytest.raises(ValueError, match="F, 3, S, S"):
        clip_arrays(torch.zeros(8, 32, 32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        score_clip(clip[:1], "a red square moving up")
    with pytest.raises(ValueError, match="cannot parse video caption"):
        score_clip(clip, "a red square")


# -- PSNR ------------------------------------------------------------------------------------------

def test_psnr():
    frame = render_clip(clip_for_caption("a blue triangle growing", np.random.default_rng(9)))[0]
    assert psnr(frame, frame.copy()) == math.inf
    arr = np.asarray(frame).astype(int)
    rng = np.random.default_rng(0)
    slight = np.clip(arr + rng.integers(-2, 3, arr.shape), 0, 255).astype(np.uint8)
    strong = np.clip(arr + rng.integers(-40, 41, arr.shape), 0, 255).astype(np.uint8)
    assert math.isfinite(psnr(frame, slight)) and psnr(frame, slight) > 40 > psnr(frame, strong) > 10
    one = np.asarray(frame).copy()
    one[0, 0, 0] ^= 1  # one value off by 1 in a 32x32 RGB frame: 10 log10(255^2 * 3072)
    assert psnr(frame, one) == pytest.approx(10 * math.log10(255**2 * 32 * 32 * 3))
    score = score_clip(render_clip(clip_for_caption("a blue triangle growing", np.random.default_rng(9))),
                       "a blue triangle growing", first_frame=frame)
    summary = aggregate([score])
    assert summary["first_frame_psnr"] == {"mean": math.inf, "min": math.inf} and summary["first_frame_exact"] == 1.0
    assert json_safe(summary)["first_frame_psnr"] == {"mean": None, "min": None}  # null = infinite
    with pytest.raises(ValueError, match="one size"):
        psnr(frame, frame.resize((40, 40)))


# -- the prompts -----------------------------------------------------------------------------------

def test_benchmark_prompts():
    pairs = video_benchmark_prompts(8, seed=0)
    assert pairs == video_benchmark_prompts(8, seed=0) != video_benchmark_prompts(8, seed=1)
    assert [c for c, _ in pairs] == [c for c in VIDEO_CATEGORIES for _ in range(8)]
    motions = {c: [[m for *_, m in parse_video_caption(p)] for k, p in pairs if k == c] for c in VIDEO_CATEGORIES}
    assert [m for (m,) in motions["single_move"][:4]] == list(DIRECTIONS)  # each direction in turn
    assert all(m == [STILL] for m in motions["single_still"]) and all(m == [GROWING] for m in motions["single_growing"])
    assert all(len(m) == 2 and m.count(GROWING) <= 1 for m in motions["two_object"])
    assert len({p for _, p in pairs}) == len(pairs)
    # distinct until a category runs out: all 18 still captions, then a fresh permutation
    still = [p for c, p in video_benchmark_prompts(20, 0) if c == "single_still"]
    assert len(set(still[:18])) == 18 and set(still[18:]) <= set(still[:18])
    moves = [p for c, p in video_benchmark_prompts(72, 0) if c == "single_move"]
    assert len(set(moves)) == 72
    with pytest.raises(ValueError, match="per_category"):
        video_benchmark_prompts(0)


# -- the benchmark on a tiny random video model ----------------------------------------------------

@pytest.fixture(scope="module")
def video_model_dir(tmp_path_factory):
    return save_tiny_video_model(tmp_path_factory.mktemp("tiny-video") / "model", FRAMES, SIZE)


@pytest.fixture(scope="module")
def pipe(video_model_dir):
    import ditkit

    return ditkit.load(str(video_model_dir))


SCORE_KEYS = {"n", "per_frame_correct", "all_frames_correct", "motion_accuracy", "object_motion_accuracy",
              "temporal_consistency", "categories"}


def test_benchmark_end_to_end(pipe, tmp_path):
    result = video_eval(pipe.engine, per_category=1, seed=5, steps=2, batch_size=3, return_videos=True)
    prompts = [p for _, p in result["prompts"]]
    t2v, i2v = result["videos"]["t2v"], result["videos"]["i2v"]
    assert len(t2v) == len(i2v) == 4 and all(len(c) == FRAMES and c[0].size == (SIZE, SIZE) for c in t2v + i2v)
    # the same clips as the public API's generate_video (video j from seed + j, whatever the batch)
    api = pipe.generate_video(prompts, seed=5, steps=2, batch_size=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for ca, cb in zip(api, t2v) for a, b in zip(ca, cb))
    first = [c[0] for c in result["reference"]]
    api_i2v = pipe.generate_video(prompts, image=first, seed=5, steps=2, batch_size=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for ca, cb in zip(api_i2v, i2v) for a, b in zip(ca, cb))
    assert all(np.array_equal(np.asarray(c[0]), np.asarray(f)) for c, f in zip(i2v, first))  # frame 0 exact
    assert SCORE_KEYS <= set(result["text_to_video"])
    assert list(result["text_to_video"]["categories"]) == list(VIDEO_CATEGORIES)
    assert result["image_to_video"]["first_frame_psnr"]["min"] == math.inf
    assert result["image_to_video"]["first_frame_exact"] == 1.0
    assert result["ground_truth"]["motion_accuracy"] == 1.0
    assert len(result["per_video"]) == 8 and result["settings"]["steps"] == 2

    out = tmp_path / "eval"
    save_video_outputs(result, out, "test")
    data = json.loads((out / "results.json").read_text())
    assert {"settings", "thresholds", "ground_truth", "text_to_video", "image_to_video", "per_video"} <= set(data)
    assert data["image_to_video"]["first_frame_psnr"] == {"mean": None, "min": None}
    rows = data["per_video"]
    assert [(r["mode"], r["index"]) for r in rows] == [(m, j) for m in ("t2v", "i2v") for j in range(4)]
    for row in rows:
        gif = read_video(out / row["gif"])
        assert len(gif) == FRAMES and gif[0].size == (SIZE, SIZE)
    for name in ("t2v_grid.png", "i2v_grid.png", "ground_truth_grid.png"):
        grid = Image.open(out / name)
        assert grid.size == (FRAMES * (SIZE + 2) + 2, 4 * (SIZE + 2) + 2)  # a row per video, a column per frame
    assert (out / "report.md").is_file()
    # a shorter run in the same folder leaves exactly its own GIFs
    (out / "t2v" / "0009.gif").write_bytes((out / "t2v" / "0000.gif").read_bytes())
    small = video_eval(pipe.engine, per_category=1, seed=5, steps=2, mode="t2v", return_videos=True)
    save_video_outputs(small, out)
    assert sorted(p.name for p in (out / "t2v").iterdir()) == [f"{j:04d}.gif" for j in range(4)]
    assert "image_to_video" not in json.loads((out / "results.json").read_text())


def test_benchmark_refuses_bad_input(pipe, tiny_model_dir):
    import ditkit

    with pytest.raises(ValueError, match="per_category"):
        video_eval(pipe.engine, per_category=0)
    with pytest.raises(ValueError, match="mode"):
        video_eval(pipe.engine, per_category=1, mode="video")
    with pytest.raises(ValueError, match="needs a video model"):
        video_eval(ditkit.load(str(tiny_model_dir)).engine, per_category=1)


# -- the CLI ---------------------------------------------------------------------------------------

def test_cli_eval_video(video_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["eval", "video", "--model", video_model_dir, "--per-category", 1, "--steps", 2,
                                 "--batch-size", 4, "--out-dir", out], capsys)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert f"{FRAMES} frames at {SIZE}x{SIZE}" in lines[0] and len(lines) == 2 + 2 * 5 + 1  # header, 2 modes x 5, truth
    assert lines[1].split()[:4] == ["mode", "category", "n", "per-frame"]
    assert any(line.startswith("image_to_video  all") and line.rstrip().endswith("inf") for line in lines)
    assert (out / "results.json").is_file() and len(list((out / "i2v").glob("*.gif"))) == 4
    code, stdout, err = run_cli(["eval", "video", "--model", video_model_dir, "--per-category", 1, "--steps", 2,
                                 "--mode", "t2v", "--json"], capsys)
    assert code == 0, err
    data = json.loads(stdout)
    assert SCORE_KEYS <= set(data["text_to_video"]) and "image_to_video" not in data
    assert data["model"] and data["settings"]["mode"] == "t2v"


@pytest.mark.parametrize("args, needle", [
    (["--per-category", "0"], "--per-category must be >= 1"),
    (["--mode", "video"], "invalid choice"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_cli_bad_arguments(video_model_dir, tmp_path, capsys, args, needle):
    code, stdout, err = run_cli(["eval", "video", "--model", video_model_dir, "--out-dir", tmp_path / "x", *args],
                                capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "x").exists()


def test_cli_refuses_an_image_model(tiny_model_dir, tmp_path, capsys):
    code, stdout, err = run_cli(["eval", "video", "--model", tiny_model_dir, "--per-category", 1,
                                 "--out-dir", tmp_path / "x"], capsys)
    assert_one_line_error(code, err, "video model", "shapes-video")
    assert not (tmp_path / "x").exists() and stdout == ""
