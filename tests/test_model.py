"""DiT invariants: zero-init output, patchify round trip, any multiple-of-patch size,
padding mask, batch independence, input and config validation."""

from __future__ import annotations

import pytest
import torch

from ditkit.core.model import ATTENTION_KINDS, DiT, DiTConfig, patchify, unpatchify


def _inputs(b: int, c: int, h: int, w: int, text_dim: int = 16, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    t = torch.rand(b, generator=g)
    states = torch.randn(b, length, text_dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, states, mask


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("stem_channels", [4, 0])
def test_fresh_model_predicts_exactly_zero(make_dit, attention, stem_channels):
    model = make_dit(attention=attention, stem_channels=stem_channels)
    x, t, states, mask = _inputs(2, 3, 32, 32)
    with torch.no_grad():
        v = model(x * 5, t, states, mask)
    assert v.shape == (2, 3, 32, 32)
    assert torch.count_nonzero(v) == 0
    # Not zero because the model is dead: one perturbation of the weights makes it speak.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
        assert torch.count_nonzero(model(x, t, states, mask)) > 0


@pytest.mark.parametrize("c,h,w,p", [(3, 32, 32, 8), (4, 16, 24, 4), (1, 8, 40, 8), (3, 6, 6, 2)])
def test_patchify_unpatchify_round_trip_exactly(c, h, w, p):
    x = torch.randn(2, c, h, w)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (h // p) * (w // p), c * p * p)
    assert torch.equal(unpatchify(tokens, p, h, w), x)
    # and the other way round
    tok = torch.randn_like(tokens)
    assert torch.equal(patchify(unpatchify(tok, p, h, w), p), tok)


def test_patchify_tokens_are_row_major_patches():
    c, h, w, p = 3, 16, 24, 8
    x = torch.randn(2, c, h, w)
    tokens = patchify(x, p)
    cols = w // p
    for i in range(h // p):
        for j in range(cols):
            patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(2, -1)  # (C, p, p) flattened
            assert torch.equal(tokens[:, i * cols + j], patch)


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("stem_channels", [4, 0])
@pytest.mark.parametrize("hw", [(32, 32), (48, 48), (16, 40), (8, 8)])
def test_output_shape_at_sizes_other_than_training_size(make_dit, attention, stem_channels, hw):
    model = make_dit(perturb=True, attention=attention, stem_channels=stem_channels, sample_size=32)
    x, t, states, mask = _inputs(2, 3, *hw)
    with torch.no_grad():
        v = model(x, t, states, mask)
    assert v.shape == x.shape
    assert torch.isfinite(v).all()


def test_out_channels_differ_from_in_channels(make_dit):
    model = make_dit(perturb=True, in_channels=4, out_channels=6)
    x, t, states, mask = _inputs(1, 4, 16, 16)
    with torch.no_grad():
        assert model(x, t, states, mask).shape == (1, 6, 16, 16)


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_padding_mask_hides_masked_states(make_dit, attention):
    model = make_dit(perturb=True, attention=attention)
    x, t, states, _ = _inputs(2, 3, 16, 16, length=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 2:] = False
    mask[1, 4:] = False
    changed = states.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), states.shape[-1]) * 10
    with torch.no_grad():
        v = model(x, t, states, mask)
        v_changed = model(x, t, changed, mask)
        # Changing a real token does change the output (the test is not vacuous).
        real = states.clone()
        real[0, 0] += 1.0
        v_real = model(x, t, real, mask)
    torch.testing.assert_close(v_changed, v, rtol=0, atol=1e-6)
    assert (v_real[0] - v[0]).abs().max() > 1e-4
    torch.testing.assert_close(v_real[1], v[1], rtol=0, atol=1e-6)


def test_extra_padding_tokens_do_not_change_the_output(make_dit):
    """Padding a context to a longer length (as batching prompts does) leaves the output unchanged."""
    model = make_dit(perturb=True)
    x, t, states, _ = _inputs(2, 3, 16, 16, length=4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    padded = torch.cat([states, torch.randn(2, 3, states.shape[-1])], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, padded, padded_mask), model(x, t, states, mask), rtol=0, atol=1e-5)
        # No mask means every token is real.
        torch.testing.assert_close(model(x, t, states), model(x, t, states, mask), rtol=0, atol=0)


def test_batch_elements_are_independent_and_scalar_t_broadcasts(tiny_model):
    x, t, states, mask = _inputs(3, 3, 16, 16)
    t = torch.full((3,), 0.4)
    with torch.no_grad():
        full = tiny_model(x, t, states, mask)
        single = tiny_model(x[1:2], t[1:2], states[1:2], mask[1:2])
        scalar_t = tiny_model(x, torch.tensor([0.4]), states, mask)
    torch.testing.assert_close(single, full[1:2], rtol=0, atol=1e-5)
    torch.testing.assert_close(scalar_t, full, rtol=0, atol=0)


def test_output_depends_on_time_and_text(tiny_model):
    x, t, states, mask = _inputs(2, 3, 16, 16)
    with torch.no_grad():
        v = tiny_model(x, t, states, mask)
        assert (tiny_model(x, t + 0.3, states, mask) - v).abs().max() > 1e-4
        assert (tiny_model(x, t, states + 1, mask) - v).abs().max() > 1e-4


@pytest.mark.parametrize("hw", [(30, 32), (32, 20), (12, 12)])
def test_size_not_multiple_of_patch_raises(tiny_model, hw):
    x, t, states, mask = _inputs(1, 3, *hw)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        tiny_model(x, t, states, mask)


def test_wrong_channel_count_raises(tiny_model):
    x, t, states, mask = _inputs(1, 4, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_model(x, t, states, mask)


def test_unknown_attention_kind_lists_options():
    with pytest.raises(ValueError) as e:
        DiTConfig(attention="flash")
    msg = str(e.value)
    assert "'flash'" in msg and all(k in msg for k in ATTENTION_KINDS)


@pytest.mark.parametrize("kw,match", [
    (dict(width=30, heads=4), "divisible by model.heads"),
    (dict(width=24, heads=4), "divisible by 4"),
    (dict(depth=0), "model.depth must be >= 1"),
    (dict(patch_size=0), "model.patch_size"),
    (dict(stem_channels=-1), "stem_channels"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**kw)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = DiTConfig(width=64, depth=3, heads=4, attention="linear", stem_channels=0)
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError) as e:
        DiTConfig.from_dict({"widht": 64})
    assert "widht" in str(e.value) and "'width'" in str(e.value)


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_output_depends_on_patch_positions(make_dit, attention):
    """Without positions a patch-embedding transformer is permutation-equivariant over patches.
    RoPE (softmax) and Mix-FFN's depthwise conv (linear attention) must break that symmetry."""
    model = make_dit(perturb=True, attention=attention, stem_channels=0)
    x, t, states, mask = _inputs(1, 3, 32, 32)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    x_perm = unpatchify(patchify(x, 8)[:, perm], 8, 32, 32)
    with torch.no_grad():
        v = patchify(model(x, t, states, mask), 8)
        v_perm = patchify(model(x_perm, t, states, mask), 8)
    assert (v_perm - v[:, perm]).abs().max() > 1e-3
    assert isinstance(model, DiT)


def test_rope_is_the_pairwise_rotation_and_relative():
    from ditkit.core.model import apply_rope, rope_2d

    cos, sin = rope_2d(3, 4, 16, torch.device("cpu"))
    x = torch.randn(2, 5, 12, 16, generator=torch.Generator().manual_seed(0))
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, :8], sin[:, 8:]  # the plain angles
    reference = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    assert torch.equal(apply_rope(x, cos, sin), reference)  # bit for bit
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    # Relative: the same vector pair at grid offsets (0,0)->(1,1) and (1,2)->(2,3) has the same dot product.
    q, k = torch.randn(16), torch.randn(16)
    rot = lambda v, i: apply_rope(v[None], cos[i:i + 1], sin[i:i + 1])[0]  # noqa: E731
    assert torch.allclose(rot(q, 0) @ rot(k, 5), rot(q, 6) @ rot(k, 11), atol=1e-5)
