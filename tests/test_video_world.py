"""The moving-shapes world (docs/shapes-world.md, "Moving shapes (video)"): determinism, the
shapes world's rules on every frame, the detector on every ground-truth frame, motion tracks,
captions."""

from __future__ import annotations

import numpy as np
import pytest

from ditkit.data.shapes import MIN_SIZE, PALETTE, SHAPE_NAMES, bbox_gap, min_gap, side_range
from ditkit.data.video import (DIRECTIONS, GROWING, MOTIONS, STILL, clip_for_caption, format_video_caption,
                               make_video_batch, parse_video_caption, render_clip, sample_clip)
from ditkit.evaluation.shapes_detector import detect


def _clips(n: int, size: int = 32, frames: int = 8, seed: int = 0):
    return [sample_clip(np.random.default_rng([seed, i]), size, frames) for i in range(n)]


def test_batch_depends_only_on_seed_and_step():
    a, ca = make_video_batch(3, 5, 4)
    b, cb = make_video_batch(3, 5, 4)
    c, cc = make_video_batch(3, 6, 4)
    assert ca == cb and bool((a == b).all())
    assert ca != cc or not bool((a == c).all())


def test_batch_shape_range_and_captions():
    x, caps = make_video_batch(0, 0, 3, size=32, frames=5)
    assert tuple(x.shape) == (3, 5, 3, 32, 32) and str(x.dtype) == "torch.float32"
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.max()) == 1.0 and float(x.min()) < 0  # white background and colored objects
    assert len(caps) == 3 and all(parse_video_caption(c) for c in caps)
    with pytest.raises(ValueError, match="canvas size"):
        make_video_batch(0, 0, 1, size=MIN_SIZE - 1)
    with pytest.raises(ValueError, match="frames"):
        make_video_batch(0, 0, 1, frames=1)
    with pytest.raises(ValueError, match="batch_size"):
        make_video_batch(0, 0, 0)


@pytest.mark.parametrize("size,frames", [(32, 8), (48, 6), (64, 16)])
def test_every_frame_obeys_the_shapes_world_rules(size, frames):
    gap = min_gap(size)
    lo, hi = side_range(None, size)
    motions_seen = set()
    for clip in _clips(150, size, frames):
        assert 1 <= len(clip.objects) <= 2 and clip.frames == frames
        assert parse_video_caption(clip.caption) == [(o.color, o.shape, o.motion) for o in clip.objects]
        for obj in clip.objects:
            motions_seen.add(obj.motion)
            assert len(obj.boxes) == frames and lo <= obj.boxes[0].side <= hi
            if obj.motion != GROWING:
                assert all(b.side == obj.boxes[0].side for b in obj.boxes)
        for t in range(frames):
            boxes = clip.frame_objects(t)
            for b in boxes:
                assert b.x0 >= 1 and b.y0 >= 1 and b.x1 <= size - 1 and b.y1 <= size - 1
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert bbox_gap(a, b) >= gap
    assert motions_seen == set(MOTIONS)


def _box_motion(boxes):
    """Per-frame constant step of the centre and the side, asserted constant."""
    cx = [b.cx for b in boxes]
    cy = [b.cy for b in boxes]
    side = [b.side for b in boxes]
    return cx, cy, side


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_motion_is_constant_and_large_enough(size):
    frames = 8
    for clip in _clips(100, size, frames):
        for obj in clip.objects:
            cx, cy, side = _box_motion(obj.boxes)
            dxs, dys, dss = np.diff(cx), np.diff(cy), np.diff(side)
            assert len(set(dxs)) == 1 and len(set(dys)) == 1 and len(set(dss)) == 1  # constant rate
            if obj.motion in DIRECTIONS:
                ux, uy = DIRECTIONS[obj.motion]
                assert (cx[-1] - cx[0]) * ux + (cy[-1] - cy[0]) * uy >= 0.25 * size
                assert dss[0] == 0 and (dxs[0] if ux == 0 else dys[0]) == 0
            elif obj.motion == STILL:
                assert dxs[0] == dys[0] == dss[0] == 0
            else:
                assert side[-1] - side[0] >= 0.25 * size and dxs[0] == dys[0] == 0


def _tracks(clip):
    """Per object, its detection on every frame; asserts the detector finds exactly the clip's
    objects (color and shape) on every frame."""
    tracks = {(o.color, o.shape): [] for o in clip.objects}
    for t, image in enumerate(render_clip(clip)):
        found = detect(image)
        assert sorted((d.color, d.shape) for d in found) == sorted(tracks), (clip.caption, t, found)
        for d in found:
            tracks[(d.color, d.shape)].append(d)
    return tracks


def test_detector_finds_every_object_on_every_frame_and_tracks_match_the_caption():
    size = 32
    for clip in _clips(100, size):
        tracks = _tracks(clip)
        for color, shape, motion in parse_video_caption(clip.caption):
            track = tracks[(color, shape)]
            dx, dy = track[-1].cx - track[0].cx, track[-1].cy - track[0].cy
            if motion in DIRECTIONS:
                ux, uy = DIRECTIONS[motion]
                assert dx * ux + dy * uy >= 0.25 * size, (clip.caption, dx, dy)
                assert abs(dx * uy) + abs(dy * ux) == 0  # no drift across the motion
            elif motion == STILL:
                assert all((d.x0, d.y0, d.x1, d.y1) == (track[0].x0, track[0].y0, track[0].x1, track[0].y1)
                           for d in track)
            else:
                widths = [d.w for d in track]
                assert all(b > a for a, b in zip(widths, widths[1:])), (clip.caption, widths)
                assert widths[-1] - widths[0] >= 0.25 * size
                assert abs(dx) <= 1 and abs(dy) <= 1  # centre fixed (up to the shape's pixel grid)


def test_clip_for_caption_matches_its_caption():
    caption = "a blue square moving up and an orange triangle growing"
    for i in range(20):
        clip = clip_for_caption(caption, np.random.default_rng(i), 32, 8)
        assert clip.caption == caption
        assert [(o.color, o.shape, o.motion) for o in clip.objects] == parse_video_caption(caption)
        _tracks(clip)
    a = clip_for_caption(caption, np.random.default_rng(7))
    b = clip_for_caption(caption, np.random.default_rng(7))
    assert a == b


def test_caption_round_trip():
    for color in PALETTE:
        for shape in SHAPE_NAMES:
            for motion in MOTIONS:
                items = [(color, shape, motion)]
                caption = format_video_caption(items)
                assert parse_video_caption(caption) == items
    assert format_video_caption([("red", "circle", "moving to the right")]) == "a red circle moving to the right"
    assert format_video_caption([("orange", "square", "growing")]) == "an orange square growing"
    two = "a blue square moving up and a green triangle moving to the left"
    assert parse_video_caption(two) == [("blue", "square", "moving up"), ("green", "triangle", "moving to the left")]
    assert parse_video_caption("  A Yellow triangle   standing still. ") == [("yellow", "triangle", "standing still")]


@pytest.mark.parametrize("caption", [
    "", "a red circle", "a red circle moving", "a red circle moving sideways", "two red circles moving up",
    "a pink circle moving up", "a red hexagon growing", "a small red circle growing", "red circle growing",
    "a red circle moving up and a red circle moving down",
    "a red circle growing and a blue square growing",
    "a red circle moving up and a blue square moving down and a green triangle growing",
    "a red circle to the left of a blue square",
])
def test_bad_captions_are_rejected(caption):
    with pytest.raises(ValueError, match="cannot parse video caption"):
        parse_video_caption(caption)
    with pytest.raises(ValueError):
        clip_for_caption(caption, np.random.default_rng(0))
