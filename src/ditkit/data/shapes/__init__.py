"""The shapes world: a procedurally generated, captioned image world.

It is ditkit's embedded training set and its compositional benchmark in the
manner of GenEval (single object, two objects, counting, position; colors and
color attribution through every template). Everything here follows the
contract in docs/shapes-world.md: the canvas and palette, the placement rules
and the caption grammar. ShapesEval's detector and scorer, which judge images
against that contract, live in ditkit.evaluation (shapes_detector, shapes_scoring).

Parts:
- world.py: the vocabulary (palette, opt-in extra colors, shapes, relations, size words), objects,
  ``render`` (hard edges, exact palette colors) and the position rule;
- captions.py: ``format_caption`` and its inverse ``parse_caption``, and the
  benchmark prompts (``benchmark_prompts``);
- scenes.py: the generator, ``sample_scene`` / ``scene_for_caption`` place
  objects and ``make_batch`` makes a training batch that depends only on (seed, step).
"""

from __future__ import annotations

from ditkit.data.shapes.captions import (all_captions, benchmark_prompts, extra_color_captions, extra_color_prompts,
                                         format_caption, make_clause, object_caption, parse_caption)
from ditkit.data.shapes.scenes import (EXTRA_COLORS_MIX, make_batch, make_scene_batch, reference_images,
                                       render_tensor, sample_scene, scene_for_caption, training_mix)
from ditkit.data.shapes.world import (CATEGORIES, COLORS, EXTRA_COLORS, FREE_FORM, MIN_SIZE, NUMBER_WORDS,
                                      OPPOSITE_RELATION, PALETTE, RELATIONS, SHAPE_NAMES, SIZE_RANGES, SIZE_WORDS,
                                      WHITE, Scene, ShapeObject, bbox_gap, check_size, min_gap, position_vector,
                                      relation_component, relation_holds, render, shape_mask, side_range)

__all__ = [
    "PALETTE",
    "EXTRA_COLORS",
    "COLORS",
    "EXTRA_COLORS_MIX",
    "SHAPE_NAMES",
    "RELATIONS",
    "OPPOSITE_RELATION",
    "CATEGORIES",
    "FREE_FORM",
    "SIZE_WORDS",
    "SIZE_RANGES",
    "NUMBER_WORDS",
    "WHITE",
    "MIN_SIZE",
    "ShapeObject",
    "Scene",
    "min_gap",
    "side_range",
    "bbox_gap",
    "check_size",
    "shape_mask",
    "render",
    "position_vector",
    "relation_component",
    "relation_holds",
    "format_caption",
    "parse_caption",
    "make_clause",
    "object_caption",
    "all_captions",
    "benchmark_prompts",
    "extra_color_captions",
    "extra_color_prompts",
    "sample_scene",
    "scene_for_caption",
    "training_mix",
    "make_batch",
    "make_scene_batch",
    "render_tensor",
    "reference_images",
]
