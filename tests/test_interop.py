"""ditkit <-> diffusers (issue 4): a pixart-configured DiT is diffusers' PixArtTransformer2DModel.

The converter is exact: round trips give bit-identical state dicts, the two
models agree to float rounding on the same inputs (padding mask included), and
sampling with ditkit's pipeline equals a hand-written diffusers loop with
FlowMatchEulerDiscreteScheduler at the same steps and guidance. Tiny random
models, built locally; nothing is downloaded.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from ditkit.cli.main import main
from ditkit.core.config import SampleConfig
from ditkit.core.model import PIXART, DiT, DiTConfig, sincos_2d, timestep_embedding
from ditkit.engine import generate_tensor, initial_noise
from ditkit.core.sampling import timesteps

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel  # noqa: E402
from diffusers.models.embeddings import Timesteps, get_2d_sincos_pos_embed  # noqa: E402

from ditkit.interop.diffusers import (  # noqa: E402
    DIFFUSERS_WEIGHTS, convert_folder, from_diffusers, load_diffusers, save_diffusers, to_diffusers,
)
from ditkit.interop.diffusers_folder import load_diffusers_transformer  # noqa: E402

TEXT_DIM = 16


def pixart_dit(seed: int = 0, **overrides) -> DiT:
    """A tiny pixart DiT with every weight moved off its init (zero-init layers would hide mapping errors)."""
    kw = dict(PIXART, in_channels=3, out_channels=3, patch_size=4, width=32, depth=2, heads=2, mlp_ratio=4.0,
              text_dim=TEXT_DIM, sample_size=16)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = DiT(DiTConfig(**kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def call_pixart(transformer, x, t, states, mask):
    """diffusers' calling convention: timestep in [0, 1000], mask 1 = real token."""
    return transformer(x, encoder_hidden_states=states, timestep=t * 1000, encoder_attention_mask=mask.float(),
                       return_dict=False)[0]


def text(batch: int, length: int, lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, length, TEXT_DIM, generator=g)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    return states, mask


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------
# conventions
# ----------------------------------------------------------------------------

def test_timestep_embedding_is_pixarts_timesteps_on_t_times_1000():
    t = torch.tensor([0.0, 1e-3, 0.25, 0.5, 0.999, 1.0])
    ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t * 1000)
    torch.testing.assert_close(timestep_embedding(t, 256), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grid,base,scale", [((4, 4), 4, 1.0), ((6, 3), 4, 1.0), ((5, 7), 8, 2.0), ((2, 2), 4, 0.5)])
def test_sincos_table_is_pixarts(grid, base, scale):
    ref = get_2d_sincos_pos_embed(32, grid, base_size=base, interpolation_scale=scale, output_type="pt").float()
    assert torch.equal(sincos_2d(*grid, 32, base, scale), ref)


def test_new_options_default_to_todays_model():
    cfg = DiTConfig()
    assert (cfg.positions, cfg.pos_interpolation, cfg.cross_norm, cfg.pooled_text) == ("rope", 1.0, True, True)
    names = set(DiT(DiTConfig(width=32, heads=2, depth=1)).state_dict())
    assert {"pooled_proj.weight", "blocks.0.norm2.weight"} <= names
    pix = set(pixart_dit().state_dict())
    assert not any("pooled_proj" in n or "norm2" in n for n in pix)


@pytest.mark.parametrize("kw,needle", [(dict(positions="alibi"), "allowed: rope, sincos, rope\\+abs"),
                                       (dict(pos_interpolation=0.0), "pos_interpolation must be > 0"),
                                       (dict(positions="sincos", width=30, heads=3), "divisible by 4")])
def test_bad_position_options_raise(kw, needle):
    with pytest.raises(ValueError, match=needle):
        DiTConfig(**{**dict(width=32, heads=2), **kw})


def test_sincos_allows_head_dims_rope_cannot():
    DiTConfig(**PIXART, width=24, heads=4)  # head dim 6: fine without RoPE
    with pytest.raises(ValueError, match="RoPE"):
        DiTConfig(width=24, heads=4)


# ----------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------

def test_round_trip_ditkit_diffusers_ditkit_is_identical():
    model = pixart_dit()
    back = from_diffusers(to_diffusers(model))
    assert back.config == model.config
    assert_same_state(model.state_dict(), back.state_dict())


def test_round_trip_diffusers_ditkit_diffusers_is_identical():
    torch.manual_seed(0)
    peer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                    num_layers=2, cross_attention_dim=32, sample_size=16, patch_size=2,
                                    caption_channels=TEXT_DIM, use_additional_conditions=False).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = from_diffusers(peer)
    assert (model.config.in_channels, model.config.out_channels, model.config.pos_interpolation) == (4, 8, 1.0)
    assert_same_state(peer.state_dict(), to_diffusers(model).state_dict())


@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_forward_outputs_agree_with_a_padding_mask(size):
    """Training size (diffusers' cached table) and another size (its recomputed, stretched table)."""
    model = pixart_dit()
    peer = to_diffusers(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, *size, generator=g)
    t = torch.tensor([0.05, 0.5, 0.97])
    states, mask = text(3, 6, [6, 2, 4])
    with torch.no_grad():
        ours, ref = model(x, t, states, mask), call_pixart(peer, x, t, states, mask)
    assert ours.abs().mean() > 0.1  # a model that says something
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # The padding really is masked: changing padded states changes nothing on either side.
    states2 = states.clone()
    states2[~mask] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, states2, mask), ours, rtol=0, atol=1e-6)
        torch.testing.assert_close(call_pixart(peer, x, t, states2, mask), ref, rtol=0, atol=1e-6)


class FakeEncoder:
    """Deterministic per-prompt text states of varying length (an empty prompt gets 2 tokens),
    padded to the longest prompt of the batch: the TextEncoder.encode contract."""

    def encode(self, prompts, device):
        rows = []
        for p in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            rows.append(torch.randn(2 + len(p) % 5, TEXT_DIM, generator=g))
        length = max(r.shape[0] for r in rows)
        states = torch.zeros(len(rows), length, TEXT_DIM)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, :len(r)], mask[i, :len(r)] = r, True
        return states.to(device), mask.to(device)


def diffusers_sample(transformer, encoder, prompts, noise, steps: int, guidance: float, shift: float):
    """The PixArt pipeline's denoising loop, by hand: [uncond, cond] in one batch, CFG on the
    predicted velocity, FlowMatchEulerDiscreteScheduler steps on ditkit's grid of sigmas."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist())
    torch.testing.assert_close(scheduler.sigmas.double(), timesteps(steps, shift), rtol=0, atol=1e-6)
    n = len(prompts)
    states, mask = encoder.encode([""] * n + list(prompts), "cpu")
    x = noise.clone()
    for t in scheduler.timesteps:
        with torch.no_grad():
            v = transformer(torch.cat([x, x]), encoder_hidden_states=states, timestep=t.expand(2 * n),
                            encoder_attention_mask=mask.float(), return_dict=False)[0]
        v_uncond, v_text = v.chunk(2)
        x = scheduler.step(v_uncond + guidance * (v_text - v_uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps,guidance,shift", [(6, 3.0, 1.0), (4, 4.5, 3.0)])
def test_sampling_matches_diffusers_scheduler_loop(steps, guidance, shift):
    model = pixart_dit()
    prompts = ["a red circle", "two blue squares left of a star"]
    sample = SampleConfig(sampler="euler", steps=steps, guidance=guidance, shift=shift, size=16)
    ours = generate_tensor(model, FakeEncoder(), prompts, sample, seed=7)
    noise = initial_noise(len(prompts), (3, 16, 16), 7, torch.device("cpu"))
    ref = diffusers_sample(to_diffusers(model), FakeEncoder(), prompts, noise, steps, guidance, shift)
    assert (ours - noise).abs().mean() > 0.1  # the sampler moved the noise
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw,needle", [
    (dict(stem_channels=16), "stem_channels=16 has no PixArt equivalent"),
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(attention="linear"), "attention='linear'"),
    (dict(positions="rope"), "positions='rope'"),
    (dict(cross_norm=True), "cross_norm=True"),
    (dict(pooled_text=True), "pooled_text=True"),
    (dict(cond_channels=3), "cond_channels=3"),
    (dict(linear_blocks=(1,)), "linear_blocks=[1]"),
    (dict(mlp_ratio=2.0), "mlp_ratio=2.0"),
])
def test_incompatible_configs_are_refused_by_name(kw, needle):
    model = pixart_dit(**kw)
    with pytest.raises(ValueError) as e:
        to_diffusers(model)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert msg.count("has no PixArt equivalent") == 1  # only the offending option is named


def test_default_model_lists_every_offending_option():
    with pytest.raises(ValueError) as e:
        to_diffusers(DiT(DiTConfig(width=32, heads=2, depth=1)))
    for needle in ("stem_channels=16", "qk_norm=True", "positions='rope'", "cross_norm=True", "pooled_text=True"):
        assert needle in str(e.value)


def test_diffusers_micro_conditions_are_refused():
    peer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=1,
                                    cross_attention_dim=32, sample_size=16, patch_size=2, caption_channels=TEXT_DIM,
                                    use_additional_conditions=True)
    with pytest.raises(ValueError, match="use_additional_conditions=True"):
        from_diffusers(peer)
    with pytest.raises(ValueError, match="allowed: PixArtTransformer2DModel"):
        from_diffusers(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------
# folders and the CLI
# ----------------------------------------------------------------------------

def test_save_and_load_diffusers_folder(tmp_path):
    model = pixart_dit()
    folder = save_diffusers(model, tmp_path / "d")
    assert (folder / DIFFUSERS_WEIGHTS).is_file() and not list(folder.glob("*.bin"))
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "PixArtTransformer2DModel"
    assert_same_state(model.state_dict(), from_diffusers(load_diffusers(folder)).state_dict())


def test_pickle_only_folder_is_refused(tmp_path):
    folder = save_diffusers(pixart_dit(), tmp_path / "d")
    (folder / DIFFUSERS_WEIGHTS).rename(folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds only pickled weights \(diffusion_pytorch_model.bin\); convert it to safetensors"):
        load_diffusers(folder)
    with pytest.raises(ValueError, match=r"holds only pickled weights \(diffusion_pytorch_model.bin\)"):
        load_diffusers_transformer(folder)
    with pytest.raises(ValueError, match="already exists"):
        convert_folder(folder, "ditkit", folder)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, needle):
    lines = [line for line in err.strip().splitlines() if not line.startswith("ditkit: warning")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ditkit: error:"), err
    assert needle in lines[0], lines[0]


def test_cli_convert_round_trip(tmp_path, capsys):
    from ditkit.core.checkpoint import load_model, save_model

    model = pixart_dit()
    save_model(tmp_path / "m", model, SampleConfig(steps=2, size=16))
    code, out, err = run_cli(["convert", tmp_path / "m", "--to", "diffusers", "-o", tmp_path / "d"], capsys)
    assert code == 0, err
    assert json.loads(out)["output"] == str(tmp_path / "d")
    assert (tmp_path / "d" / DIFFUSERS_WEIGHTS).is_file()
    code, _, err = run_cli(["convert", tmp_path / "d", "--to", "ditkit", "-o", tmp_path / "m2"], capsys)
    assert code == 0, err
    back, cfg = load_model(tmp_path / "m2")
    assert cfg["converted_from"] == "diffusers"
    assert_same_state(model.state_dict(), back.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m", "m2"]  # no temp folders left


def test_cli_convert_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "d"
    code, _, err = run_cli(["convert", tiny_model_dir, "--to", "diffusers", "-o", out], capsys)
    assert_one_line_error(code, err, "stem_channels=4 has no PixArt equivalent")
    assert list(tmp_path.iterdir()) == []  # no output, no partial folder
    code, _, err = run_cli(["convert", tiny_model_dir, "--to", "ditkit", "-o", out], capsys)
    assert_one_line_error(code, err, "is not a diffusers transformer folder")
    code, _, err = run_cli(["convert", tmp_path / "missing", "--to", "diffusers", "-o", out], capsys)
    assert_one_line_error(code, err, "unknown model")
    code, _, err = run_cli(["convert", tiny_model_dir, "--to", "onnx", "-o", out], capsys)
    assert_one_line_error(code, err, "invalid choice")
    assert list(tmp_path.iterdir()) == []
