"""The moving-shapes generator: random captioned clips (``sample_clip``, ``clip_for_caption``)
placed by rejection sampling over whole trajectories, and training batches
(``make_video_batch``) that depend only on (seed, step)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ditkit.data.shapes.world import PALETTE, SHAPE_NAMES, check_size, render, side_range
from ditkit.data.video.captions import format_video_caption, parse_video_caption
from ditkit.data.video.world import (DEFAULT_FRAMES, DEFAULT_SIZE, DIRECTIONS, GROWING, MAX_OBJECTS, MOTIONS,
                                     Clip, MovingObject, check_frames, frame_ok, min_growth, min_speed,
                                     trajectory)

if TYPE_CHECKING:  # torch is only needed by make_video_batch; keep the import lazy.
    import torch


def _sample_object(rng: np.random.Generator, color: str, shape: str, motion: str, size: int,
                   frames: int) -> MovingObject | None:
    """One object with a random first-frame side (the shapes world's range), rate and position
    such that its box stays >= 1 px inside the canvas on every frame; None when the drawn side
    leaves no room for the motion (the caller draws again)."""
    lo, hi = side_range(None, size)
    side = int(rng.integers(lo, hi + 1))
    room = size - 2 - side  # free pixels along an axis inside the 1 px border
    steps = frames - 1
    if motion == GROWING:
        g_min = min_growth(size, frames)
        rates = [g for g in range(g_min, 2 * g_min + 1, 2) if g * steps <= room]
        if not rates:
            return None
        rate = rates[int(rng.integers(len(rates)))]
        last = side + rate * steps  # the last frame's box, around the same centre
        xl, yl = (int(v) for v in rng.integers(1, size - last, size=2))
        x0, y0 = xl + rate * steps // 2, yl + rate * steps // 2
    elif motion in DIRECTIONS:
        v_min = min_speed(size, frames)
        rates = [v for v in range(v_min, 2 * v_min + 1) if v * steps <= room]
        if not rates:
            return None
        rate = rates[int(rng.integers(len(rates)))]
        dx, dy = DIRECTIONS[motion]
        travel = rate * steps
        # the box's range on the moving axis is [first, first + travel] (or reversed)
        x0 = int(rng.integers(1, size - side - abs(dx) * travel))
        y0 = int(rng.integers(1, size - side - abs(dy) * travel))
        x0, y0 = x0 + (travel if dx < 0 else 0), y0 + (travel if dy < 0 else 0)
    else:
        rate = 0
        x0, y0 = (int(v) for v in rng.integers(1, size - side, size=2))
    return MovingObject(shape, color, motion, rate, trajectory(shape, color, motion, rate, x0, y0, side, frames))


def _place(rng: np.random.Generator, items: Sequence[tuple[str, str, str]], size: int, frames: int,
           max_tries: int = 2000) -> tuple[MovingObject, ...]:
    """Objects for the (color, shape, motion) items whose every frame obeys the shapes world's
    border and gap rules (rejection sampling over whole trajectories)."""
    for _ in range(max_tries):
        objects = [_sample_object(rng, c, s, m, size, frames) for c, s, m in items]
        if any(o is None for o in objects):
            continue
        if all(frame_ok(tuple(o.boxes[t] for o in objects), size) for t in range(frames)):
            return tuple(objects)
    raise RuntimeError(f"could not place {list(items)} on a {size}x{size} canvas for {frames} frames "
                       f"in {max_tries} tries")


def _check(size: int, frames: int) -> None:
    check_size(size)
    check_frames(frames)


def sample_clip(rng: np.random.Generator, size: int = DEFAULT_SIZE, frames: int = DEFAULT_FRAMES) -> Clip:
    """A random captioned clip of 1 or 2 objects (distinct (color, shape) pairs), each with a
    uniformly drawn motion (a second "growing" is redrawn from the other five, since two growing
    objects do not fit); deterministic given the rng state."""
    _check(size, frames)
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    pairs = [(c, s) for c in PALETTE for s in SHAPE_NAMES]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    motions = [MOTIONS[int(i)] for i in rng.integers(len(MOTIONS), size=count)]
    if motions.count(GROWING) > 1:  # at most one growing object fits (captions._check_items)
        motions[1] = MOTIONS[int(rng.integers(len(MOTIONS) - 1))]  # MOTIONS ends with "growing"
    items = [(*pairs[int(i)], m) for i, m in zip(chosen, motions)]
    return Clip(_place(rng, items, size, frames), format_video_caption(items), size, frames)


def clip_for_caption(caption: str, rng: np.random.Generator, size: int = DEFAULT_SIZE,
                     frames: int = DEFAULT_FRAMES) -> Clip:
    """A random clip that the caption describes: a ground-truth clip for any video prompt."""
    _check(size, frames)
    items = parse_video_caption(caption)
    return Clip(_place(rng, items, size, frames), format_video_caption(items), size, frames)


def make_video_batch(seed: int, step: int, batch_size: int, size: int = DEFAULT_SIZE,
                     frames: int = DEFAULT_FRAMES) -> tuple["torch.Tensor", list[str]]:
    """A training batch: clips (B, F, 3, S, S) float32 in [-1, 1] and their captions.

    The rng is np.random.default_rng([seed, step]), so a batch depends only on (seed, step).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    rng = np.random.default_rng([seed, step])
    clips = [sample_clip(rng, size, frames) for _ in range(batch_size)]
    return clips_tensor(clips), [c.caption for c in clips]


def clips_tensor(clips: Sequence[Clip]) -> "torch.Tensor":
    """Clips of one size and length as one float tensor (B, F, 3, S, S) in [-1, 1]."""
    import torch  # lazy: importing the data module should not pull in torch

    pixels = np.stack([np.stack([np.asarray(render(c.frame_objects(t), c.size)) for t in range(c.frames)])
                       for c in clips])  # (B, F, S, S, 3) uint8
    return torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0).contiguous()
