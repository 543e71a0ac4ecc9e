"""The shapes world (docs/shapes-world.md): generator, captions, position rule, detector, scoring."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from ditkit.data import shapes as S
from ditkit.data.shapes import ShapeObject
from ditkit.evaluation.shapes_detector import Detection, detect
from ditkit.evaluation.shapes_scoring import evaluate, score_graded, score_image

PER_CATEGORY = 60  # 240 benchmark images at 64 px


def _benchmark_images(prompts, size, seed=0):
    rng = np.random.default_rng(seed)
    scenes = [S.scene_for_caption(caption, rng, size) for _, caption in prompts]
    return scenes, [np.asarray(S.render(s.objects, size)) for s in scenes]


@pytest.fixture(scope="module")
def bench64():
    prompts = S.benchmark_prompts(PER_CATEGORY, seed=0)
    scenes, images = _benchmark_images(prompts, 64)
    return [c for c, _ in prompts], [c for _, c in prompts], scenes, images


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(a.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _noise(a: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.round(a + rng.normal(0.0, std, a.shape)), 0, 255).astype(np.uint8)


def _det(cx, cy, w, h, color="red", shape="circle") -> Detection:
    return Detection(color, shape, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, int(w * h))


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------


def test_palette_and_vocabulary_follow_the_contract():
    assert list(S.PALETTE.items()) == [
        ("red", (220, 38, 38)),
        ("orange", (245, 140, 20)),
        ("yellow", (240, 210, 30)),
        ("green", (40, 170, 70)),
        ("blue", (40, 90, 230)),
        ("purple", (150, 60, 200)),
    ]
    assert S.SHAPE_NAMES == ("circle", "square", "triangle")
    assert S.RELATIONS == ("to the left of", "to the right of", "above", "below")
    assert S.CATEGORIES == ("single_object", "two_object", "counting", "position")
    assert S.side_range("small", 64) == (9, 12)
    assert S.side_range("large", 64) == (17, 21)
    assert S.side_range(None, 64) == (9, 21)
    assert S.min_gap(64) == 2 and S.min_gap(128) == 4 and S.min_gap(32) == 2


# --------------------------------------------------------------------------
# Detector on ground truth
# --------------------------------------------------------------------------


def test_detector_scores_generator_images_at_64(bench64):
    cats, caps, _, images = bench64
    result = evaluate(images, caps, cats)
    assert result["n"] == 4 * PER_CATEGORY
    assert result["overall"] >= 0.99, result
    for cat in S.CATEGORIES:
        assert result["categories"][cat] >= 0.99, result


@pytest.mark.parametrize("size", [32, 48, 128])
def test_detector_scores_generator_images_at_other_sizes(size):
    prompts = S.benchmark_prompts(8, seed=size)
    _, images = _benchmark_images(prompts, size, seed=size)
    result = evaluate(images, [c for _, c in prompts], [c for c, _ in prompts])
    assert result["overall"] >= 0.99, result
    assert min(result["categories"].values()) >= 0.99, result


def test_detections_match_the_drawn_objects(bench64):
    _, _, scenes, images = bench64
    for scene, image in zip(scenes[:80], images[:80]):
        dets = detect(image)
        assert len(dets) == len(scene.objects)
        for obj in scene.objects:
            d = min(dets, key=lambda d: (d.cx - obj.cx) ** 2 + (d.cy - obj.cy) ** 2)
            assert (d.color, d.shape) == (obj.color, obj.shape)
            # The detected box is the drawn box up to pixelization of edges.
            assert abs(d.x0 - obj.x0) <= 1 and abs(d.y0 - obj.y0) <= 1
            assert abs(d.x1 - obj.x1) <= 1 and abs(d.y1 - obj.y1) <= 1


def test_shuffled_captions_score_near_chance(bench64):
    cats, caps, _, images = bench64
    perm = np.random.default_rng(1).permutation(len(caps))
    result = evaluate(images, [caps[i] for i in perm], cats)
    assert result["overall"] < 0.3, result


def test_detection_is_robust_to_blur_and_noise(bench64):
    cats, caps, _, images = bench64
    rng = np.random.default_rng(0)
    n = 120  # 30 per category: the prompts are grouped by category
    keep = [i for i in range(len(images)) if i % PER_CATEGORY < 30]
    assert len(keep) == n
    base = evaluate([images[i] for i in keep], [caps[i] for i in keep], [cats[i] for i in keep])
    for name, transform in [
        ("blur", lambda a: _blur(a, 0.7)),
        ("noise", lambda a: _noise(a, 10.0, rng)),
        ("blur+noise", lambda a: _noise(_blur(a, 0.6), 6.0, rng)),
    ]:
        changed = [transform(images[i]) for i in keep]
        result = evaluate(changed, [caps[i] for i in keep], [cats[i] for i in keep])
        assert result["overall"] == base["overall"] == 1.0, (name, result)


def test_detector_ignores_speckles_grays_and_slight_color_shifts():
    rng = np.random.default_rng(3)
    obj = ShapeObject("triangle", "yellow", 20, 20, 15)
    image = np.asarray(S.render([obj], 64)).copy()
    # Speckles: isolated pixels of palette colors on the background.
    for color in S.PALETTE.values():
        y, x = rng.integers(0, 64, 2)
        if not (18 <= x < 37 and 18 <= y < 37):
            image[y, x] = color
    # A gray blob (as from a muddy generation) is not an object.
    image[2:12, 45:60] = (140, 140, 140)
    # A slight color shift of the object.
    inside = ~(image[18:37, 18:37] == 255).all(-1)
    image[18:37, 18:37][inside] = np.clip(image[18:37, 18:37][inside].astype(int) + (12, -15, 10), 0, 255)
    dets = detect(image)
    assert [(d.color, d.shape) for d in dets] == [("yellow", "triangle")]
    for v in range(0, 256, 15):
        assert detect(np.full((64, 64, 3), v, np.uint8)) == []


def test_detect_accepts_pil_and_validates_input():
    objs = [ShapeObject("square", "blue", 5, 5, 12), ShapeObject("circle", "orange", 30, 30, 14)]
    image = S.render(objs, 64)
    assert detect(image) == detect(np.asarray(image)) == detect(image.convert("RGBA"))
    with pytest.raises(ValueError, match="uint8"):
        detect(np.asarray(image).astype(np.float32))
    with pytest.raises(ValueError, match="at least 32"):
        detect(np.full((16, 16, 3), 255, np.uint8))


# --------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------


def _check_scene_invariants(scene, size):
    gap = S.min_gap(size)
    objs = scene.objects
    for o in objs:
        assert 1 <= o.x0 and o.x0 + o.side <= size - 1
        assert 1 <= o.y0 and o.y0 + o.side <= size - 1
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            sep = max(b.x0 - a.x1, a.x0 - b.x1, b.y0 - a.y1, a.y0 - b.y1)
            assert sep >= gap, (a, b)
    parsed = S.parse_caption(scene.caption)
    # The caption names exactly the drawn objects; sizes are in their ranges.
    want = collections.Counter()
    for c in parsed["clauses"]:
        want[(c["color"], c["shape"])] += c["count"]
        lo, hi = S.side_range(c["size"], size)
        for o in objs:
            if (o.color, o.shape) == (c["color"], c["shape"]):
                assert lo <= o.side <= hi, (scene.caption, o)
    assert want == collections.Counter((o.color, o.shape) for o in objs)
    # Pixels: white background, exact palette colors, each object in its box.
    image = np.asarray(S.render(objs, size))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    colors = {tuple(c) for c in image.reshape(-1, 3)}
    assert colors <= set(S.PALETTE.values()) | {(255, 255, 255)}
    outside = np.ones((size, size), bool)
    for o in objs:
        box = image[o.y0 : o.y1, o.x0 : o.x1]
        painted = ~(box == 255).all(-1)
        assert (box[painted] == S.PALETTE[o.color]).all()
        # The shape spans its box (a triangle's apex row may be empty).
        assert painted[-1].all() if o.shape == "triangle" else painted[o.side // 2].all()
        outside[o.y0 : o.y1, o.x0 : o.x1] = False
    assert (image[outside] == 255).all()


@pytest.mark.parametrize("size", [32, 64, 100, 128])
def test_placement_invariants(size):
    rng = np.random.default_rng(size)
    for category in list(S.CATEGORIES) + [None] * 4:
        for _ in range(12):
            _check_scene_invariants(S.sample_scene(rng, size, category), size)


def test_position_captions_are_true_with_margin():
    rng = np.random.default_rng(7)
    for _ in range(100):
        scene = S.sample_scene(rng, 64, "position")
        parsed = S.parse_caption(scene.caption)
        a, b = scene.objects
        vec = S.position_vector(a, b)
        component = {"to the left of": -vec[0], "to the right of": vec[0], "above": -vec[1], "below": vec[1]}
        assert component[parsed["relation"]] >= 0.75
        assert S.relation_holds(a, b, parsed["relation"])


def test_sample_scene_is_deterministic_and_mixes_categories():
    a = [S.sample_scene(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    scenes = [S.sample_scene(rng) for _ in range(600)]
    freq = collections.Counter(s.category for s in scenes)
    for category, p in [("single_object", 0.2), ("two_object", 0.25), ("counting", 0.25), ("position", 0.25)]:
        assert abs(freq[category] / 600 - p) < 0.06, freq
    free = [s for s in scenes if s.category is None]
    assert 10 <= len(free) <= 60
    for s in free:  # free-form captions still parse and name every object
        S.parse_caption(s.caption)
    with pytest.raises(ValueError, match="unknown category"):
        S.sample_scene(rng, 64, "colors")
    with pytest.raises(ValueError, match=">= 32"):
        S.sample_scene(rng, 16)


def test_training_mix_reweights_named_categories_and_keeps_the_rest():
    default = dict(S.training_mix())
    assert sum(default.values()) == pytest.approx(1.0)
    mix = dict(S.training_mix({"position": 0.75}))  # 0.75 against the other defaults' 0.75
    assert mix["position"] == pytest.approx(0.5)
    assert mix["counting"] == pytest.approx(0.25 / 1.5) and mix[None] == pytest.approx(0.05 / 1.5)
    only = {c: 0.0 for c in S.CATEGORIES if c != "counting"} | {"free_form": 0}
    _, captions = S.make_batch(seed=0, step=0, batch_size=12, mix=only)
    assert {S.parse_caption(c)["category"] for c in captions} == {"counting"}
    same = dict((S.FREE_FORM if c is None else c, p) for c, p in S.training_mix())
    assert S.make_batch(seed=2, step=3, batch_size=6, mix=same)[1] == S.make_batch(seed=2, step=3, batch_size=6)[1]
    with pytest.raises(ValueError, match="unknown mix categories.*allowed"):
        S.training_mix({"colors": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        S.training_mix({"position": -1})
    with pytest.raises(ValueError, match="all zero"):
        S.training_mix({c: 0 for c in (*S.CATEGORIES, "free_form")})


def test_make_batch_depends_only_on_seed_and_step():
    x1, c1 = S.make_batch(seed=3, step=10, batch_size=4)
    x2, c2 = S.make_batch(seed=3, step=10, batch_size=4)
    x3, c3 = S.make_batch(seed=3, step=11, batch_size=4)
    assert x1.shape == (4, 3, 64, 64) and x1.dtype == torch.float32
    assert len(c1) == 4 and all(isinstance(c, str) for c in c1)
    assert torch.equal(x1, x2) and c1 == c2
    assert not torch.equal(x1, x3) or c1 != c3
    assert x1.min() >= -1.0 and x1.max() <= 1.0
    assert x1.max() == 1.0  # white background
    # The tensor is the rendered image of the caption.
    pixels = ((x1[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert score_image(pixels, c1[0])
    small, _ = S.make_batch(seed=0, step=0, batch_size=2, size=32)
    assert small.shape == (2, 3, 32, 32)


def test_render_validates_and_clips():
    with pytest.raises(ValueError, match="unknown shape"):
        S.render([ShapeObject("hexagon", "red", 1, 1, 10)])
    with pytest.raises(ValueError, match="unknown color"):
        S.render([ShapeObject("circle", "teal", 1, 1, 10)])
    image = np.asarray(S.render([ShapeObject("square", "red", 60, 60, 10)], 64))
    assert (image[60:, 60:] == S.PALETTE["red"]).all() and isinstance(S.render([]), Image.Image)


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------


def test_caption_grammar_article_and_plurals():
    def one(color, shape, size=None, count=1):
        return {"count": count, "color": color, "shape": shape, "size": size}

    assert S.format_caption([one("orange", "circle")]) == "an orange circle"
    assert S.format_caption([one("orange", "circle", "large")]) == "a large orange circle"
    assert S.format_caption([one("red", "square", "small")]) == "a small red square"
    assert S.format_caption([one("green", "triangle", count=3)]) == "three green triangles"
    assert (
        S.format_caption([one("red", "circle"), one("blue", "square")], "to the left of")
        == "a red circle to the left of a blue square"
    )
    two = S.format_caption([one("blue", "square"), one("orange", "triangle")])
    assert two == "a blue square and an orange triangle"
    rng = np.random.default_rng(0)
    for _ in range(200):
        caption = S.sample_scene(rng).caption
        assert caption == caption.lower() and not caption.endswith(".")
        words = caption.split()
        for i, w in enumerate(words[:-1]):
            if w in ("a", "an"):
                assert (w == "an") == (words[i + 1][0] in "aeiou"), caption


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a small red circle", ([(1, "red", "circle", "small")], None, "single_object")),
        ("an orange triangle", ([(1, "orange", "triangle", None)], None, "single_object")),
        ("a blue square and a yellow triangle",
         ([(1, "blue", "square", None), (1, "yellow", "triangle", None)], None, "two_object")),
        ("three green triangles", ([(3, "green", "triangle", None)], None, "counting")),
        ("a red circle to the left of a blue square",
         ([(1, "red", "circle", None), (1, "blue", "square", None)], "to the left of", "position")),
        ("a purple square below an orange circle",
         ([(1, "purple", "square", None), (1, "orange", "circle", None)], "below", "position")),
        ("two blue squares and a red circle",
         ([(2, "blue", "square", None), (1, "red", "circle", None)], None, S.FREE_FORM)),
        ("  A Large Red Circle. ", ([(1, "red", "circle", "large")], None, "single_object")),
    ],
)
def test_parse_caption(caption, expected):
    clauses, relation, category = expected
    parsed = S.parse_caption(caption)
    assert parsed["clauses"] == [dict(zip(("count", "color", "shape", "size"), c)) for c in clauses]
    assert parsed["relation"] == relation and parsed["category"] == category


@pytest.mark.parametrize(
    "caption",
    ["", "a red hexagon", "a teal circle", "five red circles", "two red circle", "a red circles",
     "a huge red circle", "a red circle to the left of", "red circle",
     "a red circle above a blue square below a green triangle",
     "a red circle above a blue square and a red square"],
)
def test_parse_caption_rejects_what_it_cannot_parse(caption):
    with pytest.raises(ValueError, match="cannot parse"):
        S.parse_caption(caption)
    image = S.render([ShapeObject("circle", "red", 5, 5, 12)])
    with pytest.raises(ValueError):
        score_image(image, caption)
    with pytest.raises(ValueError):
        score_graded(image, caption)


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_templates_parse_back_to_what_was_drawn(category):
    rng = np.random.default_rng(11)
    for _ in range(25):
        scene = S.sample_scene(rng, 64, category)
        parsed = S.parse_caption(scene.caption)
        assert parsed["category"] == category
        assert S.format_caption(parsed["clauses"], parsed["relation"]) == scene.caption
        drawn = collections.Counter((o.color, o.shape) for o in scene.objects)
        named = collections.Counter()
        for c in parsed["clauses"]:
            named[(c["color"], c["shape"])] += c["count"]
        assert named == drawn
        if category == "single_object":
            assert parsed["clauses"][0]["size"] in S.SIZE_WORDS
        if category == "position":
            assert S.relation_holds(scene.objects[0], scene.objects[1], parsed["relation"])


def test_benchmark_prompts():
    prompts = S.benchmark_prompts(40, seed=0)
    assert len(prompts) == 160
    assert [c for c, _ in prompts] == [c for c in S.CATEGORIES for _ in range(40)]
    assert prompts == S.benchmark_prompts(40, seed=0)
    assert prompts != S.benchmark_prompts(40, seed=1)
    for category, caption in prompts:
        assert S.parse_caption(caption)["category"] == category
    # Distinct where possible (36 single_object captions exist), then reused.
    captions = collections.defaultdict(list)
    for category, caption in prompts:
        captions[category].append(caption)
    assert len(set(captions["single_object"])) == 36
    for category in ("two_object", "counting", "position"):
        assert len(set(captions[category])) == 40
    assert S.benchmark_prompts(0) == []


# --------------------------------------------------------------------------
# Position rule (hand-computed)
# --------------------------------------------------------------------------


def test_position_rule_hand_computed():
    b = _det(40, 30, 10, 10)
    # offset (-30, 0); shrink 0.1 * (10 + 10) = 2 -> (-28, 0) -> unit (-1, 0)
    a = _det(10, 30, 10, 10)
    assert S.position_vector(a, b) == pytest.approx((-1.0, 0.0))
    assert S.relation_holds(a, b, "to the left of")
    assert not any(S.relation_holds(a, b, r) for r in ("to the right of", "above", "below"))
    assert S.relation_holds(b, a, "to the right of")
    # offset (10, 20); shrink 2 -> (8, 18) -> unit (0.406, 0.914): below, not right
    a = _det(50, 50, 10, 10)
    dx, dy = S.position_vector(a, b)
    assert (dx, dy) == pytest.approx((8 / math.hypot(8, 18), 18 / math.hypot(8, 18)))
    assert S.relation_holds(a, b, "below") and not S.relation_holds(a, b, "to the right of")
    assert S.relation_holds(b, a, "above") and not S.relation_holds(b, a, "below")
    # offset (-6, -6); shrink 2 -> (-4, -4) -> unit (-0.707, -0.707): left and above.
    # (docs/shapes-world.md normalizes the shrunk vector to unit length; dividing by the
    # unshrunk length, -4 / 8.49 = -0.47, would make neither hold.)
    a = _det(34, 24, 10, 10)
    assert S.position_vector(a, b) == pytest.approx((-math.sqrt(0.5), -math.sqrt(0.5)))
    assert S.relation_holds(a, b, "to the left of") and S.relation_holds(a, b, "above")
    # Each axis shrinks by its own sizes: widths 4 + 6 on x, heights 20 + 30 on y.
    # offset (-10, -6) -> (-10 + 1, max(6 - 5, 0) * -1) = (-9, -1)
    a, c = _det(10, 20, 4, 20), _det(20, 26, 6, 30)
    assert S.position_vector(a, c) == pytest.approx((-9 / math.hypot(9, 1), -1 / math.hypot(9, 1)))
    assert S.relation_holds(a, c, "to the left of") and not S.relation_holds(a, c, "above")
    # A shrink never flips a sign: offset (-30, 1) -> (-28, 0), purely left.
    a = _det(10, 31, 10, 10)
    assert S.position_vector(a, b) == pytest.approx((-1.0, 0.0))
    # Both axes shrink to zero: no relation holds.
    a = _det(41, 31, 10, 10)
    assert S.position_vector(a, b) is None
    assert not any(S.relation_holds(a, b, r) for r in S.RELATIONS)
    with pytest.raises(ValueError, match="unknown relation"):
        S.relation_holds(a, b, "near")


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


def test_scoring_rules():
    red_circle = ShapeObject("circle", "red", 4, 4, 12)
    blue_square = ShapeObject("square", "blue", 40, 6, 12)
    extra = ShapeObject("triangle", "green", 20, 40, 14)
    image = S.render([red_circle, blue_square, extra])
    # Named counts are "at least": an unnamed extra object does not fail these.
    assert score_image(image, "a red circle and a blue square")
    assert score_image(image, "a large red circle")  # size words are not scored
    assert score_image(image, "a red circle to the left of a blue square")
    assert not score_image(image, "a red circle to the right of a blue square")
    assert not score_image(image, "a blue circle and a red square")  # color attribution
    # Counting is exact.
    circles = [ShapeObject("circle", "red", x, 20, 10) for x in (2, 18, 34)]
    image = S.render(circles)
    assert score_image(image, "three red circles")
    assert not score_image(image, "two red circles")
    assert not score_image(image, "four red circles")
    assert score_image(image, "two red circles and a red circle")  # clauses add up
    # A relation needs two different detections, even for identical clauses.
    assert score_image(image, "a red circle to the left of a red circle")
    assert not score_image(S.render(circles[:1]), "a red circle to the left of a red circle")


def test_score_graded_ranks_near_misses():
    caption = "a red circle to the left of a blue square"
    right = S.render([ShapeObject("circle", "red", 4, 20, 12), ShapeObject("square", "blue", 40, 20, 12)])
    swapped = S.render([ShapeObject("circle", "red", 40, 20, 12), ShapeObject("square", "blue", 4, 20, 12)])
    wrong_color = S.render([
        ShapeObject("circle", "green", 4, 20, 12),
        ShapeObject("square", "blue", 40, 20, 12),
    ])
    nothing = S.render([ShapeObject("triangle", "yellow", 20, 20, 14)])
    scores = [score_graded(im, caption) for im in (right, swapped, wrong_color, nothing)]
    assert scores[0] == 1.0
    assert all(0.0 <= s < 1.0 for s in scores[1:])
    assert scores[0] > scores[1] > scores[3] and scores[0] > scores[2] > scores[3], scores
    # Counting: one too many is closer than none; exact is 1.
    two = [ShapeObject("square", "purple", x, 20, 10) for x in (2, 18)]
    three = two + [ShapeObject("square", "purple", 34, 20, 10)]
    g2, g3, g0 = (score_graded(S.render(o), "two purple squares") for o in (two, three, []))
    assert g2 == 1.0 and 0.0 < g3 < 1.0 and g0 == 0.0 and g3 > g0
    # 1.0 exactly when score_image is True, on generator images and shuffled captions.
    prompts = S.benchmark_prompts(5, seed=4)
    _, images = _benchmark_images(prompts, 64, seed=4)
    captions = [c for _, c in prompts]
    for image, caption in zip(images, captions[1:] + captions[:1]):
        assert (score_graded(image, caption) == 1.0) == score_image(image, caption)
    assert all(score_graded(im, c) == 1.0 for im, c in zip(images, captions))


def test_evaluate_is_mean_of_category_means():
    good = S.render([ShapeObject("circle", "red", 4, 4, 12)])
    bad = S.render([ShapeObject("square", "blue", 4, 4, 12)])
    result = evaluate(
        [good, bad, good, good],
        ["a red circle", "a red circle", "two red circles", "a red circle"],
        ["single_object", "single_object", "counting", "position"],
    )
    assert result["n"] == 4
    assert result["categories"] == {"single_object": 0.5, "counting": 0.0, "position": 1.0}
    assert result["overall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        evaluate([good], ["a red circle", "a red circle"], ["single_object"])
    with pytest.raises(ValueError, match="at least one"):
        evaluate([], [], [])
