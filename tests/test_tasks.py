"""The editing tasks (vary, edit, inpaint, outpaint, fuse, upscale): the kept region is exact,
shapes and sizes are right, bad input is refused clearly, real photos work, and the
sampling invariants behind them hold."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ditkit.tasks import editing as tasks
from ditkit.core.checkpoint import save_model
from ditkit.core.config import SampleConfig
from ditkit.core.images import load_image, load_mask
from ditkit.core.model import DiT, DiTConfig
from ditkit.api import load

from conftest import box_mask as _box_mask, scene_image as _scene, tiny_folder as _tiny_folder


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    return {
        "text": load(_tiny_folder(root, "t2i")),
        "inpaint": load(_tiny_folder(root, "inp", 4)),
        "upscale": load(_tiny_folder(root, "up", 3, SampleConfig(steps=2, guidance=1.0, size=32))),
    }


def _photos():
    skdata = pytest.importorskip("skimage.data")
    return {name: Image.fromarray(getattr(skdata, name)()) for name in ("astronaut", "coffee", "chelsea")}


# -- sampling invariants ----------------------------------------------------------------------

def test_masked_velocity_keeps_the_known_region_on_its_path_for_every_sampler():
    x0, eps = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    fill = torch.zeros(1, 1, 8, 8)
    fill[..., 2:6, 2:6] = 1

    def wild(x, t):  # any model velocity
        return torch.sin(3 * x) + t

    for sampler in ("euler", "heun", "dpm2m"):
        out = tasks.blend_inpaint(wild, x0, eps, fill, SampleConfig(sampler=sampler, steps=5))
        keep = fill.expand_as(x0) == 0
        assert torch.allclose(out[keep], x0[keep], atol=1e-5), sampler
        assert not torch.allclose(out[~keep], x0[~keep])


def test_repaint_resampling_also_keeps_the_known_region():
    x0, eps = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    fill = torch.zeros(1, 1, 8, 8)
    fill[..., :4] = 1
    out = tasks.blend_inpaint(lambda x, t: -x, x0, eps, fill, SampleConfig(steps=4), resample=2,
                              generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out[..., 4:], x0[..., 4:], atol=1e-5)


def test_inversion_then_sampling_returns_the_image_for_an_exactly_integrable_velocity():
    x0, c = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    noise = tasks.invert(lambda x, t: c, x0, steps=7, t_max=0.8)
    assert torch.allclose(noise, x0 + 0.8 * c, atol=1e-6)
    from ditkit.core.sampling import sample_euler

    back = sample_euler(lambda x, t: c, noise, torch.linspace(0.8, 0, 8, dtype=torch.float64))
    assert torch.allclose(back, x0, atol=1e-6)


def test_sdedit_strength_zero_is_the_image_and_schedule_starts_at_strength():
    x0 = torch.randn(1, 3, 8, 8)
    assert torch.equal(tasks.sdedit(lambda x, t: x, x0, torch.randn_like(x0), 0.0, SampleConfig()), x0)
    ts = tasks.partial_schedule(SampleConfig(steps=20), 0.3)
    assert float(ts[0]) == pytest.approx(0.3) and float(ts[-1]) == 0 and len(ts) == 7


def test_multiply_blend_endpoints_and_product():
    a, b = torch.rand(1, 3, 4, 4) * 2 - 1, torch.rand(1, 3, 4, 4) * 2 - 1
    assert torch.allclose(tasks.multiply_blend(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(tasks.multiply_blend(a, b, 1.0), b, atol=1e-6)
    white = torch.ones_like(a)
    assert torch.allclose(tasks.multiply_blend(a, white, 0.5), a, atol=1e-6)  # white is neutral: both contents stay


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.allclose(tasks.slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(tasks.slerp(a, b, 1.0), b, atol=1e-5)
    mid = tasks.slerp(a, b, 0.5).flatten(1).norm(dim=1)
    lin = (0.5 * (a + b)).flatten(1).norm(dim=1)
    assert (mid > lin).all()  # the straight mix of independent noises loses norm; slerp keeps it


def test_windows_cover_the_canvas_and_match_the_plain_model_when_it_fits(pipes):
    assert tasks.window_starts(96, 64) == [0, 32] and tasks.window_starts(100, 64) == [0, 32, 36]
    assert tasks.window_starts(40, 64) == [0]
    model = pipes["text"].model
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([0.4])
    ctx = (torch.randn(1, 3, 384), torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(tasks.TaskModel(model, window=32)(x, t, *ctx), model(x, t, *ctx))
    big = tasks.TaskModel(model, window=32)(torch.randn(2, 3, 48, 64), torch.tensor([0.4, 0.6]),
                                            ctx[0].repeat(2, 1, 1), ctx[1].repeat(2, 1))
    assert big.shape == (2, 3, 48, 64) and torch.isfinite(big).all()


# -- the tasks through the Python API -----------------------------------------------------------

@pytest.mark.parametrize("method", ["blend", "model"])
def test_inpaint_keeps_every_unmasked_pixel(pipes, method):
    pipe = pipes["text"] if method == "blend" else pipes["inpaint"]
    image = _scene(32)
    mask = _box_mask(32, 32, (8, 4, 20, 18))
    out = pipe.inpaint(image, mask, "a red circle", method=method)
    keep = np.asarray(mask) < 128
    assert out.size == image.size
    assert (np.asarray(out)[keep] == np.asarray(image)[keep]).all()
    assert not (np.asarray(out)[~keep] == np.asarray(image)[~keep]).all()


def test_inpaint_other_sizes_keep_pixels_at_full_resolution(pipes):
    image = _scene(48).resize((60, 45))
    mask = _box_mask(60, 45, (10, 10, 30, 30))
    with pytest.warns(UserWarning, match="resized to the model"):
        out = pipes["text"].inpaint(image, mask, "a blue square", method="blend")
    keep = np.asarray(mask) < 128
    assert out.size == (60, 45) and (np.asarray(out)[keep] == np.asarray(image)[keep]).all()


def test_inpaint_method_model_without_an_inpainting_model_is_refused(pipes):
    with pytest.raises(ValueError, match="no inpainting model"):
        pipes["text"].inpaint(_scene(), _box_mask(32, 32, (0, 0, 8, 8)), "a red circle", method="model")
    with pytest.raises(ValueError, match="unknown inpainting method"):
        pipes["text"].inpaint(_scene(), _box_mask(32, 32, (0, 0, 8, 8)), "x", method="magic")


def test_outpaint_extends_the_canvas_and_keeps_the_original(pipes):
    image = _scene(32)
    out = pipes["text"].outpaint(image, "a green triangle", right=16, top=8, method="blend")
    assert out.size == (48, 40)
    assert (np.asarray(out)[8:40, 0:32] == np.asarray(image)).all()
    out2 = pipes["inpaint"].outpaint(image, "a green triangle", left=32)  # 2x wide: windows
    assert out2.size == (64, 32) and (np.asarray(out2)[:, 32:] == np.asarray(image)).all()


@pytest.mark.parametrize("amounts, match", [({"left": -1}, ">= 0"), ({"right": 40}, "at most double"),
                                            ({}, "at least one"), ({"top": 1.5}, "top must be an integer")])
def test_outpaint_bad_amounts(pipes, amounts, match):
    with pytest.raises(ValueError, match=match):
        pipes["text"].outpaint(_scene(), "x", **amounts)


def test_vary_and_its_strength(pipes):
    image = _scene(32)
    same = pipes["text"].vary(image, strength=0.0)[0]
    assert np.abs(np.asarray(same, float) - np.asarray(image, float)).max() <= 1
    outs = pipes["text"].vary(image, prompt="a red circle", strength=0.7, num_images=2, seed=3)
    assert len(outs) == 2 and outs[0].size == (32, 32) and outs[0].tobytes() != outs[1].tobytes()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength must be in"):
            pipes["text"].vary(image, strength=bad)


def test_edit_and_fuse_run_and_check_their_arguments(pipes):
    a, b = _scene(32, 1), _scene(32, 2)
    assert pipes["text"].edit(a, "a red circle", "a blue circle").size == (32, 32)
    assert pipes["text"].fuse(a, b, alpha=0.3, prompt_a="x", prompt_b="y").size == (32, 32)
    assert pipes["text"].fuse(a, b, mode="noise", prompt="x and y").size == (32, 32)
    with pytest.raises(ValueError, match="alpha"):
        pipes["text"].fuse(a, b, alpha=2)
    assert pipes["text"].fuse(a, b, condition="mix", prompt_a="x", prompt_b="y").size == (32, 32)
    with pytest.raises(ValueError, match="unknown fusion mode"):
        pipes["text"].fuse(a, b, mode="average")
    with pytest.raises(ValueError, match="unknown fusion condition"):
        pipes["text"].fuse(a, b, condition="sum")
    with pytest.raises(ValueError, match="strength must be > 0"):
        pipes["text"].edit(a, "x", "y", strength=0)


def test_joined_contexts_keep_both_prompts_tokens():
    a = (torch.randn(1, 3, 8), torch.tensor([[True, True, False]]))
    b = (torch.randn(1, 4, 8), torch.ones(1, 4, dtype=torch.bool))
    states, mask = tasks.join_contexts(a, b)
    assert states.shape == (1, 7, 8) and mask.tolist() == [[True, True, False, True, True, True, True]]
    assert torch.equal(states[:, :3], a[0]) and torch.equal(states[:, 3:], b[0])


def test_upscale_doubles_the_size_and_checks_its_input(pipes):
    out = pipes["upscale"].upscale(_scene(32).resize((16, 16), Image.BOX))
    assert out.size == (32, 32)
    with pytest.warns(UserWarning, match="multiples of 4"):
        assert pipes["upscale"].upscale(_scene(32).resize((18, 14))).size == (40, 32)
    with pytest.raises(ValueError, match="too large"):
        pipes["upscale"].upscale(Image.new("RGB", (600, 20)))
    with pytest.raises(ValueError, match="upscaling model"):
        pipes["text"].upscale(_scene(32))
    with pytest.raises(ValueError, match="text-to-image model"):
        pipes["upscale"].vary(_scene(32))


# -- inputs --------------------------------------------------------------------------------------

def test_image_modes_are_converted_not_refused(tmp_path):
    rgb = _scene(32)
    gray16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)
    for im in (rgb.convert("L"), rgb.convert("P"), gray16, rgba, np.asarray(rgb), np.asarray(rgb) / 255.0):
        out = load_image(im)
        assert out.mode == "RGB" and out.size == (32, 32)
    assert np.asarray(load_image(rgba)).min() == 255  # transparent -> white background
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(bogus)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_masks_black_refused_other_sizes_resized_white_warned(pipes):
    with pytest.raises(ValueError, match="all black"):
        load_mask(Image.new("L", (32, 32), 0), (32, 32))
    with pytest.warns(UserWarning, match="resizing the mask"):
        assert load_mask(Image.new("L", (16, 16), 255), (32, 32)).shape == (32, 32)
    with pytest.warns(UserWarning, match="whole image"):
        pipes["text"].inpaint(_scene(), Image.new("L", (32, 32), 255), "a red circle", method="blend")


def test_every_task_runs_on_real_photos_and_keeps_the_kept_region(pipes):
    for name, photo in _photos().items():
        mask = _box_mask(*photo.size, (photo.size[0] // 4, photo.size[1] // 4, photo.size[0] // 2, photo.size[1] // 2))
        keep = np.asarray(mask) < 128
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inp = pipes["text"].inpaint(photo, mask, "a red circle", method="blend")
            assert inp.size == photo.size and (np.asarray(inp)[keep] == np.asarray(photo)[keep]).all(), name
            model_inp = pipes["inpaint"].inpaint(photo, mask, "a red circle")
            assert (np.asarray(model_inp)[keep] == np.asarray(photo)[keep]).all(), name
            out = pipes["text"].outpaint(photo, "a cat", right=photo.size[0] // 4)
            assert (np.asarray(out)[:, : photo.size[0]] == np.asarray(photo)).all(), name
            assert pipes["text"].vary(photo, strength=0.5)[0].size == (32, 32)
            assert pipes["text"].edit(photo, "a photo", "a red circle", strength=0.6).size == (32, 32)
            assert pipes["text"].fuse(photo, _scene(), alpha=0.5).size == (32, 32)
            small = photo.resize((24, 24))
            assert pipes["upscale"].upscale(small).size == (48, 48)


def test_tasks_are_functions_over_an_engine(pipes):
    """The Pipeline methods are the tasks' functions on the pipeline's engine, nothing more."""
    from ditkit.tasks import pipeline_edit

    pipe, image = pipes["text"], _scene(seed=3)
    direct = pipeline_edit.vary(pipe.engine, image, "a red circle", strength=0.5, seed=4)[0]
    assert np.array_equal(np.asarray(direct), np.asarray(pipe.vary(image, "a red circle", strength=0.5, seed=4)[0]))
    with pytest.raises(ValueError, match="needs an upscaling model"):
        pipeline_edit.upscale(pipe.engine, image)


def test_inpaint_companion_is_loaded_once():
    import ditkit

    if "shapes-64-inpaint" not in ditkit.embedded_models():
        pytest.skip("embedded models not built")
    pipe = load("shapes-64")
    first = pipe.companion("inpaint")
    assert first is pipe.companion("inpaint") and first.model.config.cond_channels == 4
    assert pipe.companion("no-such-suffix") is None
