"""Block pruning: surgery is exact (pruning 0 blocks reproduces the model; a pruned model
equals the original with those blocks skipped), fitted linear maps recover a linear
block, selectors order blocks as documented, and the end-to-end recipe saves a
smaller self-describing model."""

from __future__ import annotations

import json

import pytest
import torch

import ditkit
from ditkit.core.model import DiT, LinearBlock
from ditkit.accel.prune import (check_k, fit_linear_maps, fixed_batches, prune_model, remove_blocks, removable_order,
                                skipping, solve_affine)
from ditkit.core.flow import interpolate
from conftest import save_perturbed_model
from conftest import assert_one_line_error, run_cli


def _inputs(model: DiT, seed: int = 0, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    x = torch.randn(batch, c.in_channels, 32, 32, generator=g)
    t = torch.rand(batch, generator=g)
    ctx = torch.randn(batch, 5, c.text_dim, generator=g)
    return x, t, ctx


@torch.no_grad()
def distance_to_teacher(student: DiT, teacher: DiT, encoder) -> float:
    """Mean squared difference of the two models' velocities on fixed held-out batches
    (the validation seed, not the recovery's training batches)."""
    student.eval()
    total = 0.0
    for x0, eps, t, ctx, mask in fixed_batches(encoder, "shapes", 32, 2, 8, 90_001, torch.device("cpu")):
        xt = interpolate(x0, eps, t)
        total += float(torch.mean((student(xt, t, ctx, mask) - teacher(xt, t, ctx, mask)) ** 2))
    return total / 2


@pytest.fixture(scope="module")
def shapes_model_dir(tmp_path_factory):
    from ditkit.core.config import SampleConfig

    return save_perturbed_model(tmp_path_factory.mktemp("prune") / "model", SampleConfig(steps=2, guidance=2.0, size=32))


def test_pruning_nothing_reproduces_the_model_exactly(make_dit):
    model = make_dit(perturb=True, depth=3)
    x, t, ctx = _inputs(model)
    same = remove_blocks(model, [])
    assert torch.equal(model(x, t, ctx), same(x, t, ctx))


def test_pruned_model_equals_original_with_blocks_skipped(make_dit):
    model = make_dit(perturb=True, depth=4)
    x, t, ctx = _inputs(model)
    pruned = remove_blocks(model, [1, 3])
    assert len(pruned.blocks) == 2 and pruned.config.depth == 2
    with skipping(model, [1, 3]):
        skipped = model(x, t, ctx)
    assert torch.equal(pruned(x, t, ctx), skipped)
    assert not torch.allclose(pruned(x, t, ctx), model(x, t, ctx))  # the blocks did something
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_linear_maps_recover_an_exactly_linear_block(shapes_model_dir):
    pipe = ditkit.load(shapes_model_dir)
    model = pipe.model
    w = model.config.width
    g = torch.Generator().manual_seed(3)
    a_true, b_true = torch.eye(w) + 0.1 * torch.randn(w, w, generator=g), 0.1 * torch.randn(w, generator=g)
    linear = remove_blocks(model, [2], {2: (a_true, b_true)})
    assert isinstance(linear.blocks[2], LinearBlock) and linear.config.linear_blocks == (2,)
    maps = fit_linear_maps(linear, pipe.text_encoder, [2], "shapes", 32, batches=1, batch_size=4, ridge=1e-9)
    a, b = maps[2]
    assert torch.allclose(a, a_true, atol=1e-3) and torch.allclose(b, b_true, atol=1e-3)
    # the replaced model round-trips through its config
    again = DiT(type(linear.config).from_dict(linear.config.to_dict()))
    again.load_state_dict(linear.state_dict())
    x, t, ctx = _inputs(linear)
    assert torch.equal(again(x, t, ctx), linear(x, t, ctx))


def test_selectors_order_and_bounds():
    scores = {"influence": [0.3, 0.1, 0.2], "linearity": [0.9, 0.99, 0.5], "ablation": [0.5, 0.0, 0.01]}
    assert removable_order(scores, "influence") == [1, 2, 0]
    assert removable_order(scores, "linearity") == [1, 0, 2]
    assert removable_order(scores, "ablation") == [1, 2, 0]
    with pytest.raises(ValueError, match="allowed"):
        removable_order(scores, "random")
    for bad in [-1, 3, 4, 1.5]:
        with pytest.raises(ValueError, match="0 <= K < depth"):
            check_k(bad, 3)


def test_prune_model_end_to_end_saves_smaller_model(shapes_model_dir, tmp_path):
    out = tmp_path / "pruned"
    pipe = ditkit.load(shapes_model_dir)
    res = prune_model(shapes_model_dir, 1, by="ablation", tune_steps=3, out_dir=out, batch_size=2, precision="fp32")
    assert res["depth_after"] == 3 and len(res["removed_blocks"]) == 1
    assert res["parameters_after"] < res["parameters_before"]
    # ablation removes the block whose removal costs least
    inc = res["scores"]["ablation"]
    assert res["removed_blocks"] == [min(range(4), key=lambda i: inc[i])]
    loaded = ditkit.load(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["depth"] == 3 and cfg["pruning"]["removed_blocks"] == res["removed_blocks"]
    assert cfg["data"]["dataset"] == "shapes"
    assert loaded.generate("a red circle", steps=2)[0].size == (32, 32)
    saved, tuned = loaded.model.state_dict(), res["model"].state_dict()
    assert saved.keys() == tuned.keys() and all(torch.equal(saved[k], tuned[k]) for k in saved)
    # recovery moved the pruned model towards the teacher on held-out data: closer than the
    # same blocks removed without tuning
    teacher = pipe.model.eval()
    untuned = remove_blocks(teacher, res["removed_blocks"])
    before = distance_to_teacher(untuned, teacher, pipe.text_encoder)
    after = distance_to_teacher(res["model"], teacher, pipe.text_encoder)
    assert 0 < after < before


def test_cli_prune_and_bad_input(shapes_model_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "p"
    code, stdout, _ = run_cli(["prune", shapes_model_dir, "--remove", 1, "--by", "ablation", "--tune-steps", 2,
                               "--batch-size", 2, "--distill-guidance", "--feature-weight", 0.5, "--precision", "fp32",
                               "-o", out], capsys)
    assert code == 0 and (out / "model.safetensors").exists()
    summary = json.loads(stdout)
    assert summary["depth_after"] == 3
    assert summary["recovery"]["feature_weight"] == 0.5 and summary["recovery"]["guidance"] == 2.0
    assert summary["recovery"]["lr_decay"] is True  # the default recipe decays the rate
    code, stdout, _ = run_cli(["prune", shapes_model_dir, "--remove", 1, "--tune-steps", 2, "--batch-size", 2,
                               "--constant-lr", "--precision", "fp32", "-o", tmp_path / "const"], capsys)
    assert code == 0 and json.loads(stdout)["recovery"]["lr_decay"] is False
    code, stdout, _ = run_cli(["prune", shapes_model_dir, "--blocks", "1", "--tune-steps", 2, "--batch-size", 2,
                               "--on-trajectory", 2, "--trajectory-above", 0.8, "--precision", "fp32",
                               "-o", tmp_path / "traj"], capsys)
    assert code == 0 and json.loads(stdout)["recovery"]["trajectory_images"] == 2
    assert json.loads(stdout)["recovery"]["trajectory_above"] == 0.8
    for args, needle in [
        (["--remove", 4], "0 <= K < depth"),
        (["--remove", -1], "--remove"),
        (["--remove", 1, "--by", "random"], "allowed"),
        (["--remove", 1, "--tune-steps", -5], "--tune-steps"),
        (["--remove", 1, "--batch-size", 0], "--batch-size"),
        (["--remove", 1, "--feature-weight", -1], "--feature-weight"),
        (["--remove", 1, "--precision", "fp16"], "allowed: fp32, bf16"),
        (["--remove", 1, "--on-trajectory", -1], "--on-trajectory"),
        (["--remove", 1, "--by", "benchmark", "--screen-per-category", 0], "--screen-per-category"),
        (["--remove", 1, "--on-trajectory", 4, "--trajectory-above", 1.5], "--trajectory-above"),
    ]:
        target = tmp_path / "bad"
        code, _, err = run_cli(["prune", shapes_model_dir, *args, "-o", target], capsys)
        assert_one_line_error(code, err, needle)
        assert not target.exists() and not (tmp_path / ".bad.ditkit-partial").exists()
    code, _, err = run_cli(["prune", shapes_model_dir, "--remove", 1, "-o", out], capsys)
    assert_one_line_error(code, err, "already exists")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, _, err = run_cli(["prune", shapes_model_dir, "--remove", 1, "--prompts", empty, "-o", tmp_path / "e"], capsys)
    assert_one_line_error(code, err, "no prompts")
    code, _, err = run_cli(["prune", tiny_model_dir, "--remove", 0, "-o", tmp_path / "nodata"], capsys)
    assert_one_line_error(code, err, "training data")


def test_benchmark_screen_is_greedy_and_joint(shapes_model_dir, monkeypatch):
    """Each round tries every block not yet chosen, together with those chosen, and keeps the
    best benchmark score (a stand-in benchmark here that rewards removing block 3, then 0)."""
    from ditkit.accel.prune import selection  # benchmark_screen looks benchmark_score up there

    pipe = ditkit.load(shapes_model_dir)
    teacher, enc = pipe.model.eval(), pipe.text_encoder
    maps = fit_linear_maps(teacher, enc, range(4), "shapes", 32, batches=1, batch_size=4)
    seen = []

    def fake_benchmark(model, encoder, dataset, sample, per_category, seed):
        replaced = set(model.config.linear_blocks)  # stand-ins keep the numbering
        seen.append(tuple(sorted(replaced)))
        return 1.0 * (3 in replaced) + 0.5 * (0 in replaced) - 0.25 * (1 in replaced)

    monkeypatch.setattr(selection, "benchmark_score", fake_benchmark)
    screen = selection.benchmark_screen(teacher, enc, 2, "shapes", 32, pipe.defaults, maps, per_category=1)
    assert screen["chosen"] == [0, 3]
    assert seen == [(0,), (1,), (2,), (3,), (0, 3), (1, 3), (2, 3)]
    assert [sorted(r) for r in screen["rounds"]] == [[0, 1, 2, 3], [0, 1, 2]]
    # Ties go to the smaller validation-loss increase: with a flat benchmark the first round
    # is single-block ablation's choice.
    monkeypatch.setattr(selection, "benchmark_score", lambda *a: 0.0)
    flat = selection.benchmark_screen(teacher, enc, 1, "shapes", 32, pipe.defaults)
    increase = selection.ablation_losses(teacher, enc, "shapes", 32)["increase"]
    assert flat["chosen"] == [min(range(4), key=increase.__getitem__)]
    with pytest.raises(ValueError, match="0 <= K < depth"):
        selection.benchmark_screen(teacher, enc, 4, "shapes", 32, pipe.defaults)
    with pytest.raises(ValueError, match="no benchmark for dataset"):
        monkeypatch.undo()
        selection.benchmark_score(teacher, enc, "cifar", pipe.defaults, 1, 1)


def test_cli_prune_by_benchmark(shapes_model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code, stdout, _ = run_cli(["prune", shapes_model_dir, "--remove", 1, "--by", "benchmark", "--replace-linear",
                               "--screen-per-category", 2, "--tune-steps", 1, "--batch-size", 2, "--precision", "fp32", "-o", out], capsys)
    assert code == 0
    summary = json.loads(stdout)
    screen = summary["scores"]["benchmark"]
    assert summary["by"] == "benchmark" and summary["removed_blocks"] == screen["chosen"]
    assert sorted(screen["rounds"][0]) == ["0", "1", "2", "3"] and screen["seed"] == 1
    assert screen["per_category"] == 2
    assert all(0.0 <= r["benchmark"] <= 1.0 for r in screen["rounds"][0].values())
    assert ditkit.load(out).model.config.linear_blocks == tuple(screen["chosen"])


def test_cli_analyze_ditkit_with_ablation_truth(shapes_model_dir, tmp_path, capsys):
    out = tmp_path / "an"
    code, stdout, _ = run_cli(["analyze", shapes_model_dir, "--timesteps", 2, "-o", out], capsys)
    assert code == 0
    res = json.loads(stdout)
    assert res["blocks"] == 4 and set(res["rank_correlations"]) >= {"influence", "linearity"}
    for name in ["analysis.json", "profile.png", "heatmap_linearity.png", "ablation.json", "ablation.png", "report.md"]:
        assert (out / name).stat().st_size > 0, name
    abl = json.loads((out / "ablation.json").read_text())
    assert len(abl["effects"]["loss"]["increase"]) == 4
    assert "Spearman" in (out / "report.md").read_text()


def test_cli_analyze_diffusers_folder(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                               out_channels=8, num_layers=3, cross_attention_dim=16,
                                               caption_channels=12, sample_size=16, patch_size=2, norm_num_groups=1)
    model.save_pretrained(tmp_path / "pixart")
    code, stdout, _ = run_cli(["analyze", tmp_path / "pixart", "--timesteps", 2, "-o", tmp_path / "out"], capsys)
    assert code == 0
    res = json.loads(stdout)
    assert res["blocks"] == 3 and all(0 <= v <= 1 for v in res["mean"]["linearity"])


def test_cli_analyze_bad_input(shapes_model_dir, tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    for args, needle in [
        ([shapes_model_dir, "--timesteps", 0], "--timesteps"),
        ([shapes_model_dir, "--prompts", empty], "no prompts"),
        ([tiny_model_dir], "--prompts"),
        ([tmp_path / "nowhere"], "nowhere"),
    ]:
        code, _, err = run_cli(["analyze", *args, "-o", tmp_path / "o"], capsys)
        assert_one_line_error(code, err, needle)


def test_prune_replace_linear_keeps_depth_and_loads(shapes_model_dir, tmp_path):
    out = tmp_path / "lin"
    res = prune_model(shapes_model_dir, 2, by="influence", replace_linear=True, tune_steps=1, out_dir=out,
                      batch_size=2, precision="fp32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["depth"] == 4 and sorted(cfg["model"]["linear_blocks"]) == res["removed_blocks"]
    assert res["parameters_after"] < res["parameters_before"]
    loaded = ditkit.load(out)
    assert sum(isinstance(b, LinearBlock) for b in loaded.model.blocks) == 2


def test_prune_given_blocks_removes_exactly_those(shapes_model_dir, tmp_path, capsys):
    out = tmp_path / "given"
    code, stdout, _ = run_cli(["prune", shapes_model_dir, "--blocks", "3,1", "--replace-linear", "--tune-steps", 0,
                               "--precision", "fp32", "-o", out], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["removed_blocks"] == [1, 3] and summary["by"] == "given"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["linear_blocks"] == [1, 3] and cfg["pruning"]["removed_blocks"] == [1, 3]
    # without stand-ins and without tuning, the result is the original with those blocks skipped
    plain = prune_model(shapes_model_dir, None, blocks=[2], tune_steps=0, precision="fp32")["model"]
    original = ditkit.load(shapes_model_dir).model.eval()
    x, t, ctx = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.8]), torch.randn(2, 5, original.config.text_dim)
    with torch.no_grad(), skipping(original, [2]):
        assert torch.equal(plain.eval()(x, t, ctx), original(x, t, ctx))
    for args, needle in [
        (["--blocks", "1,x"], "comma-separated"),
        (["--blocks", "1,1"], "distinct"),
        (["--blocks", "0,9"], "0..3"),
        (["--blocks", "1,2", "--remove", 1], "does not match"),
        ([], "--remove K"),
    ]:
        code, _, err = run_cli(["prune", shapes_model_dir, *args, "-o", tmp_path / "bad"], capsys)
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("by", ["influence", "ablation"])
def test_prune_diffusers_pixart_folder(by, tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    from ditkit.accel.prune import remove_diffusers_blocks

    torch.manual_seed(0)
    model = diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                               out_channels=8, num_layers=4, cross_attention_dim=16,
                                               caption_channels=12, sample_size=8, patch_size=2, norm_num_groups=1)
    model.save_pretrained(tmp_path / "pixart")
    # removing nothing is exact
    x = dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 3, 12),
             timestep=torch.tensor([500.0]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    with torch.no_grad():
        assert torch.equal(remove_diffusers_blocks(model, [])(**x)[0], model(**x)[0])
    out = tmp_path / "pruned"
    code, stdout, _ = run_cli(["prune", tmp_path / "pixart", "--remove", 1, "--by", by, "--tune-steps", 2,
                               "-o", out], capsys)
    assert code == 0
    res = json.loads(stdout)
    assert res["depth_after"] == 3
    again = diffusers.PixArtTransformer2DModel.from_pretrained(str(out), low_cpu_mem_usage=False)
    assert len(again.transformer_blocks) == 3 and again.config.num_layers == 3
    code, _, err = run_cli(["prune", tmp_path / "pixart", "--remove", 4, "-o", tmp_path / "bad"], capsys)
    assert_one_line_error(code, err, "0 <= K < depth")
    code, _, err = run_cli(["prune", tmp_path / "pixart", "--remove", 1, "--by", "benchmark", "-o", tmp_path / "bad"],
                           capsys)
    assert_one_line_error(code, err, "--by benchmark are for ditkit models")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("options", [
    {},
    {"guidance": 4.0},
    {"feature_weight": 1.0},
    {"guidance": 3.0, "feature_weight": 1.0, "times": "uniform", "lr_decay": True, "ema_decay": 0.9},
])
def test_recovery_of_an_exact_copy_is_a_fixed_point(shapes_model_dir, options):
    """Distilling a model into an identical copy: every loss term is zero, so no weight moves
    (AdamW without weight decay takes zero steps on zero gradients), with any recovery option."""
    import copy

    from ditkit.accel.prune import recovery_tune

    pipe = ditkit.load(shapes_model_dir)
    teacher = pipe.model.eval()
    student = copy.deepcopy(teacher)
    depth = len(teacher.blocks)
    log = recovery_tune(student, teacher, pipe.text_encoder, "shapes", 32, 3, batch_size=2, precision="fp32",
                        log_every=1, kept=list(range(depth)), **options)
    assert len(log) == 3
    for entry in log:
        assert entry["distill_loss"] == 0.0
        if options.get("feature_weight"):
            assert entry["feature_loss"] == 0.0
    for p, q in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(p, q)


def test_recovery_features_and_guidance_lower_the_loss_they_measure(shapes_model_dir):
    """With blocks removed, the recovery terms are positive and a few steps lower them."""
    from ditkit.accel.prune import recovery_tune

    pipe = ditkit.load(shapes_model_dir)
    teacher = pipe.model.eval()
    student = remove_blocks(teacher, [1])
    log = recovery_tune(student, teacher, pipe.text_encoder, "shapes", 32, 12, batch_size=4, precision="fp32",
                        lr=1e-3, log_every=1, kept=[0, 2, 3], guidance=3.0, feature_weight=1.0, seed=5)
    assert log[0]["feature_loss"] > 0 and log[0]["velocity_loss"] > 0
    first = sum(e["distill_loss"] for e in log[:3])
    last = sum(e["distill_loss"] for e in log[-3:])
    assert last < first


def test_recovery_bad_options(shapes_model_dir):
    from ditkit.accel.prune import recovery_tune

    pipe = ditkit.load(shapes_model_dir)
    teacher = pipe.model.eval()
    student = remove_blocks(teacher, [1])
    with pytest.raises(ValueError, match="allowed: uniform, logit-normal"):
        recovery_tune(student, teacher, pipe.text_encoder, "shapes", 32, 1, times="cosine")
    with pytest.raises(ValueError, match="kept"):
        recovery_tune(student, teacher, pipe.text_encoder, "shapes", 32, 1, feature_weight=1.0)
    with pytest.raises(ValueError, match="kept"):
        recovery_tune(student, teacher, pipe.text_encoder, "shapes", 32, 1, feature_weight=1.0, kept=[0, 1])


def test_recovery_on_policy_records_the_students_own_paths_on_a_schedule(shapes_model_dir):
    """A callable `trajectories` is called with the student being tuned (in eval mode, training
    restored after) at step 0 and every refresh_every steps, so later paths come from the
    tuned weights; the recorded states are the student's, not the teacher's."""
    from ditkit.accel.prune import recovery_tune, remove_blocks, teacher_trajectories

    pipe = ditkit.load(shapes_model_dir)
    teacher, enc = pipe.model.eval(), pipe.text_encoder
    student = remove_blocks(teacher, [0])
    calls = []

    def record(model):
        calls.append((model is student, model.training, [p.detach().clone() for p in model.parameters()]))
        return teacher_trajectories(model, enc, "shapes", 32, images=2, guidance=3.0, steps=4, batch_size=2, above=0.5)

    recovery_tune(student, teacher, enc, "shapes", 32, 5, batch_size=2, precision="fp32", trajectories=record,
                  refresh_every=2)
    assert len(calls) == 3 and all(is_student and training for is_student, training, _ in calls)  # steps 0, 2, 4
    assert any(not torch.equal(a, b) for a, b in zip(calls[0][2], calls[1][2]))  # re-recorded after tuning
    own = teacher_trajectories(remove_blocks(teacher, [0]), enc, "shapes", 32, images=2, guidance=3.0, steps=4,
                               batch_size=2, above=0.5)
    theirs = teacher_trajectories(teacher, enc, "shapes", 32, images=2, guidance=3.0, steps=4, batch_size=2, above=0.5)
    torch.testing.assert_close(own["x"][:2], theirs["x"][:2])  # the same starting noise ...
    assert not torch.allclose(own["x"][2:], theirs["x"][2:])  # ... then the student's own steps
    with pytest.raises(ValueError, match="refresh_every must be >= 0"):
        recovery_tune(student, teacher, enc, "shapes", 32, 1, trajectories=record, refresh_every=-1)


def test_teacher_trajectories_record_the_guided_euler_path(shapes_model_dir):
    """Every recorded state is the previous one plus one Euler step of the teacher's CFG
    velocity, at the sampler's times; distilling into an exact copy on them is a fixed point."""
    import copy

    from ditkit.core.guidance import guided_velocity
    from ditkit.accel.prune import recovery_tune, teacher_trajectories

    pipe = ditkit.load(shapes_model_dir)
    teacher, enc = pipe.model.eval(), pipe.text_encoder
    paths = teacher_trajectories(teacher, enc, "shapes", 32, images=3, guidance=3.0, steps=4, batch_size=2)
    assert paths["x"].shape == (12, teacher.config.in_channels, 32, 32) and len(paths["captions"]) == 12
    assert paths["t"][:2].tolist() == [1.0, 1.0] and paths["t"][2:4].tolist() == [0.75, 0.75]
    assert paths["captions"][:2] == paths["captions"][2:4]  # the same two images, one step later
    velocity = guided_velocity(teacher, enc.encode(paths["captions"][:2]), enc.encode(["", ""]), 3.0)
    with torch.no_grad():
        stepped = paths["x"][:2] + (0.75 - 1.0) * velocity(paths["x"][:2], 1.0)
    torch.testing.assert_close(paths["x"][2:4], stepped)
    student = copy.deepcopy(teacher)
    log = recovery_tune(student, teacher, enc, "shapes", 32, 2, batch_size=4, precision="fp32", log_every=1,
                        trajectories=paths)
    assert [e["distill_loss"] for e in log] == [0.0, 0.0]
    late = teacher_trajectories(teacher, enc, "shapes", 32, images=3, guidance=3.0, steps=4, batch_size=2, above=0.5)
    assert late["t"].tolist() == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 1.0, 0.75, 0.5]  # the same states, t < 0.5 left out
    torch.testing.assert_close(late["x"][:6], paths["x"][:6])
    with pytest.raises(ValueError, match="trajectory images must be >= 1"):
        teacher_trajectories(teacher, enc, "shapes", 32, images=0, guidance=3.0)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        teacher_trajectories(teacher, enc, "shapes", 32, images=1, guidance=3.0, above=1.0)


def test_solve_affine_recovers_an_exact_affine_map_and_fits_noise_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    a, b = torch.randn(6, 3, generator=g), torch.randn(3, generator=g)
    a_fit, b_fit = solve_affine(x, x @ a + b, ridge=0.0)
    assert torch.allclose(a_fit, a, atol=1e-5) and torch.allclose(b_fit, b, atol=1e-5)
    # with noise, the fit's residual is orthogonal to the inputs (normal equations)
    y = x @ a + b + 0.5 * torch.randn(400, 3, generator=g)
    a_fit, b_fit = solve_affine(x, y, ridge=0.0)
    resid = y - (x @ a_fit + b_fit)
    assert resid.abs().max() > 0.1 and (x.T @ resid).abs().max() < 1e-3 and resid.sum(0).abs().max() < 1e-3


def test_prune_package_still_exports_the_measurement_it_moved_to_analysis():
    """Block measurement lives in ditkit.analysis now; benchmarks/ and research/ import it from
    ditkit.accel.prune, which re-exports the very same objects."""
    import ditkit.accel.prune as prune
    from ditkit.analysis import ablation, calibration, standins, surgery

    moved = {ablation: ["EXPECTED_SIGN", "ablation_effects", "ablation_losses", "plot_ablation", "rank_correlations"],
             calibration: ["default_calibration_prompts", "fixed_batches", "validation_loss"],
             standins: ["block_io_rows", "fit_linear_maps", "solve_affine"],
             surgery: ["LinearMaps", "check_remove", "remove_blocks", "skipping"]}
    for module, names in moved.items():
        for name in names:
            assert getattr(prune, name) is getattr(module, name), name
    assert set(prune.__all__) <= set(dir(prune))
    assert not hasattr(prune, "_fixed_batches")
