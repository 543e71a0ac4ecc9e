"""The moving-shapes world's vocabulary, objects and rules (docs/shapes-world.md, "Moving shapes
(video)"): a clip is F frames, each one a shapes-world image (ditkit.data.shapes), in which every
object follows one motion. The generator lives in clips.py, the captions in captions.py."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ditkit.data.shapes.world import ShapeObject, bbox_gap, check_size, min_gap, render

MOTIONS: tuple[str, ...] = ("moving to the left", "moving to the right", "moving up", "moving down",
                            "standing still", "growing")
# Unit step of each straight motion in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"moving to the left": (-1, 0), "moving to the right": (1, 0),
                                          "moving up": (0, -1), "moving down": (0, 1)}
STILL = "standing still"
GROWING = "growing"
DEFAULT_SIZE = 32
DEFAULT_FRAMES = 8
MAX_OBJECTS = 2
# A moving object travels, and a growing one grows, by at least this fraction of S over the
# clip, so that its motion reads unambiguously from the first to the last frame.
MIN_CHANGE = 0.25


def check_frames(frames: int) -> None:
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")


def min_speed(size: int, frames: int) -> int:
    """Least integer speed (px/frame) of a moving object: (F-1) * speed >= MIN_CHANGE * S."""
    return math.ceil(MIN_CHANGE * size / (frames - 1) - 1e-9)


def min_growth(size: int, frames: int) -> int:
    """Least side growth (px/frame) of a growing object: even, so that its box grows by
    growth/2 px on each side and its centre stays on the same pixel, and
    (F-1) * growth >= MIN_CHANGE * S."""
    g = math.ceil(MIN_CHANGE * size / (frames - 1) - 1e-9)
    return g + (g % 2)


@dataclass(frozen=True)
class MovingObject:
    """One object of a clip: its motion, its rate (px/frame: the speed of a moving object, the
    side growth of a growing one, 0 standing still) and its box on every frame."""

    shape: str
    color: str
    motion: str
    rate: int
    boxes: tuple[ShapeObject, ...]  # one per frame


@dataclass(frozen=True)
class Clip:
    """Objects moving on an S x S canvas for F frames, and the caption that describes the clip."""

    objects: tuple[MovingObject, ...]
    caption: str
    size: int
    frames: int

    def frame_objects(self, t: int) -> tuple[ShapeObject, ...]:
        """The shapes-world objects of frame t."""
        return tuple(o.boxes[t] for o in self.objects)


def trajectory(shape: str, color: str, motion: str, rate: int, x0: int, y0: int, side: int,
               frames: int) -> tuple[ShapeObject, ...]:
    """The per-frame boxes of an object whose first-frame box is (x0, y0, side)."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; allowed: {MOTIONS}")
    if motion == GROWING:
        if rate % 2:
            raise ValueError(f"a growing object's rate must be even (centre fixed), got {rate}")
        return tuple(ShapeObject(shape, color, x0 - t * rate // 2, y0 - t * rate // 2, side + t * rate)
                     for t in range(frames))
    dx, dy = DIRECTIONS.get(motion, (0, 0))
    return tuple(ShapeObject(shape, color, x0 + t * rate * dx, y0 + t * rate * dy, side) for t in range(frames))


def frame_ok(objects: tuple[ShapeObject, ...], size: int) -> bool:
    """The shapes world's rules on one frame: every box >= 1 px from the border, and every two
    boxes >= min_gap(size) px apart."""
    gap = min_gap(size)
    if any(o.x0 < 1 or o.y0 < 1 or o.x1 > size - 1 or o.y1 > size - 1 for o in objects):
        return False
    return all(bbox_gap(a, b) >= gap for i, a in enumerate(objects) for b in objects[i + 1:])


def render_clip(clip: Clip) -> list[Image.Image]:
    """The clip's frames as F RGB images (shapes-world render: hard edges, exact colors)."""
    check_size(clip.size)
    return [render(clip.frame_objects(t), clip.size) for t in range(clip.frames)]
