"""Conditioned DiTs (inpainting / upscaling inputs), their training batches, data workers,
the time budget, and resuming with channels-last optimizer state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_context, perturb_, tiny_dit_config, tiny_train_config
from ditkit.core.conditions import (COND_CHANNELS, check_task, downsample, inpaint_condition, inpaint_training_masks,
                               random_mask, upscale_condition)
from ditkit.data.shapes import make_batch, make_scene_batch
from ditkit.core.model import DiT, load_base_weights
from ditkit.training.train import step_batch, train


def test_cond_channels_model_takes_and_checks_its_condition():
    model = perturb_(DiT(tiny_dit_config(cond_channels=4)).eval())
    x, cond = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 32, 32)
    ctx, mask = make_context(2, 5, 16)
    out = model(x, torch.tensor([0.3, 0.7]), ctx, mask, cond=cond)
    assert out.shape == x.shape
    # The condition matters, and a batch-1 condition is repeated to the batch (guidance doubles it).
    assert not torch.allclose(out, model(x, torch.tensor([0.3, 0.7]), ctx, mask, cond=cond.flip(0)))
    one = model(x, torch.tensor([0.3, 0.7]), ctx, mask, cond=cond[:1])
    assert torch.allclose(one, model(x, torch.tensor([0.3, 0.7]), ctx, mask, cond=cond[:1].repeat(2, 1, 1, 1)))
    with pytest.raises(ValueError, match="needs a conditioning image"):
        model(x, torch.tensor([0.5]), ctx, mask)
    with pytest.raises(ValueError, match="expected cond of shape"):
        model(x, torch.tensor([0.5]), ctx, mask, cond=torch.randn(2, 3, 32, 32))
    plain = DiT(tiny_dit_config())
    with pytest.raises(ValueError, match="takes no conditioning image"):
        plain(x, torch.tensor([0.5]), ctx, mask, cond=cond)


def test_widened_model_starts_as_its_base():
    """Zero-initialized new input channels: the inpainting model starts as the text-to-image model."""
    base = perturb_(DiT(tiny_dit_config()).eval())
    wide = DiT(tiny_dit_config(cond_channels=4)).eval()
    with torch.no_grad():
        widened = load_base_weights(wide, base.state_dict())
    assert widened  # the stem and head convolutions gained channels
    x, ctx = torch.randn(2, 3, 32, 32), make_context(2, 4, 16)
    t = torch.tensor([0.2, 0.9])
    assert torch.allclose(wide(x, t, *ctx, cond=torch.randn(2, 4, 32, 32)), base(x, t, *ctx), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        load_base_weights(DiT(tiny_dit_config(width=64, heads=4)), base.state_dict())


def test_inpaint_condition_hides_the_hole_and_upscale_condition_keeps_the_size():
    img = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 3:6] = 1
    cond = inpaint_condition(img, mask)
    assert cond.shape == (1, 4, 8, 8)
    assert torch.equal(cond[:, :1], mask)
    assert (cond[:, 1:][mask.expand(1, 3, 8, 8) > 0] == 0).all()
    assert torch.equal(cond[:, 1:][mask.expand(1, 3, 8, 8) == 0], img[mask.expand(1, 3, 8, 8) == 0])
    up = upscale_condition(downsample(img))
    assert up.shape == img.shape
    flat = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(upscale_condition(downsample(flat)), flat)


def test_training_masks_cover_objects_boxes_and_borders():
    _, scenes = make_scene_batch(0, 0, 64, 64)
    rng = np.random.default_rng(0)
    masks, captions = inpaint_training_masks(rng, 64, scenes, [s.caption for s in scenes])
    assert masks.shape == (64, 1, 64, 64)
    frac = masks.mean(dim=(1, 2, 3))
    assert (frac > 0).all() and (frac < 1).all()  # never empty, never everything
    single = [c for c, s in zip(captions, scenes) if c != s.caption]
    assert single and all(c.startswith(("a ", "an ")) and " and " not in c for c in single)
    # An object mask contains that object's box.
    for _ in range(20):
        scene = scenes[0]
        m, obj = random_mask(rng, 64, scene)
        if obj is not None:
            assert m[obj.y0:obj.y1, obj.x0:obj.x1].all()
            break
    else:
        pytest.fail("no object mask drawn in 20 tries")


def test_scene_batch_is_make_batch_with_scenes():
    a, caps = make_batch(3, 7, 4, 32)
    b, scenes = make_scene_batch(3, 7, 4, 32)
    assert torch.equal(a, b) and caps == [s.caption for s in scenes]


@pytest.mark.parametrize("task", ["inpaint", "upscale"])
def test_step_batch_of_a_task_is_deterministic_and_shaped(task, tmp_path):
    cfg = tiny_train_config(tmp_path, task=task)
    cfg.model.cond_channels = COND_CHANNELS[task]
    a, b = step_batch(cfg, 5), step_batch(cfg, 5)
    assert a["captions"] == b["captions"] and torch.equal(a["cond"], b["cond"]) and torch.equal(a["eps"], b["eps"])
    assert a["cond"].shape[1] == COND_CHANNELS[task]
    if task == "upscale":  # odd steps train the larger scale
        assert step_batch(cfg, 4)["x0"].shape[-1] == 32 and a["x0"].shape[-1] == 64


def test_task_and_cond_channels_must_agree():
    with pytest.raises(ValueError, match="cond_channels = 4"):
        check_task("inpaint", 0)
    with pytest.raises(ValueError, match="unknown train.task"):
        check_task("colorize", 0)


def _losses(folder: Path) -> list:
    return [json.loads(x).get("loss") for x in (folder / "log.jsonl").read_text().splitlines() if '"loss"' in x]


def test_data_workers_change_the_speed_not_the_data(tmp_path):
    inline = tiny_train_config(tmp_path / "inline", steps=4, task="inpaint")
    workers = tiny_train_config(tmp_path / "workers", steps=4, task="inpaint", num_workers=2)
    for cfg in (inline, workers):
        cfg.model.cond_channels = 4
        train(cfg, progress=False)
    assert _losses(tmp_path / "inline") == _losses(tmp_path / "workers")


def test_inpainting_run_can_start_from_a_text_to_image_model(tmp_path):
    base = tiny_train_config(tmp_path / "base", steps=2)
    train(base, progress=False)
    cfg = tiny_train_config(tmp_path / "inpaint", steps=2, task="inpaint", init_from=str(tmp_path / "base" / "model"))
    cfg.model.cond_channels = 4
    assert train(cfg, progress=False)["step"] == 2


def test_time_budget_cuts_the_run_and_anneals_to_the_new_end(tmp_path):
    cfg = tiny_train_config(tmp_path / "b", steps=10**6, time_budget_s=1.0, cooldown_fraction=0.5,
                            checkpoint_every=10**6, log_every=10**6)
    result = train(cfg, progress=False)
    assert 0 < result["step"] < 10**6
    saved = json.loads((tmp_path / "b" / "config.yaml").read_text())
    assert saved["train"]["steps"] == result["step"]
    assert (tmp_path / "b" / "model" / "model.safetensors").is_file()  # the cut run still saves


def test_resume_gives_optimizer_moments_their_parameters_layout(tmp_path):
    from ditkit.core.checkpoint import load_train_state, save_train_state

    cfg = tiny_train_config(tmp_path / "r")
    model = DiT(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 32, 32), torch.tensor([0.5]), *make_context(1, 3, 384)).square().mean().backward()
    opt.step()
    import copy

    save_train_state(tmp_path / "r", 1, model, copy.deepcopy(model), opt, cfg)
    model2 = DiT(cfg.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    assert load_train_state(tmp_path / "r", model2, copy.deepcopy(model2), opt2) == 1
    conv = model2.stem[0].weight
    assert not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
    for p in model2.parameters():
        for v in opt2.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert v.stride() == p.stride()
