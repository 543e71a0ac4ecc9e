"""Block analysis: linearity (Razzhigaev et al. 2024) and block importance (SANA 1.5) per block.

The score tests pin down the definitions on maps whose answer is known; the
hook tests check, for ditkit's DiT and for tiny diffusers PixArt / SD3
transformers built locally, that what is recorded is the residual stream
(block i's output is block i+1's input); the MiniLM test checks the paper's
finding on a real encoder.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from ditkit.analysis import linearity as analysis
from ditkit.analysis.linearity import (SCORES, analyze_dit, analyze_diffusers, analyze_hf_encoder, analyze_hidden_states,
                             block_influence, block_output_states, capture_block_io, find_blocks, linearity_score,
                             plot_heatmap, residual_removed_linearity, save_analysis, update_norm_ratio)
from ditkit.core.config import SampleConfig


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("d_out", [16, 8])
def test_linearity_is_one_for_an_affine_map(d_out):
    x = randn(400, 16)
    y = x @ randn(16, d_out, seed=1) + randn(1, d_out, seed=2) * 5
    assert linearity_score(x, y) == pytest.approx(1.0, abs=1e-6)
    # float32 inputs are scored in float64
    assert linearity_score(x.float(), y.float()) == pytest.approx(1.0, abs=1e-6)


def test_linearity_survives_rank_deficient_inputs():
    """A dead (constant) feature and a duplicated one: the least-squares solver must not blow up."""
    x = randn(300, 8)
    x[:, 0] = 3.0
    x[:, 1] = x[:, 2]
    y = x @ randn(8, 8, seed=1)
    assert linearity_score(x, y) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("f", [lambda x: torch.sin(5 * x), lambda x: x**2])
def test_linearity_is_low_for_a_strongly_nonlinear_map(f):
    x = randn(2000, 8)
    assert linearity_score(x, f(x)) < 0.1  # ~ 8 / 2000 overfitting plus a small linear part


def test_linearity_is_invariant_to_scale_shift_and_basis_of_x():
    x = randn(500, 12)
    y = torch.tanh(x @ randn(12, 12, seed=1))  # partly linear
    s = linearity_score(x, y)
    assert 0.3 < s < 0.99
    assert linearity_score(7.0 * x, 0.01 * y) == pytest.approx(s, abs=1e-9)
    assert linearity_score(x + 3.0, y - 1.0) == pytest.approx(s, abs=1e-9)
    assert linearity_score(x @ randn(12, 12, seed=2), y) == pytest.approx(s, abs=1e-9)


def test_residual_removed_linearity_fits_the_update():
    x = randn(500, 12)
    y = x + 0.3 * torch.tanh(x @ randn(12, 12, seed=1))
    assert residual_removed_linearity(x, y) == pytest.approx(linearity_score(x, y - x), abs=1e-12)
    # the identity path makes the whole block look more linear than its update (the paper's point)
    assert residual_removed_linearity(x, y) < linearity_score(x, y)


def test_influence_and_norm_ratio():
    x = randn(100, 2)
    assert block_influence(x, x) == pytest.approx(0.0, abs=1e-12)
    assert update_norm_ratio(x, x) == pytest.approx(0.0, abs=1e-12)
    rotated = torch.stack([-x[:, 1], x[:, 0]], dim=1)  # every token turned by 90 degrees
    assert block_influence(x, rotated) == pytest.approx(1.0, abs=1e-12)
    assert block_influence(x, -x) == pytest.approx(2.0, abs=1e-12)
    assert block_influence(x, 3 * x) == pytest.approx(0.0, abs=1e-12)  # direction, not size
    assert update_norm_ratio(x, 3 * x) == pytest.approx(2.0, abs=1e-12)


def test_score_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        block_influence(randn(10, 4), randn(10, 5))
    with pytest.raises(ValueError, match=r"\(N_tokens, D\)"):
        linearity_score(randn(2, 10, 4), randn(2, 10, 4))
    with pytest.raises(ValueError, match="same number of tokens"):
        linearity_score(randn(10, 4), randn(11, 4))


# ----------------------------------------------------------------------------
# tiny diffusers peers (built locally, nothing downloaded)
# ----------------------------------------------------------------------------

def tiny_pixart():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                     num_layers=2, cross_attention_dim=16, caption_channels=12, sample_size=16,
                                     patch_size=2, norm_num_groups=1).eval()
    b = 2
    inputs = dict(hidden_states=randn(b, 4, 16, 16).float(), encoder_hidden_states=randn(b, 5, 12, seed=1).float(),
                  timestep=torch.tensor([500, 500]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return model, inputs, (b, 64, 16)  # 8 x 8 patches of width 2 heads x 8


def tiny_sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                  pooled_projection_dim=10, out_channels=4, pos_embed_max_size=16).eval()
    b = 2
    # As many text tokens as image tokens: the text stream then has the image stream's shape,
    # so only the right choice of tuple element passes the chaining check below.
    inputs = dict(hidden_states=randn(b, 4, 16, 16).float(), encoder_hidden_states=randn(b, 64, 12, seed=1).float(),
                  pooled_projections=randn(b, 10, seed=2).float(), timestep=torch.tensor([500, 500]))
    return model, inputs, (b, 64, 16)


@pytest.fixture
def peers():
    pytest.importorskip("diffusers")
    return {"pixart": tiny_pixart, "sd3": tiny_sd3}


def dit_case(make_dit, context):
    model = make_dit(perturb=True)
    states, mask = context(2, 5, 16, lengths=[5, 3])
    x = randn(2, 3, 32, 32).float()
    inputs = dict(x=x, t=torch.tensor([0.7, 0.3]), context=states, context_mask=mask)
    return model, inputs, (2, 16, 32)  # 4 x 4 patches of 8 px, width 32


# ----------------------------------------------------------------------------
# blocks and hooks
# ----------------------------------------------------------------------------

def test_find_blocks(make_dit, peers):
    dit = make_dit()
    assert find_blocks(dit) is dit.blocks and len(find_blocks(dit)) == 2
    for make in peers.values():
        model = make()[0]
        assert find_blocks(model) is model.transformer_blocks and len(model.transformer_blocks) == 2
    with pytest.raises(ValueError, match="model has no `blocks` or `transformer_blocks` list"):
        find_blocks(nn.Linear(4, 4))


def _check_capture(model, inputs, shape):
    with torch.no_grad():
        plain = model(**inputs)
        io = capture_block_io(model, lambda: (model(**inputs), model(**inputs)))
        after = model(**inputs)
    depth = len(find_blocks(model))
    assert len(io) == depth
    for per_block in io:
        assert len(per_block) == 2  # one (input, output) pair per forward
        for x, y in per_block:
            assert x.shape == y.shape == shape and x.dtype == y.dtype == torch.float32
            assert x.device.type == "cpu" and not x.requires_grad
    # The recorded stream chains: block i's output is block i+1's input (same forward).
    for i in range(depth - 1):
        for k in range(2):
            assert torch.equal(io[i][k][1], io[i + 1][k][0])
    # Hooks change nothing and are gone afterwards.
    first = lambda o: o[0] if isinstance(o, tuple) else getattr(o, "sample", o)  # noqa: E731
    assert torch.equal(first(plain), first(after))
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in find_blocks(model))


def test_capture_block_io_ditkit(make_dit, context):
    _check_capture(*dit_case(make_dit, context))


@pytest.mark.parametrize("name", ["pixart", "sd3"])
def test_capture_block_io_diffusers(peers, name):
    _check_capture(*peers[name]())


def test_sd3_blocks_take_the_image_stream(peers):
    """SD3's JointTransformerBlock returns (encoder_hidden_states, hidden_states); the recorded output
    must be the image stream: the transformer's final norm reads the last block's recorded output."""
    model, inputs, _ = peers["sd3"]()
    seen = {}
    handle = model.norm_out.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            io = capture_block_io(model, lambda: model(**inputs))
    finally:
        handle.remove()
    assert torch.equal(io[-1][0][1], seen["x"])


def test_block_output_rule():
    x = torch.zeros(2, 3, 4)
    y = torch.ones(2, 3, 4)
    assert block_output_states(y, x) is y
    assert block_output_states((torch.full((2, 7, 4), 2.0), y), x) is y  # (encoder_hidden_states, hidden_states)
    assert block_output_states((None, y), x) is y  # SD3's last block: no text stream
    with pytest.raises(ValueError, match="residual stream"):
        block_output_states(torch.ones(2, 5, 4), x)


def test_hooks_are_removed_on_error(make_dit, context):
    model, inputs, _ = dit_case(make_dit, context)

    def boom():
        model(**inputs)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture_block_io(model, boom)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)


# ----------------------------------------------------------------------------
# analyses
# ----------------------------------------------------------------------------

class FakeEncoder:
    """Per-prompt random states of width 16 (the tiny DiT's text_dim); "" gives zeros, like an empty caption."""

    def encode(self, prompts, device=None):
        states = torch.zeros(len(prompts), 4, 16)
        for i, p in enumerate(prompts):
            if p:
                states[i] = torch.randn(4, 16, generator=torch.Generator().manual_seed(sum(map(ord, p))))
        return states.to(device), torch.ones(len(prompts), 4, dtype=torch.bool, device=device)


def test_analyze_dit_shapes_and_ranges(tiny_model):
    prompts = ["a red circle", "two blue squares"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 images x 64 tokens for width 32: enough tokens, no warning
        r = analyze_dit(tiny_model, FakeEncoder(), prompts, num_timesteps=3, sample=SampleConfig(size=64))
    assert r["blocks"] == 2 and r["prompts"] == 2 and r["tokens"] == [128] * 3
    assert r["timesteps"][0] == 1.0 and len(r["timesteps"]) == 3 and r["timesteps"] == sorted(r["timesteps"], reverse=True)
    for name in SCORES:
        assert len(r[name]) == 2 and all(len(row) == 3 for row in r[name])
        assert r["mean"][name] == pytest.approx([sum(row) / 3 for row in r[name]])
    flat = lambda name: [v for row in r[name] for v in row]  # noqa: E731
    assert all(0.0 < v <= 1.0 for v in flat("linearity") + flat("linearity_residual_removed"))
    assert all(0.0 <= v <= 2.0 for v in flat("influence")) and all(v >= 0 for v in flat("norm_ratio"))
    json.dumps(r)  # plain floats and lists


def test_analyze_dit_scores_the_conditional_half(tiny_model):
    """At the first step every run sees the same noise: the scores of the CFG run (batch [cond, uncond])
    must equal those of the plain conditional run, so the unconditional half is left out."""
    kw = dict(num_timesteps=2, sample=SampleConfig(size=64))
    cfg = analyze_dit(tiny_model, FakeEncoder(), ["a red circle", "two blue squares"], guidance=4.0, **kw)
    cond = analyze_dit(tiny_model, FakeEncoder(), ["a red circle", "two blue squares"], guidance=1.0, **kw)
    for name in SCORES:
        for b in range(2):
            assert cfg[name][b][0] == pytest.approx(cond[name][b][0], abs=1e-5)
    assert cfg["linearity"] != cond["linearity"]  # later steps follow different trajectories


def test_analyze_dit_errors(tiny_model):
    with pytest.raises(ValueError, match="no prompts"):
        analyze_dit(tiny_model, FakeEncoder(), [])
    with pytest.raises(ValueError, match="num_timesteps must be >= 1"):
        analyze_dit(tiny_model, FakeEncoder(), ["a red circle"], num_timesteps=0)


def test_analyze_diffusers_over_timesteps(peers):
    model, inputs, _ = peers["pixart"]()
    r = analyze_diffusers(model, {**inputs, "timestep": [900.0, 500.0, torch.tensor([100, 100])]})
    assert r["kind"] == "diffusers" and r["blocks"] == 2 and r["timesteps"] == [900.0, 500.0, 100.0]
    assert all(len(r[name]) == 2 and all(len(row) == 3 for row in r[name]) for name in SCORES)
    single = analyze_diffusers(model, inputs)
    assert single["timesteps"] == [500.0]
    assert single["linearity"][0][0] == pytest.approx(r["linearity"][0][1], abs=1e-6)
    with pytest.raises(ValueError, match="timestep"):
        analyze_diffusers(model, {k: v for k, v in inputs.items() if k != "timestep"})


def test_analyze_hidden_states_pairs_and_mask():
    w = randn(8, 8, seed=1)
    h0 = randn(3, 50, 8)
    hs = [h0, h0 @ w, torch.tanh(h0 @ w * 3)]
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[1, 30:] = False
    r = analyze_hidden_states(hs, mask)
    assert r["blocks"] == 2 and r["tokens"] == 130
    assert r["linearity"][0] == pytest.approx(1.0, abs=1e-6) and r["linearity"][1] < 1.0
    # padding never reaches a score
    noisy = [h.clone() for h in hs]
    for h in noisy:
        h[1, 30:] = 1e3 * randn(20, 8, seed=9)
    assert analyze_hidden_states(noisy, mask)["linearity"] == pytest.approx(r["linearity"], abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        analyze_hidden_states(hs[:1])
    with pytest.raises(ValueError, match="mask must have shape"):
        analyze_hidden_states(hs, mask[:, :10])


# Real English prose, ~1700 MiniLM tokens: the fit has 384 coefficients per feature, so it needs
# several times as many tokens to mean anything (with 4 sentences, ~200 tokens, every score is ~1).
PARAGRAPHS = [
    "The river had been rising for three days before anyone in the village took it seriously. Old Martin, who "
    "kept the ferry, said he had seen it climb like this only once, the spring his father died, and that time "
    "the water reached the church steps. The children were sent to fetch sandbags from the barn, and the baker "
    "kept his ovens going through the night so that the men on the embankment would have something warm to eat.",
    "Photosynthesis converts light energy into chemical energy stored in sugar. In the chloroplasts of green "
    "plants, pigments absorb mostly red and blue light, which is why leaves look green to us. The light "
    "reactions split water and release oxygen, while the Calvin cycle uses the resulting energy carriers to fix "
    "carbon dioxide from the air into three-carbon molecules that the plant later assembles into glucose.",
    "When she opened the letter, the first thing she noticed was the handwriting, which she had not seen in "
    "twenty years. Her brother had always written in small, slanting capitals, as if every word were a secret "
    "he was reluctant to share. He wrote that he was living near the coast, that he had married late, and that "
    "he would like to see her before the summer was over, if she could forgive the long silence.",
    "A good loaf of bread needs only flour, water, salt and time. Mix the flour and water and let them rest for "
    "half an hour before adding the salt, so that the gluten can begin to form on its own. Fold the dough every "
    "thirty minutes for two hours, shape it gently without pressing out the air, and bake it in a very hot "
    "covered pot until the crust is deep brown and sounds hollow when tapped.",
    "The committee met on Tuesday to discuss the new budget, but the meeting ended without a decision. Several "
    "members argued that the library's opening hours should be extended, while others insisted that repairs to "
    "the school roof could not wait another winter. The chair proposed a compromise that would delay both "
    "projects by six months, which pleased nobody and was rejected by a narrow vote.",
    "Glaciers move because ice, under enough pressure, behaves like a very slow fluid. Snow that falls in the "
    "upper basin is compressed year after year into dense blue ice, and gravity pulls this mass downhill at a "
    "few centimetres to several metres a day. As the glacier grinds over the bedrock it carves deep valleys, "
    "carries boulders for great distances, and leaves behind long ridges of gravel when it finally retreats.",
    "The train was late again, so I stood on the platform watching the pigeons argue over a crust of bread. A "
    "man in a grey coat was reading a newspaper upside down, or so it seemed, until I realised it was printed in "
    "a language I did not recognise. When the train finally arrived, the doors opened onto a carriage so full "
    "that half of us decided to wait for the next one and walked back to the café instead.",
    "Vaccines train the immune system by showing it a harmless piece or copy of a pathogen. The body responds "
    "by producing antibodies and memory cells, so that if the real infection appears later, the defence can be "
    "mounted within hours instead of days. Because many people are protected at once, the disease also spreads "
    "less easily to those who cannot be vaccinated, such as newborn babies or patients with weak immunity.",
    "In the middle of the square stood a fountain that had not worked for as long as anyone could remember. "
    "Tourists still threw coins into its dry basin, and every autumn the town council promised to repair it. "
    "One morning in May the water suddenly began to flow, and by noon half the town had gathered to watch, "
    "although nobody ever found out who had fixed the pipes or why they had done it in secret.",
    "Chess players often say that the opening is about development, the middle game about plans and the endgame "
    "about technique. Beginners tend to move the same piece several times early on, leaving their king exposed "
    "and their rooks locked in the corners. Strong players instead bring out knights and bishops quickly, fight "
    "for the centre, and castle before launching any attack against the opponent's position.",
    "The lighthouse keeper kept a logbook in which he wrote down the weather, the ships he saw and the state of "
    "the lamp every four hours. Most entries are short and repetitive, but on stormy nights his handwriting "
    "grows larger and the sentences longer, as though writing were a way of keeping himself awake. The last "
    "entry, dated the night of the great storm, simply says that the light is burning and the sea is very high.",
    "Economists disagree about how much a rise in the minimum wage affects employment. Some studies find that "
    "small increases have almost no effect on the number of jobs, because employers absorb the cost through "
    "lower turnover and higher productivity. Others argue that the effect appears only over several years, as "
    "businesses slowly replace workers with machines or decide not to open new shops in poorer regions.",
    "My grandmother grew tomatoes on the balcony of a fourth-floor flat, in buckets she had collected from the "
    "market. Every evening she carried water up the stairs in two old kettles because the tap on the balcony had "
    "been broken since before I was born. Her tomatoes were small and misshapen, but she insisted they tasted "
    "better than anything sold in the shops, and after a while none of us dared to disagree with her.",
    "Bridges are designed to carry not only their own weight and the traffic they support, but also the forces "
    "of wind, temperature and, in some regions, earthquakes. Steel expands on hot days, so long spans rest on "
    "bearings that allow them to slide a few centimetres. Engineers also worry about resonance: a gentle but "
    "regular push, such as soldiers marching in step, can make a structure sway far more than a single heavy load.",
    "The museum reopened after two years of renovation, and the first visitors were surprised to find the "
    "paintings hung much lower than before, at the height of a child's eyes. The director explained that most "
    "people who visit on weekdays are school classes, and that adults can always bend down. Some critics called "
    "the decision a gimmick, but attendance doubled within a month and the complaints soon stopped.",
    "Honeybees communicate the location of food through a movement known as the waggle dance. A returning "
    "forager runs in a straight line while shaking her body, then circles back and repeats the run many times. "
    "The angle of the run relative to the vertical comb tells the other bees the direction of the flowers "
    "relative to the sun, and the duration of each waggle indicates how far away they are.",
    "He had promised himself that this year he would finally learn to swim, and so every Thursday after work "
    "he went to the public pool with a towel and a borrowed pair of goggles. The instructor was a patient woman "
    "in her seventies who had taught three generations of the town. By December he could cross the pool without "
    "stopping, and he celebrated by buying his own goggles, which he kept in the glove box of his car.",
    "Maps are never neutral pictures of the world. Every projection must distort something, whether the area "
    "of countries, their shapes or the distances between them, and the choice of which distortion to accept "
    "has often reflected political interests. The familiar rectangular map used in many classrooms, for example, "
    "makes Europe and North America look much larger than they really are compared with Africa.",
    "The storm knocked out the power shortly after dinner, and the whole family ended up sitting around the "
    "kitchen table with a single candle. Without the television or the internet, my father started telling "
    "stories about his childhood on the farm, some of which we had never heard. We stayed up until long after "
    "midnight, and when the lights came back on the next morning, everyone was a little disappointed.",
    "Sleep is not a passive state in which the brain simply switches off. During deep sleep, slow waves of "
    "electrical activity sweep across the cortex, and memories of the day appear to be replayed and "
    "strengthened. Dreams occur mostly in the rapid eye movement phase, when the body's muscles are almost "
    "completely relaxed, which is why people rarely act out what they are dreaming about.",
]


def test_minilm_is_nearly_linear_and_less_so_without_the_residual():
    """Razzhigaev et al.'s finding on the shipped all-MiniLM-L6-v2: consecutive layers are close to
    linear maps, and removing the residual (fitting X -> Y - X) lowers linearity on average."""
    r = analyze_hf_encoder(None, PARAGRAPHS)
    assert r["blocks"] == 6 and r["sentences"] == len(PARAGRAPHS)  # embeddings + 6 layers
    assert r["tokens"] > 4 * 384
    lin, rr = r["linearity"], r["linearity_residual_removed"]
    assert all(0.0 < v <= 1.0 for v in lin + rr)
    assert sum(rr) / 6 < sum(lin) / 6
    assert all(0.0 < v < 1.0 for v in r["influence"])


# ----------------------------------------------------------------------------
# plots and files
# ----------------------------------------------------------------------------

def fake_result(bins: int = 3, blocks: int = 4) -> dict:
    r = {"kind": "dit", "blocks": blocks, "timesteps": [1 - k / bins for k in range(bins)], "tokens": [100] * bins}
    for j, name in enumerate(SCORES):
        r[name] = [[(b + k + j) / (blocks + bins + 4) for k in range(bins)] for b in range(blocks)]
    r["mean"] = {name: [sum(row) / bins for row in r[name]] for name in SCORES}
    return r


def test_save_analysis_writes_json_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    r = fake_result()
    paths = save_analysis(r, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "analysis.json").read_text()) == r
    names = {"analysis.json", "profile.png"} | {f"heatmap_{s}.png" for s in SCORES}
    assert {p.name for p in paths.values()} == names
    for name in names - {"analysis.json"}:
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"


def test_plots_of_hidden_states_and_errors(tmp_path):
    pytest.importorskip("matplotlib")
    h = randn(2, 40, 4)
    r = analyze_hidden_states([h, torch.tanh(h), torch.tanh(2 * h)])
    paths = save_analysis(r, tmp_path)
    assert set(paths) == {"json", "profile"}  # no time bins, no heat maps
    with pytest.raises(ValueError, match="no time bins"):
        plot_heatmap(r, "linearity", tmp_path / "h.png")
    with pytest.raises(ValueError, match="allowed: linearity"):
        plot_heatmap(fake_result(), "cosine", tmp_path / "h.png")
    assert not math.isnan(analysis.linearity_score(h.reshape(-1, 4), h.reshape(-1, 4)))


# ----------------------------------------------------------------------------
# analyze_model: `ditkit analyze` as a library call
# ----------------------------------------------------------------------------

def test_analyze_model_is_what_the_cli_prints_and_analyze_dit_measures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import ditkit
    from ditkit.analysis.calibration import default_calibration_prompts
    from ditkit.analysis.report import analyze_model
    from conftest import run_cli, save_perturbed_model

    folder = save_perturbed_model(tmp_path / "m", SampleConfig(steps=2, guidance=2.0, size=32), depth=2)
    summary = analyze_model(folder, tmp_path / "lib", num_timesteps=2, ablation=False)
    code, stdout, _ = run_cli(["analyze", folder, "--timesteps", 2, "--no-ablation", "-o", tmp_path / "cli"], capsys)
    assert code == 0
    printed = json.loads(stdout)
    assert printed == {**summary, "output": str(tmp_path / "cli")}
    assert (json.loads((tmp_path / "lib" / "analysis.json").read_text())
            == json.loads((tmp_path / "cli" / "analysis.json").read_text()))
    # the default calibration prompts are the dataset's, sampled at the model's own settings
    pipe = ditkit.load(folder)
    direct = analyze_dit(pipe.model, pipe.text_encoder, default_calibration_prompts("shapes"), 2, sample=pipe.defaults)
    assert summary["mean"] == direct["mean"] and summary["blocks"] == 2
    report = (tmp_path / "lib" / "report.md").read_text()
    assert "analyze_model(" in report and "Ablation truth" not in report
    assert not (tmp_path / "lib" / "ablation.json").exists()


def test_analyze_model_checks_its_inputs_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    from ditkit.analysis import report

    def no_work(*args, **kwargs):
        raise AssertionError("the analysis ran before the inputs were checked")

    monkeypatch.setattr(report, "analyze_dit", no_work)
    out = tmp_path / "out"
    afile = tmp_path / "a.txt"
    afile.write_text("keep")
    for kwargs, needle in [
        (dict(prompts=["a red circle"]), "ablation truth needs the model's training data"),  # tiny: no dataset
        (dict(ablation=False), "no default calibration prompts"),
        (dict(num_timesteps=0), "num_timesteps must be >= 1"),
        (dict(ablation_eval=-1), "ablation_eval"),
    ]:
        with pytest.raises(ValueError, match=needle):
            report.analyze_model(tiny_model_dir, out, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match="is a file"):
        report.analyze_model(tiny_model_dir, afile, ablation=False)
    with pytest.raises(ValueError, match="parent folder"):
        report.analyze_model(tiny_model_dir, tmp_path / "no" / "out", ablation=False)
    assert afile.read_text() == "keep"


def test_cli_analyze_output_must_be_a_folder(tiny_model_dir, tmp_path, capsys):
    from conftest import assert_one_line_error, run_cli

    afile = tmp_path / "a.txt"
    afile.write_text("keep")
    code, _, err = run_cli(["analyze", tiny_model_dir, "--no-ablation", "-o", afile], capsys)
    assert_one_line_error(code, err, "-o/--output", "must be a folder")
    assert "--out-dir" not in err and afile.read_text() == "keep"
    code, _, err = run_cli(["analyze", tiny_model_dir, "--no-ablation", "-o", tmp_path / "no" / "out"], capsys)
    assert_one_line_error(code, err, "parent folder of -o/--output")


def test_cli_cache_calibrate_checks_the_output_folder_before_the_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from ditkit.api import Pipeline
    from conftest import assert_one_line_error, run_cli

    def no_work(*args, **kwargs):
        raise AssertionError("calibrated before checking where the schedule goes")

    monkeypatch.setattr(Pipeline, "calibrate_cache", no_work)
    code, _, err = run_cli(["cache-calibrate", tiny_model_dir, "--steps", 2, "-o", tmp_path / "nodir" / "s.json"], capsys)
    assert_one_line_error(code, err, "parent folder of -o/--output", "nodir")
    assert ".tmp" not in err and not (tmp_path / "nodir").exists()


def test_analyze_diffusers_folder_without_diffusers_log_noise(tmp_path):
    """diffusers logs the config keys it ignores while loading; `ditkit analyze` keeps it quiet
    (and leaves diffusers' own verbosity as it found it)."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("matplotlib")
    import logging

    from diffusers.utils import logging as diffusers_logging

    from ditkit.analysis.report import analyze_model

    model = diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                               out_channels=8, num_layers=2, cross_attention_dim=16,
                                               caption_channels=12, sample_size=8, patch_size=2, norm_num_groups=1)
    model.save_pretrained(tmp_path / "pixart")
    cfg_path = tmp_path / "pixart" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "a_key_from_elsewhere": 1}))

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")  # diffusers' library root: its loggers end here
    diffusers_logger.addHandler(handler)
    level = diffusers_logging.get_verbosity()
    try:
        diffusers_logging.set_verbosity_warning()
        # the control: loaded directly, this folder makes diffusers warn
        diffusers.PixArtTransformer2DModel.from_pretrained(str(tmp_path / "pixart"), low_cpu_mem_usage=False)
        assert any("a_key_from_elsewhere" in r.getMessage() for r in records)
        records.clear()
        summary = analyze_model(tmp_path / "pixart", tmp_path / "out", num_timesteps=2)
        assert summary["blocks"] == 2
        assert [r.getMessage() for r in records] == []
        assert diffusers_logging.get_verbosity() == logging.WARNING
    finally:
        diffusers_logger.removeHandler(handler)
        diffusers_logging.set_verbosity(level)
