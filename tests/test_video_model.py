"""The video DiT (core/video_model.py), its training recipe and the engine's video path:
3D patchify round trip, 3D RoPE reducing to 2D, zero-init output, exact initialisation from an
image model, per-frame time, image-to-video's first frame, same seed same video."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_context, perturb_, tiny_dit_config
from ditkit.core.checkpoint import load_model, save_model
from ditkit.core.config import Config, DataConfig, SampleConfig, TrainConfig
from ditkit.core.model import DiT, patchify, rope_2d
from ditkit.core.video_model import (VideoDiT, build_model, inflate_image_weights, patchify_3d, rope_3d,
                                     unpatchify_3d)
from ditkit.engine.generate import Engine
from ditkit.engine.request import GenerationRequest
from ditkit.engine.video import FirstFrameModel
from ditkit.training.train import clip_times, step_batch


def video_config(**overrides):
    kw = dict(frames=4, depth=2)
    kw.update(overrides)
    return tiny_dit_config(**kw)


def make_video(seed: int = 0, perturb: bool = True, **overrides) -> VideoDiT:
    torch.manual_seed(seed)
    model = VideoDiT(video_config(**overrides)).eval()
    return perturb_(model, seed=seed + 1) if perturb else model


def clip(b=2, f=4, s=32, seed=0):
    return torch.randn(b, f, 3, s, s, generator=torch.Generator().manual_seed(seed))


# -- 3D patchify and RoPE -------------------------------------------------------------------

@pytest.mark.parametrize("pt,p", [(1, 8), (2, 4), (4, 2)])
def test_patchify_3d_round_trip(pt, p):
    x = clip(b=2, f=4, s=16)
    tokens = patchify_3d(x, pt, p)
    assert tokens.shape == (2, (4 // pt) * (16 // p) ** 2, pt * 3 * p * p)
    assert torch.equal(unpatchify_3d(tokens, pt, p, 4, 16, 16), x)


def test_patchify_3d_of_one_frame_is_the_2d_patchify():
    x = clip(b=2, f=1, s=16)
    assert torch.equal(patchify_3d(x, 1, 4), patchify(x[:, 0], 4))


def test_rope_3d_reduces_to_2d_for_one_frame():
    d, td = 32, 8
    cos, sin = rope_3d(1, 3, 5, d, td)
    cos2, sin2 = rope_2d(3, 5, d - td, torch.device("cpu"))
    half, half2 = d // 2, (d - td) // 2
    # the spatial bands are rope_2d's, the time band is the identity (cos 1, sin 0) at frame 0
    assert torch.equal(cos[:, :half2], cos2[:, :half2]) and torch.equal(sin[:, half:half + half2], sin2[:, half2:])
    assert torch.equal(cos[:, half2:half], torch.ones(15, td // 2))
    assert torch.equal(sin[:, half2:half], torch.zeros(15, td // 2))
    # with no time band rope_3d is rope_2d exactly
    assert all(torch.equal(a, b) for a, b in zip(rope_3d(1, 3, 5, d, 0), rope_2d(3, 5, d, torch.device("cpu"))))


def test_rope_3d_time_band_rotates_with_the_frame_and_space_does_not():
    cos, sin = rope_3d(3, 2, 2, 16, 8)  # (3*2*2, 16), tokens (frame, row, col)
    per_frame = cos.reshape(3, 4, 16)
    assert torch.equal(per_frame[0, :, :4], per_frame[2, :, :4])  # spatial band: same on every frame
    assert not torch.equal(per_frame[0, :, 4:8], per_frame[1, :, 4:8])  # time band: moves with the frame
    with pytest.raises(ValueError, match="time_dims"):
        rope_3d(2, 2, 2, 16, 3)


# -- the model ------------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["factorized", "full"])
def test_untrained_video_model_predicts_zero(attention):
    model = make_video(perturb=False, video_attention=attention)
    states, mask = make_context(2, 5, 16)
    v = model(clip(), torch.rand(2), states, mask)
    assert v.shape == (2, 4, 3, 32, 32) and torch.count_nonzero(v) == 0


def test_factorized_video_model_initialised_from_an_image_model_is_that_model_on_every_frame():
    torch.manual_seed(0)
    image = perturb_(DiT(tiny_dit_config(depth=2)).eval(), seed=3)
    video = VideoDiT(video_config()).eval()
    fresh = inflate_image_weights(video, image.state_dict())
    assert fresh and all(".temporal_attn." in k for k in fresh)
    states, mask = make_context(2, 5, 16)
    x, t = clip(), torch.rand(2)
    with torch.no_grad():
        v = video(x, t, states, mask)
        v_image = image(x.flatten(0, 1), t.repeat_interleave(4), states.repeat_interleave(4, 0),
                        mask.repeat_interleave(4, 0)).reshape(v.shape)
    assert torch.allclose(v, v_image, atol=1e-5)


def test_temporal_patch_inflation_keeps_a_still_clip():
    torch.manual_seed(0)
    image = perturb_(DiT(tiny_dit_config(depth=1)).eval(), seed=3)
    video = VideoDiT(video_config(depth=1, temporal_patch=2)).eval()
    inflate_image_weights(video, image.state_dict())
    frame = torch.randn(1, 3, 32, 32)
    still = frame[:, None].repeat(1, 4, 1, 1, 1)
    states, mask = make_context(1, 5, 16)
    with torch.no_grad():
        v = video(still, torch.tensor([0.5]), states, mask)
        v_image = image(frame, torch.tensor([0.5]), states, mask)
    assert torch.allclose(v, v_image[:, None].expand_as(v), atol=1e-5)


@pytest.mark.parametrize("attention", ["factorized", "full"])
def test_frames_see_each_other(attention):
    """Attention runs over the clip: changing frame 3 changes frame 0's velocity."""
    model = make_video(video_attention=attention)
    states, mask = make_context(1, 5, 16)
    x = clip(b=1)
    y = x.clone()
    y[:, 3] += 1.0
    with torch.no_grad():
        a, b = model(x, torch.tensor([0.5]), states, mask), model(y, torch.tensor([0.5]), states, mask)
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


def test_per_frame_time_equal_to_the_clip_time_is_the_clip_time():
    model = make_video()
    states, mask = make_context(2, 5, 16)
    x, t = clip(), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        a = model(x, t, states, mask)
        b = model(x, t[:, None].expand(2, 4), states, mask)
        c = model(x, torch.tensor([[0.3, 0.3, 0.3, 0.0], [0.8, 0.8, 0.8, 0.8]]), states, mask)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], c[0]) and torch.allclose(a[1], c[1], atol=1e-6)


def test_video_model_refuses_bad_input():
    model = make_video()
    states, mask = make_context(1, 5, 16)
    with pytest.raises(ValueError, match="clip x of shape"):
        model(torch.randn(1, 3, 32, 32), torch.rand(1), states, mask)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 4, 3, 30, 30), torch.rand(1), states, mask)
    with pytest.raises(ValueError, match="per-frame times"):
        model(clip(b=1), torch.rand(1, 3), states, mask)


def test_video_configs_are_checked():
    with pytest.raises(ValueError, match="video_attention"):
        video_config(video_attention="diagonal")
    with pytest.raises(ValueError, match="multiple of model.temporal_patch"):
        video_config(frames=5, temporal_patch=2)
    with pytest.raises(ValueError, match="positions rope"):
        video_config(positions="sincos")
    with pytest.raises(ValueError, match="a video model"):
        Config.from_dict({"model": {"frames": 8}, "data": {"dataset": "shapes"}})
    with pytest.raises(ValueError, match="a video model"):
        Config.from_dict({"data": {"dataset": "shapes-video"}})
    with pytest.raises(ValueError, match="first_frame_prob"):
        Config.from_dict({"train": {"first_frame_prob": 0.5}})


def test_model_folder_round_trip_builds_a_video_model(tmp_path):
    model = make_video()
    save_model(tmp_path / "m", model, SampleConfig(steps=2, size=32))
    loaded, _ = load_model(tmp_path / "m")
    assert isinstance(loaded, VideoDiT) and isinstance(build_model(loaded.config), VideoDiT)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# -- training recipe ------------------------------------------------------------------------

def test_clip_times_give_frame_zero_clean_only_where_asked():
    t = torch.tensor([0.2, 0.7, 0.9])
    times = clip_times(t, 4, torch.tensor([True, False, True]))
    assert times.shape == (3, 4)
    assert times[:, 0].tolist() == [0.0, pytest.approx(0.7), 0.0]
    assert torch.equal(times[:, 1:], t[:, None].expand(3, 3))


def test_video_step_batch_is_a_seeded_clip_batch(tmp_path):
    cfg = Config(model=video_config(text_dim=384), data=DataConfig(dataset="shapes-video", size=32),
                 train=TrainConfig(output_dir=str(tmp_path), batch_size=8, first_frame_prob=0.5, precision="fp32"),
                 sample=SampleConfig(size=32))
    cfg.check_video()
    batch = step_batch(cfg, 3)
    assert batch["x0"].shape == (8, 4, 3, 32, 32) and batch["eps"].shape == batch["x0"].shape
    assert batch["t"].shape == (8, 4)
    given = batch["t"][:, 0] == 0
    assert 0 < int(given.sum()) < 8  # about half the clips get their first frame
    assert torch.equal(step_batch(cfg, 3)["x0"], batch["x0"]) and torch.equal(step_batch(cfg, 3)["t"], batch["t"])


def test_video_training_runs_and_resumes_exactly(tmp_path):
    from ditkit.training.train import train

    def config(out, steps):
        return Config(model=tiny_dit_config(depth=1, text_dim=384, frames=4),
                      data=DataConfig(dataset="shapes-video", size=32),
                      train=TrainConfig(output_dir=str(out), steps=steps, batch_size=2, lr=1e-3, warmup_steps=1,
                                        ema_decay=0.9, precision="fp32", checkpoint_every=2, log_every=1,
                                        eval_every=0, first_frame_prob=0.5),
                      sample=SampleConfig(steps=2, size=32), text_encoder="minilm")

    straight = train(config(tmp_path / "a", 4), progress=False)
    train(config(tmp_path / "b", 2), progress=False)
    resumed = train(config(tmp_path / "b", 4), resume=True, progress=False)
    assert straight["loss"] == resumed["loss"]
    a, _ = load_model(tmp_path / "a" / "model")
    b, _ = load_model(tmp_path / "b" / "model")
    assert isinstance(a, VideoDiT)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# -- engine: text-to-video and image-to-video ----------------------------------------------

class FakeEncoder:
    """Text states that depend on each prompt alone (its length seeds them)."""
    dim, max_length = 16, 8

    def encode(self, prompts, device=None):
        states = torch.stack([torch.randn(3, 16, generator=torch.Generator().manual_seed(len(p))) for p in prompts])
        return states, torch.ones(len(prompts), 3, dtype=torch.bool)


def video_request(prompts, seeds=0, **kw):
    base = dict(size=32, steps=3, guidance=2.0, frames=4)
    base.update(kw)
    return GenerationRequest(tuple(prompts), seeds, **base)


def test_same_seed_same_video_and_independent_of_the_batch():
    engine = Engine(make_video(), FakeEncoder())
    both = engine.generate(video_request(["a red circle moving up", "a blue square growing"]))
    again = engine.generate(video_request(["a red circle moving up", "a blue square growing"]))
    alone = engine.generate(video_request(["a blue square growing"], batch_size=1, seeds=(1,)))
    assert both.shape == (2, 4, 3, 32, 32) and torch.equal(both, again)
    assert torch.allclose(both[1], alone[0], atol=1e-5)


def test_image_to_video_keeps_the_given_first_frame_and_animates_from_it():
    engine = Engine(make_video(), FakeEncoder())
    first = torch.rand(2, 3, 32, 32) * 2 - 1
    out = engine.generate(video_request(["a", "b"], first_frames=first))
    assert torch.equal(out[:, 0], first)
    other = engine.generate(video_request(["a", "b"], first_frames=-first))
    assert not torch.allclose(out[:, 1:], other[:, 1:], atol=1e-4)  # the rest follows the given frame
    for sampler in ("heun", "dpm2m"):
        assert torch.equal(engine.generate(video_request(["a"], first_frames=first[:1], sampler=sampler))[:, 0],
                           first[:1])


def test_first_frame_model_holds_frame_zero_at_t_zero():
    seen = {}

    class Probe(torch.nn.Module):
        config = video_config()

        def forward(self, x, t, context, mask=None):
            seen["x"], seen["t"] = x, t
            return torch.ones_like(x)

    first = torch.full((1, 3, 32, 32), 0.5)
    v = FirstFrameModel(Probe(), first)(clip(b=2), torch.tensor([0.7, 0.7]), torch.zeros(2, 3, 16))
    assert torch.equal(seen["x"][:, 0], first.expand(2, -1, -1, -1))  # batch of 2 = cond + uncond
    assert seen["t"][:, 0].tolist() == [0.0, 0.0] and torch.allclose(seen["t"][:, 1:], torch.tensor(0.7))
    assert torch.count_nonzero(v[:, 0]) == 0 and torch.equal(v[:, 1:], torch.ones_like(v[:, 1:]))


def test_video_requests_are_checked_against_the_model():
    video, image = Engine(make_video(), FakeEncoder()), Engine(DiT(tiny_dit_config()).eval(), FakeEncoder())
    with pytest.raises(ValueError, match="image model; videos need a video model"):
        image.generate(video_request(["a"]))
    with pytest.raises(ValueError, match="video model"):
        video.generate(video_request(["a"], frames=0))
    with pytest.raises(ValueError, match="first_frames must be a tensor"):
        video_request(["a"], first_frames=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="frames"):
        video_request(["a"], frames=-1)
    with pytest.raises(ValueError, match="feature caches"):
        video.generate(video_request(["a"], cache="first-block:0.1"))


def test_more_frames_than_trained():
    """RoPE is relative: a model trained on 4 frames samples 6."""
    engine = Engine(make_video(), FakeEncoder())
    assert engine.generate(video_request(["a"], frames=6)).shape == (1, 6, 3, 32, 32)


def test_video_model_copies_keep_their_class():
    model = make_video()
    assert isinstance(build_model(dataclasses.replace(model.config)), VideoDiT)
