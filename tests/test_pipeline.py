"""The Python API: determinism by seed, batching independence, sizes, embedded models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ditkit
from ditkit.api import embedded_models, load


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load(tiny_model_dir)


def arrays(images):
    return [np.asarray(im) for im in images]


def test_same_seed_same_image_other_seed_other_image(pipe):
    a = arrays(pipe.generate("a red circle", seed=1))
    b = arrays(pipe.generate("a red circle", seed=1))
    c = arrays(pipe.generate("a red circle", seed=2))
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_image_does_not_depend_on_batch(pipe):
    batch = arrays(pipe.generate(["a red circle", "two blue squares"], seed=5, batch_size=2))
    alone = arrays(pipe.generate("two blue squares", seed=6))
    assert np.abs(batch[1].astype(int) - alone[0].astype(int)).max() <= 1  # batched matmuls may round differently


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm2m"])
def test_samplers_and_sizes(pipe, sampler):
    images = pipe.generate("a red circle", sampler=sampler, size=48, num_images=2)
    assert len(images) == 2 and images[0].size == (48, 48)


def test_guidance_and_apg_change_the_image(pipe):
    plain = arrays(pipe.generate("a red circle", guidance=1.0))[0]
    cfg = arrays(pipe.generate("a red circle", guidance=6.0))[0]
    apg = arrays(pipe.generate("a red circle", guidance=6.0, apg=True))[0]
    assert not np.array_equal(plain, cfg) and not np.array_equal(cfg, apg)


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="allowed: euler, heun, dpm2m"):
        pipe.generate("x", sampler="ddim")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pipe.generate("x", steps=0)
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        pipe.generate("x", guidance=-1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        pipe.generate("x", size=30)
    with pytest.raises(ValueError, match="num_images"):
        pipe.generate("x", num_images=0)
    with pytest.raises(ValueError, match="unknown model"):
        ditkit.load("definitely-not-a-model")


@pytest.mark.skipif("shapes-64" not in embedded_models(), reason="embedded model not built")
def test_embedded_default_model_draws_what_it_is_asked():
    """The shipped model, at its default settings, on single-object prompts it never saw with these seeds."""
    from ditkit.data.shapes import score_image

    pipe = ditkit.load("shapes-64")
    prompts = ["a large red circle", "a small blue square", "a large green triangle", "a large yellow square"]
    images = pipe.generate(prompts, seed=100)
    assert all(im.size == (64, 64) for im in images)
    assert sum(score_image(im, p) for im, p in zip(images, prompts)) >= 3


def test_model_default_guidance_interval_is_used(tiny_model_dir, tmp_path):
    import json
    import shutil

    import numpy as np

    import ditkit

    folder = tmp_path / "interval"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["sample"].update(interval_lo=0.2, interval_hi=0.7)
    (folder / "config.json").write_text(json.dumps(cfg))
    pipe, plain = ditkit.load(folder), ditkit.load(tiny_model_dir)
    a = pipe.generate("a red circle", seed=2)[0]
    b = plain.generate("a red circle", seed=2, guidance_interval=(0.2, 0.7))[0]
    c = plain.generate("a red circle", seed=2)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    with pytest.raises(ValueError, match="interval"):
        pipe.generate("x", guidance_interval=(0.8, 0.2))
