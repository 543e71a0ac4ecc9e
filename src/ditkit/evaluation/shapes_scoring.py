"""ShapesEval's scorer: GenEval's clause rules (Ghosh et al. 2023) applied to the
detector's findings (docs/shapes-world.md): ``score_image`` (correct or not),
``score_graded`` (partial credit, the best-of-N verifier's score) and ``evaluate``
(category means)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ditkit.data.shapes import CATEGORIES, EXTRA_COLORS, parse_caption, position_vector, relation_component
from ditkit.evaluation.shapes_detector import BASE_COLORS, Detection, detect


def judged_colors(parsed: dict) -> tuple[str, ...]:
    """The detector's vocabulary for a caption: the base palette plus the extra colors the caption
    names (docs/shapes-world.md, "Extra concepts"). A base-world caption is judged exactly as
    before the extra colors existed; "a pink circle" can find pink."""
    extra = [c for c in EXTRA_COLORS if any(cl["color"] == c for cl in parsed["clauses"])]
    return BASE_COLORS + tuple(extra)




def _requirements(parsed: dict) -> dict[tuple[str, str], int]:
    """Needed count per (color, shape); clauses naming the same thing add up."""
    need: dict[tuple[str, str], int] = {}
    for c in parsed["clauses"]:
        key = (c["color"], c["shape"])
        need[key] = need.get(key, 0) + c["count"]
    return need


def matches(dets: list[Detection], clause: dict) -> list[Detection]:
    return [d for d in dets if d.color == clause["color"] and d.shape == clause["shape"]]


def best_relation(dets: list[Detection], parsed: dict) -> float:
    """Best relation component over pairs (A of clause 1, B of clause 2, A is not B); -inf if none."""
    first, second = parsed["clauses"]
    best = -math.inf
    for a in matches(dets, first):
        for b in matches(dets, second):
            if a is b:
                continue
            vec = position_vector(a, b)
            if vec is not None:
                best = max(best, relation_component(vec, parsed["relation"]))
    return best


def _correct(dets: list[Detection], parsed: dict) -> bool:
    exact = parsed["category"] == "counting"
    for (color, shape), n in _requirements(parsed).items():
        found = sum(1 for d in dets if d.color == color and d.shape == shape)
        if (found != n) if exact else (found < n):
            return False
    if parsed["relation"] is not None:
        return best_relation(dets, parsed) > 0.5
    return True


def score_image(image: Any, caption: str) -> bool:
    """Whether an image is correct for a caption by GenEval's clause rules (docs/shapes-world.md).

    single_object / two_object / position / free-form: each named (color,
    shape) needs at least its named count of detections; counting: exactly N.
    position: additionally some pair (A of the first clause, B of the second)
    must satisfy the relation (see position_vector).
    """
    parsed = parse_caption(caption)
    return _correct(detect(image, judged_colors(parsed)), parsed)


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
        comp = best_relation(dets, parsed)
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
    return _graded(detect(image, judged_colors(parsed)), parsed)


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
