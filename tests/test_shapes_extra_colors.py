"""The shapes world's opt-in extra colors (docs/shapes-world.md, "Extra concepts"): drawn and
judged when asked for, invisible to the base world's generator, benchmarks and detector."""

from __future__ import annotations

import numpy as np
import pytest

from ditkit.data import shapes as S
from ditkit.evaluation.shapes_detector import BASE_COLORS, detect
from ditkit.evaluation.shapes_scoring import judged_colors, score_graded, score_image

ONLY_EXTRA = {"extra_colors": 1.0, "single_object": 0, "two_object": 0, "counting": 0, "position": 0, "free_form": 0}


def _names_extra(caption: str) -> bool:
    return any(c["color"] in S.EXTRA_COLORS for c in S.parse_caption(caption)["clauses"])


def test_the_base_world_never_draws_or_asks_for_an_extra_color():
    assert tuple(S.PALETTE) == ("red", "orange", "yellow", "green", "blue", "purple")
    assert set(S.EXTRA_COLORS) == {"pink"} and not set(S.EXTRA_COLORS) & set(S.PALETTE)
    assert S.training_mix() == S.training_mix({"extra_colors": 0})  # weight 0: the default mix, unchanged
    for step in range(40):
        _, captions = S.make_batch(0, step, 16, 64)
        assert not any(_names_extra(c) for c in captions)
    for category in S.CATEGORIES:
        assert not any(_names_extra(c) for c in S.all_captions(category))
    assert not any(_names_extra(c) for _, c in S.benchmark_prompts(60, seed=1))


def test_the_extra_colors_mix_draws_them_in_every_template():
    mix = S.training_mix({"extra_colors": 0.5})
    assert dict(mix)["extra_colors"] == pytest.approx(0.5 / 1.5)
    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng, 64, mix=S.training_mix(ONLY_EXTRA)) for _ in range(200)]
    assert all(_names_extra(sc.caption) for sc in scenes)
    assert {sc.category for sc in scenes} == set(S.CATEGORIES)
    assert any(o.color == "pink" for sc in scenes for o in sc.objects)
    _, captions = S.make_batch(0, 0, 64, 64, {"extra_colors": 0.5})
    share = sum(map(_names_extra, captions)) / len(captions)
    assert 0.15 < share < 0.55
    with pytest.raises(ValueError, match="unknown mix categories.*extra_colors"):
        S.training_mix({"pinkish": 1.0})


def test_extra_color_prompts_name_an_extra_color_and_are_deterministic():
    pairs = S.extra_color_prompts(10, seed=0)
    assert [c for c, _ in pairs] == ["single_object"] * 10 + ["two_object"] * 10
    assert all(_names_extra(p) for _, p in pairs)
    assert len({p for _, p in pairs[10:]}) == 10
    assert pairs == S.extra_color_prompts(10, seed=0) != S.extra_color_prompts(10, seed=1)
    assert len(S.extra_color_captions("single_object")) == 2 * 3  # small / large x 3 shapes
    with pytest.raises(ValueError, match="unknown categories"):
        S.extra_color_prompts(2, categories=["colors"])


def test_detector_is_exact_on_ground_truth_renders_of_every_color():
    rng = np.random.default_rng(1)
    extra_mix = S.training_mix(ONLY_EXTRA)
    for i in range(120):
        scene = S.sample_scene(rng, 64, mix=extra_mix if i % 2 else None)
        image = S.render(scene.objects, 64)
        found = sorted((d.color, d.shape) for d in detect(image, tuple(S.COLORS)))
        assert found == sorted((o.color, o.shape) for o in scene.objects), scene.caption
        assert score_image(image, scene.caption) and score_graded(image, scene.caption) == 1.0


def test_by_default_the_detector_sees_only_the_base_palette():
    image = S.render([S.ShapeObject("circle", "pink", 10, 10, 20), S.ShapeObject("square", "red", 36, 36, 16)], 64)
    assert [(d.color, d.shape) for d in detect(image)] == [("red", "square")]
    assert sorted((d.color, d.shape) for d in detect(image, tuple(S.COLORS))) == [("pink", "circle"),
                                                                                  ("red", "square")]
    assert judged_colors(S.parse_caption("a red circle")) == BASE_COLORS
    assert judged_colors(S.parse_caption("a pink circle and a red square")) == (*BASE_COLORS, "pink")
    assert score_image(image, "a pink circle and a red square")
    assert not score_image(image, "a purple circle and a red square")
    red = S.render([S.ShapeObject("circle", "red", 10, 10, 20)], 64)
    assert not score_image(red, "a pink circle") and score_image(red, "a red circle")
    with pytest.raises(ValueError, match="detector colors"):
        detect(image, ["pink", "teal"])


def test_captions_with_extra_colors_parse_render_and_place():
    caption = "a pink circle to the left of a blue square"
    assert S.format_caption(S.parse_caption(caption)["clauses"], "to the left of") == caption
    scene = S.scene_for_caption("two pink triangles", np.random.default_rng(0), 64)
    assert [o.color for o in scene.objects] == ["pink", "pink"]
    pixels = np.asarray(S.render(scene.objects, 64)).reshape(-1, 3)
    assert (pixels == S.COLORS["pink"]).all(axis=1).any()
    with pytest.raises(ValueError, match="unknown color 'teal'"):
        S.parse_caption("a teal circle")
