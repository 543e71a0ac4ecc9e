"""The real-data digits benchmark: the fixed split, the batches, and the judge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditkit.data import digits
from ditkit.evaluation.digits_judge import classifier, digit_accuracy


def test_split_is_fixed_stratified_and_white_paper():
    train, test = digits.load_split("train"), digits.load_split("test")
    assert len(train.labels) + len(test.labels) == 1797
    assert len(test.labels) == 450
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    # stratified: each digit's share of the test split matches the whole set within a sample
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47
    # ink is dark on white paper; the corners are blank paper
    assert (train.images[:, 0, 0] == 255).mean() > 0.95
    assert train.images.min() < 40
    # no scan is in both splits
    tr = {a.tobytes() for a in train.images}
    assert not any(a.tobytes() in tr for a in test.images)
    with pytest.raises(ValueError, match="train"):
        digits.load_split("val")


def test_make_batch_depends_only_on_seed_and_step():
    a, ca = digits.make_batch(0, 5, 6)
    b, cb = digits.make_batch(0, 5, 6)
    c, _ = digits.make_batch(0, 6, 6)
    assert torch.equal(a, b) and ca == cb and not torch.equal(a, c)
    assert a.shape == (6, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert all(0 <= digits.parse_digit(p) <= 9 for p in ca)
    with pytest.raises(ValueError):
        digits.make_batch(0, 0, 0)


def test_captions_round_trip_and_bad_captions():
    assert digits.parse_digit(digits.caption_for(7)) == 7
    for bad in ["a handwritten digit 12", "a red circle", "digit 3"]:
        with pytest.raises(ValueError, match="handwritten digit"):
            digits.parse_digit(bad)
    with pytest.raises(ValueError):
        digits.caption_for(10)


def test_judge_is_accurate_on_real_test_digits_and_confusion_adds_up():
    from PIL import Image

    test = digits.load_split("test")
    images = [Image.fromarray(a) for a in test.images]
    prompts = [digits.caption_for(d) for d in test.labels]
    res = digit_accuracy(images, prompts)
    assert res["accuracy"] >= 0.95
    assert np.asarray(res["confusion"]).sum() == len(images)
    assert np.trace(np.asarray(res["confusion"])) / len(images) == pytest.approx(res["accuracy"])
    # shuffled prompts: near chance
    rng = np.random.default_rng(0)
    shuffled = digit_accuracy(images, [digits.caption_for(d) for d in rng.permutation(test.labels)])
    assert shuffled["accuracy"] < 0.2
    probs = classifier().proba(test.images[:5])
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1)


def test_training_batches_come_from_the_digits_split(train_config):
    from dataclasses import replace

    from ditkit.core.config import DataConfig
    from ditkit.data import make_batch

    cfg = train_config()
    cfg = replace(cfg, data=DataConfig(dataset="digits", size=32))
    x, captions = make_batch(cfg.data.dataset, cfg.train.seed, 0, cfg.train.batch_size, cfg.data.size)
    assert x.shape == (cfg.train.batch_size, 3, 32, 32)
    assert all(c.startswith("a handwritten digit") for c in captions)
    with pytest.raises(ValueError, match="allowed"):
        DataConfig(dataset="mnist")
