"""Best-of-N with a verifier (SANA 1.5's inference-time scaling): the verifiers rank a
correct image above a wrong one, the choice is the verifier's argmax, candidate 0 is
the plain image, and the scaling curve never goes down in the verifier's score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ditkit
from ditkit.data import digits, shapes
from ditkit.accel.scaling import (BestOfN, candidate_seeds, check_best_of, default_verifier, get_verifier,
                            score_candidates)


def brightness(image: Image.Image, prompt: str) -> float:
    """A test verifier: mean pixel value (importable as test_scaling:brightness)."""
    return float(np.asarray(image, dtype=np.float32).mean())


def _shape_image(caption: str, seed: int) -> Image.Image:
    scene = shapes.scene_for_caption(caption, np.random.default_rng(seed), 64)
    return shapes.render(scene.objects, 64)


@pytest.mark.parametrize("caption,wrong", [
    ("a small red circle", "a small blue square"),
    ("two green triangles", "three green triangles"),
    ("a red circle to the left of a blue square", "a red circle to the right of a blue square"),
    ("a yellow square and a purple triangle", "a yellow triangle and a purple square"),
])
def test_shapes_verifier_ranks_correct_above_wrong(caption, wrong):
    verify = get_verifier("shapes")
    for seed in range(3):
        right_img, wrong_img = _shape_image(caption, seed), _shape_image(wrong, seed)
        assert verify(right_img, caption) == 1.0
        assert verify(wrong_img, caption) < verify(right_img, caption)


def test_digits_verifier_ranks_correct_above_wrong():
    test = digits.load_split("test")
    verify = get_verifier("digits")
    wins = 0
    for d in range(10):
        right = Image.fromarray(test.images[np.flatnonzero(test.labels == d)[0]])
        wrong = Image.fromarray(test.images[np.flatnonzero(test.labels == (d + 3) % 10)[0]])
        prompt = digits.caption_for(d)
        wins += verify(right, prompt) > verify(wrong, prompt)
    assert wins == 10


def test_get_verifier_names_callables_and_errors():
    assert get_verifier(brightness) is brightness
    assert get_verifier("test_scaling:brightness").__name__ == "brightness"
    for bad in ["nope", "no_such_module_xyz:f", "ditkit.accel.scaling:NOT_THERE", "ditkit.accel.scaling:CANDIDATE_STRIDE"]:
        with pytest.raises(ValueError):
            get_verifier(bad)
    assert default_verifier({"data": {"dataset": "digits"}}) == "digits"
    with pytest.raises(ValueError, match="--verifier"):
        default_verifier({"model": {}})
    for bad_n in [0, -1, 1.5, True]:
        with pytest.raises(ValueError):
            check_best_of(bad_n)


def test_candidate_seeds_nest_and_start_at_plain_seeds():
    small, big = candidate_seeds(5, 2, 7), candidate_seeds(5, 4, 7)
    assert [small[j * 2] for j in range(5)] == [7 + j for j in range(5)]  # candidate 0 = plain seed
    assert all(small[j * 2 + k] == big[j * 4 + k] for j in range(5) for k in range(2))  # prefixes
    assert len(set(big)) == len(big)


def test_score_candidates_picks_argmax_and_prefixes():
    ims = [Image.new("RGB", (4, 4), (v, v, v)) for v in [10, 200, 50, 30, 90, 250]]
    best = score_candidates(ims, ["p", "q"], 3, brightness)
    assert isinstance(best, BestOfN)
    assert best.chosen.tolist() == [1, 2]
    assert [im.getpixel((0, 0))[0] for im in best.images] == [200, 250]
    one, pick = best.best_of(1)
    assert pick.tolist() == [0, 0] and one[0] is ims[0] and one[1] is ims[3]
    with pytest.raises(ValueError):
        best.best_of(4)
    with pytest.raises(ValueError, match="expected 6 candidates"):
        score_candidates(ims[:5], ["p", "q"], 3, brightness)
    with pytest.raises(ValueError, match="non-finite"):
        score_candidates(ims, ["p", "q"], 3, lambda im, p: float("nan"))


def test_pipeline_best_of(tiny_model_dir):
    pipe = ditkit.load(tiny_model_dir)
    plain = pipe.generate(["a", "b"], seed=3)
    best = pipe.generate_best_of(["a", "b"], 4, brightness, seed=3)
    assert best.scores.shape == (2, 4)
    for j in range(2):
        assert np.array_equal(np.asarray(best.candidates[j * 4]), np.asarray(plain[j]))  # candidate 0 = plain
        assert brightness(best.images[j], "") == best.scores[j].max()
    images = pipe.generate(["a", "b"], seed=3, best_of=4, verifier=brightness)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(images, best.images))
    with pytest.raises(ValueError, match="needs a verifier"):
        pipe.generate("a", best_of=2)
    with pytest.raises(ValueError, match="unknown verifier"):
        pipe.generate("a", best_of=2, verifier="nope")


def test_best_of_sweep_never_lowers_the_verifier_score(tiny_model_dir):
    from ditkit.accel.scaling import best_of_sweep

    pipe = ditkit.load(tiny_model_dir)
    prompts = ["a", "b", "c"]
    judge = lambda ims, ps: {"mean": float(np.mean([brightness(im, p) for im, p in zip(ims, ps)]))}
    res = best_of_sweep(pipe.model, pipe.text_encoder, pipe.defaults, prompts, [1, 2, 4], brightness, judge, seed=1)
    means = [r["result"]["mean"] for r in res["rows"]]
    assert [r["best_of"] for r in res["rows"]] == [1, 2, 4]
    assert means == sorted(means) and means[-1] > means[0]
    plain = pipe.generate(prompts, seed=1)
    assert means[0] == pytest.approx(judge(plain, prompts)["mean"])
