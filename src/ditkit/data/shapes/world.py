"""The shapes world's vocabulary, its objects, their rendering and the position rule
(docs/shapes-world.md). The generator (scenes.py), the captions (captions.py) and the
ShapesEval detector (ditkit.evaluation.shapes_detector) all build on these."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
# The world's vocabulary (docs/shapes-world.md)
# --------------------------------------------------------------------------

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 170, 70),
    "blue": (40, 90, 230),
    "purple": (150, 60, 200),
}
# Extra concepts (docs/shapes-world.md, "Extra concepts"): colors outside the base palette that
# captions may name and the renderer draws, but that the default generator, the benchmark
# prompts and the detector's default vocabulary never use; a training mix asks for them with
# its "extra_colors" category. Pink sits far from every palette line (>= 56 RGB units from
# each white -> color line, where the detector accepts <= 45), so it cannot pass for red or purple.
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "pink": (240, 110, 190),
}
# Every color a caption may name: the base palette, then the extra colors.
COLORS: dict[str, tuple[int, int, int]] = {**PALETTE, **EXTRA_COLORS}
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
OPPOSITE_RELATION = {"to the left of": "to the right of", "to the right of": "to the left of",
                     "above": "below", "below": "above"}
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "position")
# parse_caption's category for captions outside the four benchmark templates
# (training-only variants such as "two blue squares and a red circle").
FREE_FORM = "free_form"

SIZE_WORDS: tuple[str, ...] = ("small", "large")
# Bounding-box side as a fraction of the canvas side; None = no size word.
SIZE_RANGES: dict[str | None, tuple[float, float]] = {
    "small": (0.14, 0.20),
    "large": (0.26, 0.34),
    None: (0.14, 0.34),
}
NUMBER_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}

WHITE = (255, 255, 255)
MIN_SIZE = 32  # smallest canvas the generator and the detector support


# --------------------------------------------------------------------------
# Objects and scenes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its bounding box is the square [x0, x0+side) x [y0, y0+side)."""

    shape: str
    color: str
    x0: int
    y0: int
    side: int

    @property
    def x1(self) -> int:
        return self.x0 + self.side

    @property
    def y1(self) -> int:
        return self.y0 + self.side

    @property
    def w(self) -> int:
        return self.side

    @property
    def h(self) -> int:
        return self.side

    @property
    def cx(self) -> float:
        return self.x0 + self.side / 2

    @property
    def cy(self) -> float:
        return self.y0 + self.side / 2


@dataclass(frozen=True)
class Scene:
    """Objects on a canvas and the caption that describes the whole image."""

    objects: tuple[ShapeObject, ...]
    caption: str
    category: str | None  # one of CATEGORIES, or None for a free-form variant


# --------------------------------------------------------------------------
# Geometry and rendering
# --------------------------------------------------------------------------


def check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < MIN_SIZE:
        raise ValueError(f"canvas size must be an integer >= {MIN_SIZE}, got {size!r}")


def min_gap(size: int) -> int:
    """Least number of background pixels between two objects' bounding boxes: max(2, S/32)."""
    return max(2, math.ceil(size / 32))


def side_range(size_word: str | None, size: int) -> tuple[int, int]:
    """Inclusive range of integer bbox sides allowed for a size word on an S x S canvas."""
    if size_word not in SIZE_RANGES:
        raise ValueError(f"unknown size word {size_word!r}; allowed: {SIZE_WORDS} or None")
    lo, hi = SIZE_RANGES[size_word]
    # The epsilon keeps exact products (0.2 * 60 = 12) inside the range.
    return math.ceil(lo * size - 1e-9), math.floor(hi * size + 1e-9)


def bbox_gap(a: ShapeObject, b: ShapeObject) -> int:
    """Background pixels between two boxes (Chebyshev separation; < 0 means overlap)."""
    gap_x = max(b.x0 - a.x1, a.x0 - b.x1)
    gap_y = max(b.y0 - a.y1, a.y0 - b.y1)
    return max(gap_x, gap_y)


@lru_cache(maxsize=4096)
def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Hard-edged mask (h, w) of a shape filling a w x h box, by pixel-center tests.

    The same masks serve the renderer (w == h) and the detector's templates
    (any w, h), so an undistorted drawn shape matches its template exactly.
    """
    x = (np.arange(w) + 0.5)[None, :]
    y = (np.arange(h) + 0.5)[:, None]
    if shape == "square":
        mask = np.ones((h, w), dtype=bool)
    elif shape == "circle":
        mask = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2 <= 1.0
    elif shape == "triangle":
        # Apex at the top center, horizontal base at the bottom: the half width
        # grows linearly from 0 at the top to w/2 at the bottom.
        mask = np.abs(x - w / 2) <= (y / h) * (w / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPE_NAMES}")
    mask.setflags(write=False)
    return mask


def _check_object(obj: ShapeObject) -> None:
    if obj.shape not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {obj.shape!r}; allowed: {SHAPE_NAMES}")
    if obj.color not in COLORS:
        raise ValueError(f"unknown color {obj.color!r}; allowed: {tuple(COLORS)}")
    if obj.side < 1:
        raise ValueError(f"object side must be >= 1, got {obj.side}")


def render(objects: Iterable[ShapeObject], size: int = 64) -> Image.Image:
    """Draw objects on a white S x S RGB canvas with hard edges and exact colors (COLORS).

    Parts of an object outside the canvas are clipped.
    """
    check_size(size)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    for obj in objects:
        _check_object(obj)
        mask = shape_mask(obj.shape, obj.side, obj.side)
        # Clip the box to the canvas and cut the mask to match.
        x0, y0 = max(obj.x0, 0), max(obj.y0, 0)
        x1, y1 = min(obj.x1, size), min(obj.y1, size)
        if x0 >= x1 or y0 >= y1:
            continue
        sub = mask[y0 - obj.y0 : y1 - obj.y0, x0 - obj.x0 : x1 - obj.x0]
        canvas[y0:y1, x0:x1][sub] = COLORS[obj.color]
    return Image.fromarray(canvas, mode="RGB")


# --------------------------------------------------------------------------
# Position rule (docs/shapes-world.md, after GenEval)
# --------------------------------------------------------------------------


def position_vector(a: Any, b: Any) -> tuple[float, float] | None:
    """The position rule's unit offset of object a relative to object b.

    a and b are ShapeObject or Detection (anything with cx, cy, w, h).
    offset = center(a) - center(b); each axis shrinks towards zero by
    0.1 * (size_a + size_b) on that axis (GenEval's tolerance for boxes that
    overlap in projection), then the vector is normalized to unit length as
    docs/shapes-world.md states. Returns None when the shrunk offset is zero: then no
    relation holds.
    """
    off = np.array([a.cx - b.cx, a.cy - b.cy], dtype=np.float64)
    dims = np.array([a.w + b.w, a.h + b.h], dtype=np.float64)
    shrunk = np.sign(off) * np.maximum(np.abs(off) - 0.1 * dims, 0.0)
    norm = float(np.hypot(shrunk[0], shrunk[1]))
    if norm < 1e-6:
        return None
    return float(shrunk[0] / norm), float(shrunk[1] / norm)


def relation_component(vec: tuple[float, float], relation: str) -> float:
    """Signed component of a unit offset along a relation's direction (> 0.5 means it holds)."""
    dx, dy = vec
    if relation == "to the left of":
        return -dx
    if relation == "to the right of":
        return dx
    if relation == "above":
        return -dy  # image y grows downwards
    if relation == "below":
        return dy
    raise ValueError(f"unknown relation {relation!r}; allowed: {RELATIONS}")


def relation_holds(a: Any, b: Any, relation: str) -> bool:
    """Whether "a RELATION b" is true by the position rule of docs/shapes-world.md."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; allowed: {RELATIONS}")
    vec = position_vector(a, b)
    return vec is not None and relation_component(vec, relation) > 0.5

