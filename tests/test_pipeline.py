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
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.1000"):
        pipe.generate("x", steps=0)
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        pipe.generate("x", guidance=-1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        pipe.generate("x", size=30)
    with pytest.raises(ValueError, match="num_images"):
        pipe.generate("x", num_images=0)
    with pytest.raises(ValueError, match="unknown model"):
        ditkit.load("definitely-not-a-model")


def test_whole_numbers_of_any_type_are_accepted_and_never_truncated(pipe):
    """numpy integers and integral floats (as JSON and YAML write them) mean the same as ints;
    2.5 steps is refused (tests/test_bad_inputs.py), not run as 2."""
    plain = arrays(pipe.generate("a red circle", steps=2, seed=3, guidance=2))
    same = arrays(pipe.generate("a red circle", steps=np.int64(2), seed=3.0, guidance=np.float32(2.0)))
    assert np.array_equal(plain[0], same[0])
    with pytest.raises(ValueError, match="steps must be an integer"):
        pipe.generate("a red circle", steps=2.5)


def test_verifier_may_return_any_real_scalar(pipe):
    """numpy and one-element torch scores are numbers; the choice is the highest one."""
    scores = iter([np.float32(0.1), torch.tensor(0.9)])
    best = pipe.generate_best_of("a red circle", 2, lambda im, pr: next(scores), steps=1)
    assert best.chosen.tolist() == [1] and best.scores[0].tolist() == pytest.approx([0.1, 0.9])


def test_nan_weights_are_an_error_naming_the_model(tiny_model_dir):
    """A model whose output is NaN is an error, never an all-black image."""
    nan_pipe = load(tiny_model_dir)
    with torch.no_grad():
        nan_pipe.model.out_conv.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite") as info:
        nan_pipe.generate("a red circle", steps=1)
    assert str(tiny_model_dir) in str(info.value)
    with pytest.raises(ValueError, match="non-finite"):
        nan_pipe.vary(np.full((32, 32, 3), 255, np.uint8), steps=1)


@pytest.mark.skipif("shapes-64" not in embedded_models(), reason="embedded model not built")
def test_embedded_default_model_draws_what_it_is_asked():
    """The shipped model, at its default settings, on single-object prompts it never saw with these seeds."""
    from ditkit.evaluation.shapes_scoring import score_image

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


def test_pipeline_is_a_facade_without_mixins():
    from ditkit.tasks import pipeline_edit

    assert ditkit.Pipeline.__bases__ == (object,)
    assert not hasattr(pipeline_edit, "EditMethods")
    assert ditkit.embedded_models() == embedded_models()


def test_callback_reports_steps_previews_and_request_progress(pipe):
    """The engine callback: the sampler's step dict (x0 = the denoised preview) plus done/total
    image-steps over the whole request; with Euler the last preview is the batch's output."""
    from ditkit.core.progress import progress_callback

    infos = []
    x = pipe.engine.generate(pipe.request(["a", "b", "c"], [0, 1, 2], steps=3, batch_size=2, sampler="euler"),
                             infos.append)
    assert [i["step"] for i in infos] == [1, 2, 3, 1, 2, 3] and {i["steps"] for i in infos} == {3}
    assert [i["done"] for i in infos] == [2, 4, 6, 7, 8, 9] and {i["total"] for i in infos} == {9}
    assert [i["index"] for i in infos] == [0, 0, 0, 2, 2, 2]
    assert all({"step", "steps", "t", "x", "x0", "done", "total", "index"} <= set(i) for i in infos)
    assert infos[0]["t"] == 1.0 and infos[0]["x"].shape == (2, 3, 32, 32) and infos[3]["x0"].shape == (1, 3, 32, 32)
    assert torch.equal(infos[2]["x0"], x[:2]) and torch.equal(infos[5]["x0"], x[2:])
    bar = []
    images = pipe.generate(["a", "b"], steps=2, callback=progress_callback(lambda d, n: bar.append((d, n))))
    assert bar == [(2, 4), (4, 4)] and len(images) == 2


def test_request_validates_in_one_place(pipe):
    from ditkit.engine import GenerationRequest

    with pytest.raises(ValueError, match="2 seeds given for 1 images"):
        GenerationRequest(("a",), (1, 2))
    with pytest.raises(ValueError, match="batch_size"):
        GenerationRequest(("a",), 0, batch_size=0)
    with pytest.raises(ValueError, match="allowed: euler, heun, dpm2m"):
        GenerationRequest(("a",), 0, sampler="ddim")
    assert GenerationRequest(("a", "b"), 5).seeds == (5, 6)


def test_prior_and_int8_copy_load_once_per_pipeline(tiny_model_dir, monkeypatch):
    """The prior model (SampleConfig.prior_model) and the int8 copy are made on first use and
    kept by the pipeline, also when threads share it; a new pipeline loads its own."""
    import threading

    import torch.ao.quantization as tq

    import ditkit.engine.generate as engine_generate

    loads, quantized = [], []
    real_load, real_quantize = engine_generate.load_model, tq.quantize_dynamic
    monkeypatch.setattr(engine_generate, "load_model", lambda *a, **k: (loads.append(a[0]), real_load(*a, **k))[1])
    monkeypatch.setattr(tq, "quantize_dynamic", lambda *a, **k: (quantized.append(1), real_quantize(*a, **k))[1])
    fresh = load(tiny_model_dir)
    first = fresh.generate("a red circle", prior_model=str(tiny_model_dir), prior_until=0.9)[0]
    shared = []  # images from threads that share the pipeline (a thread's exception would leave a gap)
    threads = [threading.Thread(target=lambda: shared.append(fresh.generate(
        "two blue squares", prior_model=str(tiny_model_dir), precision="int8")[0])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(shared) == 3 and all(np.array_equal(np.asarray(im), np.asarray(shared[0])) for im in shared)
    fresh.generate("a red circle", precision="int8")
    assert len(loads) == 1 and len(quantized) == 1
    again = fresh.generate("a red circle", prior_model=str(tiny_model_dir), prior_until=0.9)[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    load(tiny_model_dir).generate("a red circle", prior_model=str(tiny_model_dir))
    assert len(loads) == 2
