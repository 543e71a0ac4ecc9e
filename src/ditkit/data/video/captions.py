"""Captions of the moving-shapes world: "a red circle moving to the right", "a blue square moving
up and a green triangle growing" (docs/shapes-world.md, "Moving shapes (video)")."""

from __future__ import annotations

from typing import Sequence

from ditkit.data.shapes.world import PALETTE, SHAPE_NAMES
from ditkit.data.video.world import GROWING, MAX_OBJECTS, MOTIONS


def object_phrase(color: str, shape: str, motion: str) -> str:
    """ "a red circle moving to the right"; "an orange square growing"."""
    if color not in PALETTE:
        raise ValueError(f"unknown color {color!r}; allowed: {tuple(PALETTE)}")
    if shape not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPE_NAMES}")
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; allowed: {MOTIONS}")
    article = "an" if color[0] in "aeiou" else "a"  # as the shapes world: "an" before a vowel sound
    return f"{article} {color} {shape} {motion}"


def format_video_caption(items: Sequence[tuple[str, str, str]]) -> str:
    """The caption of 1 or 2 (color, shape, motion) objects, joined with " and "."""
    _check_items(items, repr(items))
    return " and ".join(object_phrase(*item) for item in items)


def _check_items(items: Sequence[tuple[str, str, str]], what: str) -> None:
    if not 1 <= len(items) <= MAX_OBJECTS:
        raise ValueError(f"{what}: a clip holds 1 to {MAX_OBJECTS} objects, got {len(items)}")
    pairs = [(c, s) for c, s, _ in items]
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{what}: the two objects must differ in color or shape")
    if sum(m == GROWING for _, _, m in items) > 1:
        # Each grows by >= 0.25 S from a side >= 0.14 S: two such boxes plus the gap exceed the canvas.
        raise ValueError(f"{what}: at most one object of a clip may be growing")


def parse_video_caption(caption: str) -> list[tuple[str, str, str]]:
    """(color, shape, motion) of each object a video caption names, in order.

    Reads "a/an COLOR SHAPE MOTION" phrases joined by " and " (1 or 2 of them, with different
    (color, shape) pairs, at most one growing); forgives case, extra spaces and a final period as parse_caption does.
    Raises ValueError naming the caption for anything else.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    text = " ".join(caption.lower().split()).rstrip(".").strip()
    if not text:
        raise ValueError(f"cannot parse video caption {caption!r}: empty caption")
    items = []
    for phrase in text.split(" and "):
        words = phrase.split()
        if len(words) < 4 or words[0] not in ("a", "an"):
            raise ValueError(f"cannot parse video caption {caption!r}: {phrase!r} is not "
                             f"'a COLOR SHAPE MOTION' (MOTION in {MOTIONS})")
        color, shape, motion = words[1], words[2], " ".join(words[3:])
        if color not in PALETTE:
            raise ValueError(f"cannot parse video caption {caption!r}: unknown color {color!r}; "
                             f"allowed: {tuple(PALETTE)}")
        if shape not in SHAPE_NAMES:
            raise ValueError(f"cannot parse video caption {caption!r}: unknown shape {shape!r}; "
                             f"allowed: {SHAPE_NAMES}")
        if motion not in MOTIONS:
            raise ValueError(f"cannot parse video caption {caption!r}: unknown motion {motion!r}; "
                             f"allowed: {MOTIONS}")
        items.append((color, shape, motion))
    _check_items(items, f"cannot parse video caption {caption!r}")
    return items


def still_caption(caption: str) -> str:
    """The shapes-world caption of a video caption's first frame, motions left out ("a red circle
    moving up and a blue square growing" -> "a red circle and a blue square"): the prompt an image
    model draws the first frame from in the text -> image -> video chain. A caption that is not a
    moving-shapes caption is returned as it is."""
    try:
        items = parse_video_caption(caption)
    except ValueError:
        return caption
    return " and ".join(object_phrase(c, s, m)[: -len(m) - 1] for c, s, m in items)
