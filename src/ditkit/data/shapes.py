"""The shapes world: a procedurally generated, captioned image world.

It is ditkit's embedded training set and its compositional benchmark in the
manner of GenEval (single object, two objects, counting, position; colors and
color attribution through every template). Everything here follows the
contract in SHAPES.md: the canvas and palette, the placement rules, the
caption grammar, the detector and GenEval's clause scoring rules.

Parts:
- generator: ``sample_scene`` / ``scene_for_caption`` place objects, ``render``
  draws them (hard edges, exact palette colors), ``make_batch`` makes a
  training batch that depends only on (seed, step);
- captions: ``format_caption`` and its inverse ``parse_caption``;
- benchmark: ``benchmark_prompts``;
- evaluation: ``detect`` (palette pixels -> connected components -> shape by
  mass distribution and template IoU), ``score_image`` (GenEval's rules),
  ``score_graded`` (partial credit) and ``evaluate`` (category means).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

if TYPE_CHECKING:  # torch is only needed by make_batch; keep the import lazy.
    import torch

__all__ = [
    "PALETTE",
    "SHAPE_NAMES",
    "RELATIONS",
    "CATEGORIES",
    "FREE_FORM",
    "SIZE_WORDS",
    "SIZE_RANGES",
    "NUMBER_WORDS",
    "ShapeObject",
    "Scene",
    "Detection",
    "min_gap",
    "side_range",
    "render",
    "sample_scene",
    "training_mix",
    "scene_for_caption",
    "make_batch",
    "format_caption",
    "parse_caption",
    "benchmark_prompts",
    "position_vector",
    "relation_holds",
    "detect",
    "score_image",
    "score_graded",
    "evaluate",
]

# --------------------------------------------------------------------------
# The world's vocabulary (SHAPES.md)
# --------------------------------------------------------------------------

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 170, 70),
    "blue": (40, 90, 230),
    "purple": (150, 60, 200),
}
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
_WORD_TO_COUNT: dict[str, int] = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}

WHITE = (255, 255, 255)
MIN_SIZE = 32  # smallest canvas the generator and the detector support

# Training mix of sample_scene(category=None): benchmark categories plus a
# few free-form variants so the model also sees mixed counts and size words.
_TRAIN_MIX: tuple[tuple[str | None, float], ...] = (
    ("single_object", 0.20),
    ("two_object", 0.25),
    ("counting", 0.25),
    ("position", 0.25),
    (None, 0.05),
)


def training_mix(weights: Mapping[str, float] | None = None) -> tuple[tuple[str | None, float], ...]:
    """The training mix with some categories re-weighted (`data.mix` in a train config):
    weights by name (CATEGORIES or "free_form"); unnamed ones keep their default weight,
    and the result is normalised. Raises ValueError for an unknown name, a negative or
    non-numeric weight, or a mix whose weights are all zero."""
    names = {FREE_FORM if c is None else c: c for c, _ in _TRAIN_MIX}
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"unknown mix categories {unknown}; allowed: {', '.join(names)}")
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"mix weight of {k!r} must be a number >= 0, got {w!r}")
    mix = [(c, float(weights.get(FREE_FORM if c is None else c, p))) for c, p in _TRAIN_MIX]
    total = sum(p for _, p in mix)
    if total <= 0:
        raise ValueError("mix weights are all zero; at least one category needs a weight > 0")
    return tuple((c, p / total) for c, p in mix)

# Position captions drawn by the generator must be true with a clear margin:
# the unit offset component must pass this (the rule's threshold is 0.5) and
# the shrunk offset must be at least _POSITION_MIN_SHIFT * S pixels, so that a
# pixel or two of detector error cannot flip the relation.
_POSITION_MARGIN = 0.75
_POSITION_MIN_SHIFT = 0.08


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


@dataclass(frozen=True)
class Detection:
    """One detected object; the box is [x0, x1) x [y0, y1) in pixels."""

    color: str
    shape: str
    x0: float
    y0: float
    x1: float
    y1: float
    area: int

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


# --------------------------------------------------------------------------
# Geometry and rendering
# --------------------------------------------------------------------------


def _check_size(size: int) -> None:
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


def _bbox_gap(a: ShapeObject, b: ShapeObject) -> int:
    """Background pixels between two boxes (Chebyshev separation; < 0 means overlap)."""
    gap_x = max(b.x0 - a.x1, a.x0 - b.x1)
    gap_y = max(b.y0 - a.y1, a.y0 - b.y1)
    return max(gap_x, gap_y)


@lru_cache(maxsize=4096)
def _shape_mask(shape: str, w: int, h: int) -> np.ndarray:
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
    if obj.color not in PALETTE:
        raise ValueError(f"unknown color {obj.color!r}; allowed: {tuple(PALETTE)}")
    if obj.side < 1:
        raise ValueError(f"object side must be >= 1, got {obj.side}")


def render(objects: Iterable[ShapeObject], size: int = 64) -> Image.Image:
    """Draw objects on a white S x S RGB canvas with hard edges and exact palette colors.

    Parts of an object outside the canvas are clipped.
    """
    _check_size(size)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    for obj in objects:
        _check_object(obj)
        mask = _shape_mask(obj.shape, obj.side, obj.side)
        # Clip the box to the canvas and cut the mask to match.
        x0, y0 = max(obj.x0, 0), max(obj.y0, 0)
        x1, y1 = min(obj.x1, size), min(obj.y1, size)
        if x0 >= x1 or y0 >= y1:
            continue
        sub = mask[y0 - obj.y0 : y1 - obj.y0, x0 - obj.x0 : x1 - obj.x0]
        canvas[y0:y1, x0:x1][sub] = PALETTE[obj.color]
    return Image.fromarray(canvas, mode="RGB")


# --------------------------------------------------------------------------
# Position rule (SHAPES.md, after GenEval)
# --------------------------------------------------------------------------


def position_vector(a: Any, b: Any) -> tuple[float, float] | None:
    """The position rule's unit offset of object a relative to object b.

    a and b are ShapeObject or Detection (anything with cx, cy, w, h).
    offset = center(a) - center(b); each axis shrinks towards zero by
    0.1 * (size_a + size_b) on that axis (GenEval's tolerance for boxes that
    overlap in projection), then the vector is normalized to unit length as
    SHAPES.md states. Returns None when the shrunk offset is zero: then no
    relation holds.
    """
    off = np.array([a.cx - b.cx, a.cy - b.cy], dtype=np.float64)
    dims = np.array([a.w + b.w, a.h + b.h], dtype=np.float64)
    shrunk = np.sign(off) * np.maximum(np.abs(off) - 0.1 * dims, 0.0)
    norm = float(np.hypot(shrunk[0], shrunk[1]))
    if norm < 1e-6:
        return None
    return float(shrunk[0] / norm), float(shrunk[1] / norm)


def _relation_component(vec: tuple[float, float], relation: str) -> float:
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
    """Whether "a RELATION b" is true by the position rule of SHAPES.md."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; allowed: {RELATIONS}")
    vec = position_vector(a, b)
    return vec is not None and _relation_component(vec, relation) > 0.5


def _relation_clear(a: ShapeObject, b: ShapeObject, relation: str, size: int) -> bool:
    """A relation the generator may caption: true with a margin (see _POSITION_MARGIN)."""
    vec = position_vector(a, b)
    if vec is None or _relation_component(vec, relation) < _POSITION_MARGIN:
        return False
    horizontal = relation in ("to the left of", "to the right of")
    off = abs(a.cx - b.cx) if horizontal else abs(a.cy - b.cy)
    dim = (a.w + b.w) if horizontal else (a.h + b.h)
    return off - 0.1 * dim >= _POSITION_MIN_SHIFT * size


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------


def _noun_phrase(clause: dict) -> str:
    count, size_word = clause["count"], clause.get("size")
    words = ([size_word] if size_word else []) + [clause["color"]]
    words.append(clause["shape"] + ("s" if count > 1 else ""))
    if count == 1:
        # "an" before a vowel sound; in this vocabulary that is a leading vowel.
        number = "an" if words[0][0] in "aeiou" else "a"
    else:
        number = NUMBER_WORDS[count]
    return " ".join([number] + words)


def _check_clause(clause: dict) -> None:
    if clause.get("count") not in NUMBER_WORDS:
        raise ValueError(f"clause count must be one of {tuple(NUMBER_WORDS)}, got {clause.get('count')!r}")
    if clause.get("color") not in PALETTE:
        raise ValueError(f"unknown color {clause.get('color')!r}; allowed: {tuple(PALETTE)}")
    if clause.get("shape") not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {clause.get('shape')!r}; allowed: {SHAPE_NAMES}")
    if clause.get("size") not in SIZE_RANGES:
        raise ValueError(f"unknown size {clause.get('size')!r}; allowed: {SIZE_WORDS} or None")


def format_caption(clauses: Sequence[dict], relation: str | None = None) -> str:
    """The caption for clauses ({"count", "color", "shape", "size"}), the inverse of parse_caption.

    With a relation there must be exactly two clauses: "A RELATION B";
    otherwise the clauses are joined with " and ".
    """
    if not clauses:
        raise ValueError("a caption needs at least one clause")
    for clause in clauses:
        _check_clause(clause)
    if relation is None:
        return " and ".join(_noun_phrase(c) for c in clauses)
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; allowed: {RELATIONS}")
    if len(clauses) != 2:
        raise ValueError(f"a relation needs exactly two clauses, got {len(clauses)}")
    return f"{_noun_phrase(clauses[0])} {relation} {_noun_phrase(clauses[1])}"


def _parse_noun_phrase(text: str, caption: str) -> dict:
    words = text.split()
    if len(words) not in (3, 4):
        raise ValueError(
            f"cannot parse {caption!r}: {text!r} is not 'NUMBER [SIZE] COLOR SHAPE' "
            f"(NUMBER in {tuple(_WORD_TO_COUNT)}, SIZE in {SIZE_WORDS})"
        )
    number, *middle, noun = words
    if number not in _WORD_TO_COUNT:
        raise ValueError(
            f"cannot parse {caption!r}: {number!r} is not a number word; allowed: {tuple(_WORD_TO_COUNT)}"
        )
    count = _WORD_TO_COUNT[number]
    size_word = middle[0] if len(middle) == 2 else None
    color = middle[-1]
    if size_word is not None and size_word not in SIZE_WORDS:
        raise ValueError(f"cannot parse {caption!r}: unknown size {size_word!r}; allowed: {SIZE_WORDS}")
    if color not in PALETTE:
        raise ValueError(f"cannot parse {caption!r}: unknown color {color!r}; allowed: {tuple(PALETTE)}")
    # Plural agreement is part of the grammar: "two red circle" is rejected.
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    if shape not in SHAPE_NAMES or (count > 1) != (noun != shape):
        form = "plural" if count > 1 else "singular"
        raise ValueError(
            f"cannot parse {caption!r}: {noun!r} is not a {form} shape; allowed shapes: {SHAPE_NAMES}"
        )
    return {"count": count, "color": color, "shape": shape, "size": size_word}


def _structural_category(clauses: list[dict], relation: str | None) -> str:
    if relation is not None:
        return "position"
    if len(clauses) == 1:
        return "single_object" if clauses[0]["count"] == 1 else "counting"
    if len(clauses) == 2 and all(c["count"] == 1 for c in clauses):
        return "two_object"
    return FREE_FORM


def parse_caption(caption: str) -> dict:
    """Parse a caption into {"clauses": [...], "relation": str | None, "category": str}.

    Each clause is {"count": int, "color": str, "shape": str, "size": str | None}.
    Accepts the four benchmark templates and the free-form "... and ..."
    variants (any number of 'NUMBER [SIZE] COLOR SHAPE' phrases). The category
    follows from the structure: a relation -> "position"; one clause ->
    "single_object" (count 1) or "counting"; two single objects ->
    "two_object"; anything else -> FREE_FORM. Case, extra spaces and a final
    period are forgiven, and "a"/"an" are both read as one.
    Raises ValueError naming the caption for anything else.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    text = " ".join(caption.lower().split()).rstrip(".").strip()
    if not text:
        raise ValueError(f"cannot parse {caption!r}: empty caption")
    relation = None
    for rel in RELATIONS:
        parts = f" {text} ".split(f" {rel} ")
        if len(parts) == 2:
            if relation is not None:
                raise ValueError(f"cannot parse {caption!r}: more than one relation")
            relation, phrases = rel, [p.strip() for p in parts]
        elif len(parts) > 2:
            raise ValueError(f"cannot parse {caption!r}: relation {rel!r} appears more than once")
    if relation is None:
        phrases = text.split(" and ")
    elif any(" and " in f" {p} " for p in phrases):
        raise ValueError(f"cannot parse {caption!r}: a position caption relates exactly two phrases")
    clauses = [_parse_noun_phrase(p.strip(), caption) for p in phrases]
    return {"clauses": clauses, "relation": relation, "category": _structural_category(clauses, relation)}


# --------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence) -> Any:
    return options[int(rng.integers(len(options)))]


def _distinct_pairs(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n distinct (color, shape) pairs, so that two clauses never name the same thing."""
    all_pairs = [(c, s) for c in PALETTE for s in SHAPE_NAMES]
    idx = rng.choice(len(all_pairs), size=n, replace=False)
    return [all_pairs[int(i)] for i in idx]


def _clause(count: int, color: str, shape: str, size_word: str | None = None) -> dict:
    return {"count": count, "color": color, "shape": shape, "size": size_word}


def _sample_spec(rng: np.random.Generator, category: str | None) -> tuple[list[dict], str | None]:
    """Clauses and relation of a random caption of a category (None: a free-form variant)."""
    if category == "single_object":
        size_word = _pick(rng, SIZE_WORDS)
        return [_clause(1, _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES), size_word)], None
    if category == "two_object":
        return [_clause(1, c, s) for c, s in _distinct_pairs(rng, 2)], None
    if category == "counting":
        count = int(rng.integers(2, 5))
        return [_clause(count, _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES))], None
    if category == "position":
        return [_clause(1, c, s) for c, s in _distinct_pairs(rng, 2)], _pick(rng, RELATIONS)
    if category is not None:
        raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES} or None")
    return _sample_free_form(rng), None


def _sample_free_form(rng: np.random.Generator) -> list[dict]:
    variant = int(rng.integers(4))
    if variant == 0:  # "a red circle": no size word, any size
        return [_clause(1, _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES))]
    if variant == 1:  # "two blue squares and a red circle": mixed counts, <= 4 objects
        n1 = int(rng.integers(1, 4))
        n2 = int(rng.integers(1, 5 - n1))
        if n1 == 1 and n2 == 1:
            n1 = 2
        return [_clause(n, c, s) for n, (c, s) in zip((n1, n2), _distinct_pairs(rng, 2))]
    if variant == 2:  # "two small red circles": counting with a size word
        return [_clause(int(rng.integers(2, 5)), _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES),
                        _pick(rng, SIZE_WORDS))]
    # "a small red circle and a large blue square": two objects with size words
    return [_clause(1, c, s, _pick(rng, SIZE_WORDS)) for c, s in _distinct_pairs(rng, 2)]


def _place(rng: np.random.Generator, clauses: list[dict], relation: str | None, size: int,
           max_tries: int = 2000) -> tuple[ShapeObject, ...]:
    """Random non-touching placement of the clauses' objects (rejection sampling).

    Every box keeps >= 1 px from the border and >= min_gap(size) px of
    background from every other box; with a relation, the first object of the
    first clause must stand in it to the first object of the second clause
    with a clear margin.
    """
    gap = min_gap(size)
    wanted = [(c["shape"], c["color"], c.get("size")) for c in clauses for _ in range(c["count"])]
    second = clauses[0]["count"]  # index of the second clause's first object
    for _ in range(max_tries):
        objects: list[ShapeObject] = []
        for shape, color, size_word in wanted:
            lo, hi = side_range(size_word, size)
            side = int(rng.integers(lo, hi + 1))
            for _ in range(50):
                # x0 in [1, S-1-side]: one pixel of border on both sides.
                x0 = int(rng.integers(1, size - side))
                y0 = int(rng.integers(1, size - side))
                cand = ShapeObject(shape, color, x0, y0, side)
                if all(_bbox_gap(cand, o) >= gap for o in objects):
                    objects.append(cand)
                    break
            else:
                break  # crowded: start the whole scene again
        if len(objects) != len(wanted):
            continue
        if relation is not None and not _relation_clear(objects[0], objects[second], relation, size):
            continue
        return tuple(objects)
    raise RuntimeError(
        f"could not place {len(wanted)} objects on a {size}x{size} canvas in {max_tries} tries"
    )


def _check_spec(clauses: list[dict], relation: str | None, size: int) -> None:
    total = sum(c["count"] for c in clauses)
    if total > 4:
        raise ValueError(f"a scene holds at most 4 objects, the caption names {total}")
    if relation is not None and len(clauses) != 2:
        raise ValueError(f"a relation needs exactly two clauses, got {len(clauses)}")
    for c in clauses:
        lo, hi = side_range(c.get("size"), size)
        if lo > hi:
            raise ValueError(f"no integer side fits size {c.get('size')!r} on a {size}px canvas")


def sample_scene(rng: np.random.Generator, size: int = 64, category: str | None = None,
                 mix: tuple[tuple[str | None, float], ...] | None = None) -> Scene:
    """A random captioned scene; deterministic given the rng state.

    category: one of CATEGORIES, or None for a draw from the training mix: `mix`
    (from training_mix) or the default (single_object 0.2, two_object 0.25,
    counting 0.25, position 0.25, free-form variants 0.05).
    The returned Scene.category is None for a free-form variant.
    """
    _check_size(size)
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES} or None")
    if category is None:
        names = [c for c, _ in mix or _TRAIN_MIX]
        probs = np.array([p for _, p in mix or _TRAIN_MIX])
        category = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    clauses, relation = _sample_spec(rng, category)
    objects = _place(rng, clauses, relation, size)
    return Scene(objects, format_caption(clauses, relation), category)


def scene_for_caption(caption: str, rng: np.random.Generator, size: int = 64) -> Scene:
    """A random scene that the caption describes: a ground-truth image for any prompt.

    The category is the parsed one, or None for a free-form caption.
    """
    _check_size(size)
    parsed = parse_caption(caption)
    clauses, relation = parsed["clauses"], parsed["relation"]
    _check_spec(clauses, relation, size)
    objects = _place(rng, clauses, relation, size)
    category = parsed["category"] if parsed["category"] in CATEGORIES else None
    return Scene(objects, format_caption(clauses, relation), category)


def make_batch(seed: int, step: int, batch_size: int, size: int = 64,
               mix: Mapping[str, float] | None = None) -> tuple["torch.Tensor", list[str]]:
    """A training batch: images (B, 3, S, S) float32 in [-1, 1] and their captions.

    The rng is np.random.default_rng([seed, step]), so a batch depends only on
    (seed, step): a resumed run sees exactly the batches it would have seen.
    mix: category weights for training_mix (None: the default mix).
    """
    images, scenes = make_scene_batch(seed, step, batch_size, size, mix)
    return images, [s.caption for s in scenes]


def make_scene_batch(seed: int, step: int, batch_size: int, size: int = 64,
                     mix: Mapping[str, float] | None = None) -> tuple["torch.Tensor", list[Scene]]:
    """make_batch's images with their Scenes (objects and boxes), for tasks that need
    to know where the objects are (inpainting masks)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    resolved = training_mix(mix) if mix else None
    rng = np.random.default_rng([seed, step])
    scenes = [sample_scene(rng, size, mix=resolved) for _ in range(batch_size)]
    return render_tensor(scenes, size), scenes


def render_tensor(scenes: Sequence[Scene], size: int) -> "torch.Tensor":
    """The scenes drawn as one float tensor (B, 3, S, S) in [-1, 1], the training format."""
    import torch  # lazy: importing the data module should not pull in torch

    pixels = np.stack([np.asarray(render(s.objects, size)) for s in scenes])  # (B, S, S, 3) uint8
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def reference_images(caption: str, rng: np.random.Generator, count: int, size: int = 64,
                     mix: Mapping[str, float] | None = None) -> "torch.Tensor":
    """`count` fresh images that `caption` describes, (count, 3, S, S) in [-1, 1], in
    make_batch's format: the reference set of a Stable Target Field (train.stf_refs).
    The empty caption (a dropped one) stands for the whole training distribution, so its
    references are scenes of the training mix."""
    if caption:
        scenes = [scene_for_caption(caption, rng, size) for _ in range(count)]
    else:
        resolved = training_mix(mix) if mix else None
        scenes = [sample_scene(rng, size, mix=resolved) for _ in range(count)]
    return render_tensor(scenes, size)


def object_caption(obj: ShapeObject) -> str:
    """The single-object caption of one drawn object ("an orange circle")."""
    return format_caption([_clause(1, obj.color, obj.shape)])


# --------------------------------------------------------------------------
# Benchmark prompts
# --------------------------------------------------------------------------


def _all_captions(category: str) -> list[str]:
    """Every benchmark caption of a category, in a fixed order."""
    pairs = [(c, s) for c in PALETTE for s in SHAPE_NAMES]
    if category == "single_object":
        return [format_caption([_clause(1, c, s, z)]) for z in SIZE_WORDS for c, s in pairs]
    if category == "two_object":
        return [format_caption([_clause(1, *a), _clause(1, *b)]) for a in pairs for b in pairs if a != b]
    if category == "counting":
        return [format_caption([_clause(n, c, s)]) for n in (2, 3, 4) for c, s in pairs]
    if category == "position":
        return [format_caption([_clause(1, *a), _clause(1, *b)], r)
                for r in RELATIONS for a in pairs for b in pairs if a != b]
    raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES}")


def benchmark_prompts(per_category: int, seed: int = 0) -> list[tuple[str, str]]:
    """(category, caption) pairs: per_category of each of CATEGORIES, in that order.

    Captions are drawn without replacement from all captions of the category
    (36 single_object, 306 two_object, 54 counting, 1224 position), so they
    are distinct until a category runs out; then a fresh permutation follows.
    Deterministic given seed.
    """
    if not isinstance(per_category, (int, np.integer)) or per_category < 0:
        raise ValueError(f"per_category must be an integer >= 0, got {per_category!r}")
    prompts: list[tuple[str, str]] = []
    for k, category in enumerate(CATEGORIES):
        captions = _all_captions(category)
        rng = np.random.default_rng([seed, k])
        chosen: list[str] = []
        while len(chosen) < per_category:
            order = rng.permutation(len(captions))
            chosen.extend(captions[int(i)] for i in order[: per_category - len(chosen)])
        prompts.extend((category, c) for c in chosen)
    return prompts


# --------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------

_COLOR_NAMES = tuple(PALETTE)
# Each palette color as a direction away from white: a pixel on the segment
# white -> color is that color at "coverage" alpha (an anti-aliased or
# blurred edge), so classification is along these lines, not by plain
# nearest color.
_U = 255.0 - np.array([PALETTE[c] for c in _COLOR_NAMES], dtype=np.float32)  # (6, 3)
_U_NORM2 = (_U * _U).sum(axis=1)  # (6,)
_ALPHA_MIN = 0.5  # at least half covered: blurred edges split where the true edge was
_ALPHA_MAX = 1.6  # somewhat darker than the palette color is still that color
# Max distance (RGB units) from a palette line. Tolerates slight color shifts
# but rejects grays (every gray dark enough to pass _ALPHA_MIN lies >= 50
# from all six lines) and dark blur.
_RESIDUAL_MAX = 45.0


def _as_rgb_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"image must be a PIL image or a uint8 array of shape (H, W, 3), "
                f"got dtype {arr.dtype} and shape {arr.shape}"
            )
    if min(arr.shape[:2]) < MIN_SIZE:
        raise ValueError(
            f"image must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {arr.shape[1]}x{arr.shape[0]}"
        )
    return arr


def _classify_pixels(arr: np.ndarray) -> np.ndarray:
    """Per-pixel palette index (H, W) int8, -1 for background or unrecognized pixels."""
    h, w, _ = arr.shape
    d = 255.0 - arr.reshape(-1, 3).astype(np.float32)  # (N, 3) offset from white
    alpha = (d @ _U.T) / _U_NORM2  # (N, 6) position along each white -> color line
    # Squared distance to each line (Pythagoras); clip float round-off below 0.
    resid2 = np.maximum((d * d).sum(axis=1, keepdims=True) - alpha * alpha * _U_NORM2, 0.0)
    best = resid2.argmin(axis=1)
    rows = np.arange(best.size)
    a, r2 = alpha[rows, best], resid2[rows, best]
    keep = (a >= _ALPHA_MIN) & (a <= _ALPHA_MAX) & (r2 <= _RESIDUAL_MAX**2)
    return np.where(keep, best, -1).astype(np.int8).reshape(h, w)


def _min_area(size: int) -> int:
    # A fifth of the smallest allowed box area: drops speckle noise, keeps
    # the smallest triangle (about half its box) even after blur.
    return max(4, int(0.2 * (0.14 * size) ** 2))


def _bottom_heaviness(mask: np.ndarray) -> float:
    """(bottom - top) / total mass of a mask split at its bbox's middle row.

    An upright triangle is ~0.5 (a quarter of its mass lies in the top half),
    and still >= 0.2 when blur eats its thin apex; a disc or a square is 0.
    """
    h = mask.shape[0]
    rows = mask.sum(axis=1).astype(np.float64)
    top_weight = np.clip(h / 2 - np.arange(h), 0.0, 1.0)  # splits an odd middle row in half
    top = float((rows * top_weight).sum())
    total = float(rows.sum())
    return (total - 2 * top) / total if total else 0.0


# Triangles measure >= 0.2 even blurred at the smallest sizes; discs and
# squares stay within +-0.08 under noise (measured on the generator's images).
_TRIANGLE_HEAVINESS = 0.14


def _classify_shape(mask: np.ndarray) -> str:
    """Shape of one component mask (its bbox crop).

    A triangle is told by where its mass sits (at the bottom), which survives
    blur better than its fill ratio: blur removes the apex, and the truncated
    triangle fills its shorter bbox more. Disc and square are told apart by
    the IoU with their templates stretched over the bbox, i.e. by the fill
    ratio (square ~1, disc ~pi/4) and by where the missing pixels are (the
    corners).
    """
    if _bottom_heaviness(mask) >= _TRIANGLE_HEAVINESS:
        return "triangle"
    h, w = mask.shape
    best, best_iou = "circle", -1.0
    for shape in ("circle", "square"):
        tmpl = _shape_mask(shape, w, h)
        union = np.count_nonzero(mask | tmpl)
        iou = np.count_nonzero(mask & tmpl) / union if union else 0.0
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def detect(image: Any) -> list[Detection]:
    """Detect the flat colored shapes of an image (PIL image or uint8 (H, W, 3) array, sides >= 32).

    Pixels -> nearest palette line (or background) -> 4-connected components
    per color (holes filled, specks dropped) -> shape (see _classify_shape).
    Deterministic; sorted top to bottom, then left to right.
    """
    arr = _as_rgb_array(image)
    labels = _classify_pixels(arr)
    min_area = _min_area(min(arr.shape[:2]))
    found: list[Detection] = []
    for k in np.unique(labels):
        if k < 0:
            continue
        # Filling holes repairs specks of noise inside a shape; it never joins
        # two objects, since the shapes are convex and kept apart.
        mask = ndimage.binary_fill_holes(labels == k)
        comp, _ = ndimage.label(mask)
        for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            sub = comp[sl] == idx
            area = int(np.count_nonzero(sub))
            if area < min_area:
                continue
            ys, xs = sl
            found.append(Detection(_COLOR_NAMES[int(k)], _classify_shape(sub),
                                   float(xs.start), float(ys.start), float(xs.stop), float(ys.stop), area))
    found.sort(key=lambda d: (d.y0, d.x0, d.color, d.shape))
    return found


# --------------------------------------------------------------------------
# Scoring (GenEval's clause rules, SHAPES.md)
# --------------------------------------------------------------------------


def _requirements(parsed: dict) -> dict[tuple[str, str], int]:
    """Needed count per (color, shape); clauses naming the same thing add up."""
    need: dict[tuple[str, str], int] = {}
    for c in parsed["clauses"]:
        key = (c["color"], c["shape"])
        need[key] = need.get(key, 0) + c["count"]
    return need


def _matches(dets: list[Detection], clause: dict) -> list[Detection]:
    return [d for d in dets if d.color == clause["color"] and d.shape == clause["shape"]]


def _best_relation(dets: list[Detection], parsed: dict) -> float:
    """Best relation component over pairs (A of clause 1, B of clause 2, A is not B); -inf if none."""
    first, second = parsed["clauses"]
    best = -math.inf
    for a in _matches(dets, first):
        for b in _matches(dets, second):
            if a is b:
                continue
            vec = position_vector(a, b)
            if vec is not None:
                best = max(best, _relation_component(vec, parsed["relation"]))
    return best


def _correct(dets: list[Detection], parsed: dict) -> bool:
    exact = parsed["category"] == "counting"
    for (color, shape), n in _requirements(parsed).items():
        found = sum(1 for d in dets if d.color == color and d.shape == shape)
        if (found != n) if exact else (found < n):
            return False
    if parsed["relation"] is not None:
        return _best_relation(dets, parsed) > 0.5
    return True


def score_image(image: Any, caption: str) -> bool:
    """Whether an image is correct for a caption by GenEval's clause rules (SHAPES.md).

    single_object / two_object / position / free-form: each named (color,
    shape) needs at least its named count of detections; counting: exactly N.
    position: additionally some pair (A of the first clause, B of the second)
    must satisfy the relation (see position_vector).
    """
    parsed = parse_caption(caption)
    return _correct(detect(image), parsed)


def _graded(dets: list[Detection], parsed: dict) -> float:
    if _correct(dets, parsed):
        return 1.0
    exact = parsed["category"] == "counting"
    need = _requirements(parsed)
    used: set[int] = set()
    credits: list[float] = []
    hits: dict[tuple[str, str], int] = {}
    # Exact matches first (right color and shape) for every requirement ...
    for key, n in need.items():
        ids = [i for i, d in enumerate(dets) if (d.color, d.shape) == key]
        take = ids if exact else ids[:n]  # counting: surplus ones are the requirement's errors
        used.update(take)
        hits[key] = len(ids)
    # ... then half credit for a leftover object with the right color or shape.
    for key, n in need.items():
        found = hits[key]
        short = max(n - found, 0)
        half = [i for i, d in enumerate(dets) if i not in used and (d.color == key[0] or d.shape == key[1])]
        half = half[:short]
        used.update(half)
        credit = (min(found, n) + 0.5 * len(half)) / n
        if exact and found > n:
            credit *= n / found  # too many is wrong for counting
        credits.append(credit)
    if parsed["relation"] is not None:
        comp = _best_relation(dets, parsed)
        # Closer to the required direction earns more, at most half unless true.
        credits.append(1.0 if comp > 0.5 else (0.0 if comp == -math.inf else 0.5 * (comp + 1.0) / 1.5))
    extras = len(dets) - len(used)
    score = float(np.mean(credits)) / (1.0 + 0.25 * extras)
    # Only a correct image may reach 1.
    return float(min(max(score, 0.0), 0.95))


def score_graded(image: Any, caption: str) -> float:
    """A score in [0, 1]: 1.0 exactly when score_image is True, partial credit otherwise.

    Partial credit is the mean over requirements (each named object count,
    and the relation) of the fraction satisfied; an object with only the
    right color or only the right shape counts half; objects the caption does
    not name divide the score by (1 + 0.25 * extras). Capped at 0.95 when
    wrong, so a nearly right image outranks a wrong one but never a right one.
    """
    parsed = parse_caption(caption)
    return _graded(detect(image), parsed)


def evaluate(images: Sequence[Any], captions: Sequence[str], categories: Sequence[str]) -> dict:
    """GenEval-style scores: {"overall", "categories": {category: mean}, "n"}.

    Each image is correct or not (score_image); a category's score is the mean
    over its images; overall is the mean of the category scores.
    """
    if not (len(images) == len(captions) == len(categories)):
        raise ValueError(
            f"images, captions and categories must have the same length, got "
            f"{len(images)}, {len(captions)}, {len(categories)}"
        )
    if len(images) == 0:
        raise ValueError("evaluate needs at least one image")
    per_cat: dict[str, list[bool]] = {}
    for image, caption, category in zip(images, captions, categories):
        per_cat.setdefault(str(category), []).append(score_image(image, caption))
    # Report the benchmark categories in their canonical order first.
    order = [c for c in CATEGORIES if c in per_cat] + [c for c in per_cat if c not in CATEGORIES]
    means = {c: float(np.mean(per_cat[c])) for c in order}
    return {"overall": float(np.mean(list(means.values()))), "categories": means, "n": len(images)}
