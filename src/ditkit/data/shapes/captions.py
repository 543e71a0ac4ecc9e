"""Captions of the shapes world: ``format_caption`` and its inverse ``parse_caption``, and
the benchmark prompt lists (``benchmark_prompts``) of ShapesEval's four categories."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ditkit.data.shapes.world import (CATEGORIES, COLORS, EXTRA_COLORS, FREE_FORM, NUMBER_WORDS, PALETTE, RELATIONS,
                                      SHAPE_NAMES, SIZE_RANGES, SIZE_WORDS, ShapeObject)

_WORD_TO_COUNT: dict[str, int] = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


# --------------------------------------------------------------------------
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
    if clause.get("color") not in COLORS:
        raise ValueError(f"unknown color {clause.get('color')!r}; allowed: {tuple(COLORS)}")
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
    if color not in COLORS:
        raise ValueError(f"cannot parse {caption!r}: unknown color {color!r}; allowed: {tuple(COLORS)}")
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



def make_clause(count: int, color: str, shape: str, size_word: str | None = None) -> dict:
    return {"count": count, "color": color, "shape": shape, "size": size_word}


def object_caption(obj: ShapeObject) -> str:
    """The single-object caption of one drawn object ("an orange circle")."""
    return format_caption([make_clause(1, obj.color, obj.shape)])



# --------------------------------------------------------------------------
# Benchmark prompts
# --------------------------------------------------------------------------


def all_captions(category: str) -> list[str]:
    """Every benchmark caption of a category, in a fixed order (base palette colors only)."""
    return _captions(category, [(c, s) for c in PALETTE for s in SHAPE_NAMES])


def extra_color_captions(category: str) -> list[str]:
    """Every caption of a benchmark category's template that names at least one extra color
    (EXTRA_COLORS, e.g. "a pink circle", "a pink square and a blue triangle"), in a fixed order:
    the prompts that test an extra concept (docs/shapes-world.md, "Extra concepts")."""
    pairs = [(c, s) for c in COLORS for s in SHAPE_NAMES]
    return [caption for caption in _captions(category, pairs)
            if any(c["color"] in EXTRA_COLORS for c in parse_caption(caption)["clauses"])]


def _captions(category: str, pairs: list[tuple[str, str]]) -> list[str]:
    """A category's captions over the given (color, shape) pairs."""
    if category == "single_object":
        return [format_caption([make_clause(1, c, s, z)]) for z in SIZE_WORDS for c, s in pairs]
    if category == "two_object":
        return [format_caption([make_clause(1, *a), make_clause(1, *b)]) for a in pairs for b in pairs if a != b]
    if category == "counting":
        return [format_caption([make_clause(n, c, s)]) for n in (2, 3, 4) for c, s in pairs]
    if category == "position":
        return [format_caption([make_clause(1, *a), make_clause(1, *b)], r)
                for r in RELATIONS for a in pairs for b in pairs if a != b]
    raise ValueError(f"unknown category {category!r}; allowed: {CATEGORIES}")


def benchmark_prompts(per_category: int, seed: int = 0) -> list[tuple[str, str]]:
    """(category, caption) pairs: per_category of each of CATEGORIES, in that order.

    Captions are drawn without replacement from all captions of the category
    (36 single_object, 306 two_object, 54 counting, 1224 position), so they
    are distinct until a category runs out; then a fresh permutation follows.
    Deterministic given seed.
    """
    return _draw_prompts(all_captions, CATEGORIES, per_category, seed)


def extra_color_prompts(per_category: int, seed: int = 0,
                        categories: Sequence[str] = ("single_object", "two_object")) -> list[tuple[str, str]]:
    """(category, caption) pairs naming extra colors (extra_color_captions), per_category of each
    category, drawn as benchmark_prompts draws. The default categories are the two where the
    base model is strong (shapes-64: single 1.00, two 0.86 on ShapesEval; docs/models.md), so the
    score measures the new color rather than counting and position."""
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; allowed: {CATEGORIES}")
    return _draw_prompts(extra_color_captions, tuple(categories), per_category, seed)


def _draw_prompts(captions_of, categories: Sequence[str], per_category: int, seed: int) -> list[tuple[str, str]]:
    """per_category captions of each category, without replacement until a category runs out;
    the k-th category of CATEGORIES draws from np.random.default_rng([seed, k])."""
    if not isinstance(per_category, (int, np.integer)) or per_category < 0:
        raise ValueError(f"per_category must be an integer >= 0, got {per_category!r}")
    prompts: list[tuple[str, str]] = []
    for category in categories:
        captions = captions_of(category)
        rng = np.random.default_rng([seed, CATEGORIES.index(category)])
        chosen: list[str] = []
        while len(chosen) < per_category:
            order = rng.permutation(len(captions))
            chosen.extend(captions[int(i)] for i in order[: per_category - len(chosen)])
        prompts.extend((category, c) for c in chosen)
    return prompts
