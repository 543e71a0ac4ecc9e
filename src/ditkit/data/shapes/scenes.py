"""The shapes world's generator: random captioned scenes (``sample_scene``,
``scene_for_caption``) placed by rejection sampling, and training batches
(``make_batch``) that depend only on (seed, step)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ditkit.data.shapes.captions import format_caption, make_clause, parse_caption
from ditkit.data.shapes.world import (CATEGORIES, COLORS, EXTRA_COLORS, FREE_FORM, PALETTE, RELATIONS, SHAPE_NAMES,
                                      SIZE_WORDS, Scene, ShapeObject, bbox_gap, check_size, min_gap,
                                      position_vector, relation_component, render, side_range)

if TYPE_CHECKING:  # torch is only needed by make_batch; keep the import lazy.
    import torch

# Training mix of sample_scene(category=None): benchmark categories plus a
# few free-form variants so the model also sees mixed counts and size words.
_TRAIN_MIX: tuple[tuple[str | None, float], ...] = (
    ("single_object", 0.20),
    ("two_object", 0.25),
    ("counting", 0.25),
    ("position", 0.25),
    (None, 0.05),
)
# The opt-in mix category of the extra concepts (world.EXTRA_COLORS): a scene of one of the four
# benchmark templates in which at least one object has an extra color. It is in a mix only when
# data.mix gives it a weight > 0, so the default mix (and every batch drawn from it) is unchanged.
EXTRA_COLORS_MIX = "extra_colors"


def training_mix(weights: Mapping[str, float] | None = None) -> tuple[tuple[str | None, float], ...]:
    """The training mix with some categories re-weighted (`data.mix` in a train config):
    weights by name (CATEGORIES, "free_form" or the opt-in "extra_colors", default weight 0);
    unnamed ones keep their default weight, and the result is normalised. Raises ValueError for
    an unknown name, a negative or non-numeric weight, or a mix whose weights are all zero."""
    names = {FREE_FORM if c is None else c: c for c, _ in _TRAIN_MIX}
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names) - {EXTRA_COLORS_MIX})
    if unknown:
        raise ValueError(f"unknown mix categories {unknown}; allowed: {', '.join([*names, EXTRA_COLORS_MIX])}")
    for k, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"mix weight of {k!r} must be a number >= 0, got {w!r}")
    mix = [(c, float(weights.get(FREE_FORM if c is None else c, p))) for c, p in _TRAIN_MIX]
    if weights.get(EXTRA_COLORS_MIX, 0) > 0:  # appended only when asked for: the base mix stays as it was
        mix.append((EXTRA_COLORS_MIX, float(weights[EXTRA_COLORS_MIX])))
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


def _relation_clear(a: ShapeObject, b: ShapeObject, relation: str, size: int) -> bool:
    """A relation the generator may caption: true with a margin (see _POSITION_MARGIN)."""
    vec = position_vector(a, b)
    if vec is None or relation_component(vec, relation) < _POSITION_MARGIN:
        return False
    horizontal = relation in ("to the left of", "to the right of")
    off = abs(a.cx - b.cx) if horizontal else abs(a.cy - b.cy)
    dim = (a.w + b.w) if horizontal else (a.h + b.h)
    return off - 0.1 * dim >= _POSITION_MIN_SHIFT * size



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



def _sample_extra_spec(rng: np.random.Generator) -> tuple[list[dict], str | None, str]:
    """Clauses, relation and category of an extra-color scene (EXTRA_COLORS_MIX): one of the four
    benchmark templates, uniformly, with an extra color in its clause (single object, counting)
    or in one of its two clauses, the other drawn from every color (two objects, position)."""
    category = _pick(rng, CATEGORIES)
    extra = (_pick(rng, tuple(EXTRA_COLORS)), _pick(rng, SHAPE_NAMES))
    if category == "single_object":
        return [make_clause(1, *extra, _pick(rng, SIZE_WORDS))], None, category
    if category == "counting":
        return [make_clause(int(rng.integers(2, 5)), *extra)], None, category
    others = [(c, s) for c in COLORS for s in SHAPE_NAMES if (c, s) != extra]
    pair = [extra, others[int(rng.integers(len(others)))]]
    if rng.integers(2):
        pair.reverse()
    clauses = [make_clause(1, c, s) for c, s in pair]
    return clauses, (_pick(rng, RELATIONS) if category == "position" else None), category


def _sample_spec(rng: np.random.Generator, category: str | None) -> tuple[list[dict], str | None]:
    """Clauses and relation of a random caption of a category (None: a free-form variant)."""
    if category == "single_object":
        size_word = _pick(rng, SIZE_WORDS)
        return [make_clause(1, _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES), size_word)], None
    if category == "two_object":
        return [make_clause(1, c, s) for c, s in _distinct_pairs(rng, 2)], None
    if category == "counting":
        count = int(rng.integers(2, 5))
        return [make_clause(count, _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES))], None
    if category == "position":
        return [make_clause(1, c, s) for c, s in _distinct_pairs(rng, 2)], _pick(rng, RELATIONS)
    if category is not None:
        raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES} or None")
    return _sample_free_form(rng), None


def _sample_free_form(rng: np.random.Generator) -> list[dict]:
    variant = int(rng.integers(4))
    if variant == 0:  # "a red circle": no size word, any size
        return [make_clause(1, _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES))]
    if variant == 1:  # "two blue squares and a red circle": mixed counts, <= 4 objects
        n1 = int(rng.integers(1, 4))
        n2 = int(rng.integers(1, 5 - n1))
        if n1 == 1 and n2 == 1:
            n1 = 2
        return [make_clause(n, c, s) for n, (c, s) in zip((n1, n2), _distinct_pairs(rng, 2))]
    if variant == 2:  # "two small red circles": counting with a size word
        return [make_clause(int(rng.integers(2, 5)), _pick(rng, tuple(PALETTE)), _pick(rng, SHAPE_NAMES),
                        _pick(rng, SIZE_WORDS))]
    # "a small red circle and a large blue square": two objects with size words
    return [make_clause(1, c, s, _pick(rng, SIZE_WORDS)) for c, s in _distinct_pairs(rng, 2)]


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
                if all(bbox_gap(cand, o) >= gap for o in objects):
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
    counting 0.25, position 0.25, free-form variants 0.05). Only a mix that names
    "extra_colors" draws extra colors (world.EXTRA_COLORS).
    The returned Scene.category is None for a free-form variant, and the template's category
    for an extra-color scene.
    """
    check_size(size)
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES} or None")
    if category is None:
        names = [c for c, _ in mix or _TRAIN_MIX]
        probs = np.array([p for _, p in mix or _TRAIN_MIX])
        category = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    if category == EXTRA_COLORS_MIX:
        clauses, relation, category = _sample_extra_spec(rng)
    else:
        clauses, relation = _sample_spec(rng, category)
    objects = _place(rng, clauses, relation, size)
    return Scene(objects, format_caption(clauses, relation), category)


def scene_for_caption(caption: str, rng: np.random.Generator, size: int = 64) -> Scene:
    """A random scene that the caption describes: a ground-truth image for any prompt.

    The category is the parsed one, or None for a free-form caption.
    """
    check_size(size)
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

