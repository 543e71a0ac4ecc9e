"""ControlNet-Transformer (core/control.py), condition maps (core/control_maps.py), control in the
engine, the API and the CLI, and train.control: invariants on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (assert_one_line_error, make_context, perturb_, run_cli, save_perturbed_model, save_tiny_control,
                      tiny_dit_config, tiny_folder, tiny_train_config)
from PIL import Image

from ditkit.core.control import (AppliedControl, ControlledDiT, ControlNet, check_scale, control_runner,
                                 load_control, read_control_info, save_control)
from ditkit.core.control_maps import (BOX_LEVELS, CONDITIONS, condition_map, draw_boxes, edges_map, map_image,
                                      maps_tensor, scene_map, scene_masks)
from ditkit.core.lora import base_info
from ditkit.core.model import DiT
from ditkit.data.shapes import render, sample_scene
from ditkit.engine.control import parse_control_spec


def _inputs(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.rand(batch, generator=g)
    states, mask = make_context(batch, 5, 16, seed)
    cond = maps_tensor([scene_map("edges", sample_scene(np.random.default_rng(seed + i), size), size)
                        for i in range(batch)])
    return x, t, states, mask, cond


def _base(seed=0) -> DiT:
    torch.manual_seed(seed)
    return perturb_(DiT(tiny_dit_config(depth=3)).eval(), seed=seed + 1)


def _run(base, controls, x, t, states, mask):
    with torch.no_grad():
        return base(x, t, states, mask, block_runner=control_runner(controls))


# -- the model --------------------------------------------------------------------------------

def test_fresh_control_leaves_the_base_bit_identical():
    base = _base()
    net = ControlNet.from_base(base, "edges", 2)
    x, t, states, mask, cond = _inputs()
    with torch.no_grad():
        plain = base(x, t, states, mask)
    assert torch.equal(_run(base, [AppliedControl(net, cond, 1.0)], x, t, states, mask), plain)
    # the copies start as the base's own first blocks
    assert all(torch.equal(a, b) for a, b in zip(net.blocks[0].state_dict().values(), base.blocks[0].state_dict().values()))


def test_scale_zero_is_the_base_and_scales_add_up():
    base = _base()
    net = perturb_(ControlNet.from_base(base, "edges", 2), std=0.05, seed=5)
    x, t, states, mask, cond = _inputs()
    with torch.no_grad():
        plain = base(x, t, states, mask)
    assert torch.equal(_run(base, [AppliedControl(net, cond, 0.0)], x, t, states, mask), plain)
    one = _run(base, [AppliedControl(net, cond, 1.0)], x, t, states, mask)
    assert (one - plain).abs().max() > 1e-3  # the control changes the output
    # two controls add their scaled residuals: r + r is 2r exactly
    twice = _run(base, [AppliedControl(net, cond, 1.0), AppliedControl(net, cond, 1.0)], x, t, states, mask)
    double = _run(base, [AppliedControl(net, cond, 2.0)], x, t, states, mask)
    assert torch.equal(twice, double)


def test_condition_batch_repeats_for_guidance():
    base = _base()
    net = perturb_(ControlNet.from_base(base, "edges", 1), std=0.05, seed=5)
    x, t, states, mask, cond = _inputs(batch=1)
    x2, t2 = torch.cat([x, x]), torch.cat([t, t])
    s2, m2 = torch.cat([states, states]), torch.cat([mask, mask])
    out = _run(base, [AppliedControl(net, cond, 1.0)], x2, t2, s2, m2)  # one map for a cond + uncond batch
    assert torch.allclose(out[0], out[1], atol=1e-6)


def test_gradients_reach_only_the_control():
    base = _base()
    model = ControlledDiT(base, perturb_(ControlNet.from_base(base, "boxes", 2), std=0.05, seed=5))
    x, t, states, mask, _ = _inputs()
    cond = maps_tensor([draw_boxes([(2, 2, 12, 12)], 32)] * 2)
    model(x, t, states, mask, control=cond).pow(2).mean().backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.control.parameters())


def test_control_rejects_video_and_conditioned_bases():
    with pytest.raises(ValueError, match="video model"):
        ControlNet(tiny_dit_config(frames=4), "edges")
    with pytest.raises(ValueError, match="conditioning image"):
        ControlNet(tiny_dit_config(cond_channels=4), "edges")
    with pytest.raises(ValueError, match="edges, boxes, seg"):
        ControlNet(tiny_dit_config(), "depth")
    with pytest.raises(ValueError, match="between 1 and the base's depth 2"):
        ControlNet(tiny_dit_config(depth=2), "edges", 3)
    assert ControlNet(tiny_dit_config(depth=6), "edges").num_blocks == 3  # half the depth by default


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "x", True])
def test_bad_scales(value):
    with pytest.raises(ValueError, match="control scale"):
        check_scale(value)


# -- files ------------------------------------------------------------------------------------

def test_save_load_round_trip_and_base_record(tmp_path):
    base = _base()
    net = perturb_(ControlNet.from_base(base, "seg", 2), std=0.05, seed=5)
    save_control(tmp_path / "c", net, base_info(base, "tiny-base"), dtype=torch.float16)
    loaded, info = load_control(tmp_path / "c")
    assert info.condition == "seg" and info.blocks == 2 and info.base.name == "tiny-base"
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k


def test_bad_control_folders(tmp_path):
    base = _base()
    folder = save_control(tmp_path / "c", ControlNet.from_base(base, "edges", 1), base_info(base, "b"))
    (folder / "control.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="control.safetensors is corrupt"):
        load_control(folder)
    (folder / "control.safetensors").unlink()
    with pytest.raises(ValueError, match="control.safetensors are missing"):
        load_control(folder)
    cfg = json.loads((folder / "control_config.json").read_text())
    (folder / "control_config.json").write_text(json.dumps({**cfg, "condition": "depth"}))
    with pytest.raises(ValueError, match="control_config.json is invalid"):
        read_control_info(folder)
    with pytest.raises(ValueError, match="not a control model folder"):
        read_control_info(tmp_path)
    with pytest.raises(ValueError, match="unknown control model"):
        read_control_info("no-such-control")


# -- condition maps ---------------------------------------------------------------------------

def test_maps_follow_the_scene_geometry():
    for seed in range(20):
        scene = sample_scene(np.random.default_rng(seed), 64)
        image = render(scene.objects, 64)
        masks = scene_masks(scene, 64)
        union = np.logical_or.reduce(masks)
        # silhouettes: exactly the rendered objects, from the scene and from the image alike
        assert np.array_equal(scene_map("seg", scene, 64) > 0, union)
        assert np.array_equal(np.asarray(image).min(-1) < 255, union)
        assert np.array_equal(condition_map("seg", image) > 0, union)
        # boxes: box k (caption order) filled with level k
        boxes = scene_map("boxes", scene, 64)
        for k, o in enumerate(scene.objects):
            assert (boxes[o.y0:o.y1, o.x0:o.x1] == BOX_LEVELS[k]).all()
        assert (boxes > 0).sum() == sum(o.side ** 2 for o in scene.objects)
        # edges: on the objects' outlines (within a pixel of a silhouette's border), around every object
        edges = scene_map("edges", scene, 64, image) > 0
        border = union ^ _erode(union)
        assert (edges & ~_dilate(border)).sum() == 0
        assert all((edges & _dilate(m)).any() for m in masks)
        assert np.array_equal(scene_map("edges", scene, 64), scene_map("edges", scene, 64))  # deterministic


def _dilate(m):
    from scipy import ndimage

    return ndimage.binary_dilation(m, np.ones((3, 3), bool))


def _erode(m):
    from scipy import ndimage

    return ndimage.binary_erosion(m, np.ones((3, 3), bool))


def test_boxes_from_an_image_in_reading_order():
    image = np.full((64, 64, 3), 255, np.uint8)
    image[40:50, 5:15] = (40, 90, 230)   # lower left
    image[5:20, 30:45] = (220, 38, 38)   # top
    out = condition_map("boxes", image)
    assert (out[5:20, 30:45] == BOX_LEVELS[0]).all() and (out[40:50, 5:15] == BOX_LEVELS[1]).all()
    assert (out > 0).sum() == 15 * 15 + 10 * 10
    assert not edges_map(np.full((32, 32, 3), 128, np.uint8)).any()  # a flat image has no edges


def test_draw_boxes_rejects_bad_boxes():
    with pytest.raises(ValueError, match="at most 4 boxes"):
        draw_boxes([(0, 0, 2, 2)] * 5, 32)
    with pytest.raises(ValueError, match="x0 < x1"):
        draw_boxes([(5, 0, 2, 2)], 32)
    with pytest.raises(ValueError, match="four numbers"):
        draw_boxes([(1, 2)], 32)


# -- engine, API, CLI -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def control_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    base = tiny_folder(root, "base")
    control = save_tiny_control(base, root / "edges-control", "edges", 1)
    other = save_perturbed_model(root / "other", None, depth=1)  # the base's architecture, other weights
    deeper = save_perturbed_model(root / "deeper", None, depth=2)
    from ditkit.data.shapes import sample_scene as scene_of

    cond = root / "edges.png"
    map_image(scene_map("edges", scene_of(np.random.default_rng(0), 32), 32)).save(cond)
    return {"root": root, "base": base, "control": control, "other": other, "deeper": deeper, "cond": cond}


def test_pipeline_control(control_setup):
    import ditkit

    s = control_setup
    pipe = ditkit.load(str(s["base"]))
    plain = np.asarray(pipe.generate("a red circle", seed=3)[0])
    off = np.asarray(pipe.generate("a red circle", seed=3, control=[(str(s["control"]), s["cond"], 0.0)])[0])
    on = np.asarray(pipe.generate("a red circle", seed=3, control=[(str(s["control"]), s["cond"], 1.0)])[0])
    assert np.array_equal(plain, off)
    assert not np.array_equal(plain, on)
    # the same with a first-block cache at threshold 0 (exact), every sampler, APG, the interval, bf16, int8
    cached = np.asarray(pipe.generate("a red circle", seed=3, control=[(str(s["control"]), s["cond"])],
                                      cache="first-block:0")[0])
    assert np.array_equal(cached, on)
    for kwargs in ({"sampler": "heun"}, {"sampler": "dpm2m"}, {"apg": True}, {"guidance_interval": (0.2, 0.8)},
                   {"precision": "bf16"}, {"precision": "int8"}, {"best_of": 2, "verifier": "shapes"}):
        out = pipe.generate("a red circle", seed=3, control=[(str(s["control"]), s["cond"])], **kwargs)
        assert out[0].size == (32, 32), kwargs


def test_pipeline_control_bad_inputs(control_setup, tmp_path):
    import ditkit

    s = control_setup
    pipe = ditkit.load(str(s["base"]))
    with pytest.raises(ValueError, match=r"is for the base '.*base'.*not '.*other' \(weights sha256"):
        ditkit.load(str(s["other"])).generate("x", control=[(str(s["control"]), s["cond"])])
    with pytest.raises(ValueError, match=r"is for the base '.*base', not '.*deeper': their model configs differ in"):
        ditkit.load(str(s["deeper"])).generate("x", control=[(str(s["control"]), s["cond"])])
    with pytest.raises(ValueError, match="control scale"):
        pipe.generate("x", control=[(str(s["control"]), s["cond"], -1)])
    with pytest.raises(ValueError, match="control scale"):
        pipe.generate("x", control=[(str(s["control"]), s["cond"], float("nan"))])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        pipe.generate("x", control=[(str(s["control"]), text)])
    with pytest.raises(ValueError, match="base-control-edges"):  # a kind names the embedded <model>-control-<kind>
        pipe.generate("x", control=[("edges", s["cond"])])
    with pytest.raises(ValueError, match="list of"):
        pipe.generate("x", control="edges")
    big = tmp_path / "big.png"
    Image.open(s["cond"]).resize((64, 64), Image.NEAREST).save(big)
    with pytest.warns(UserWarning, match="resized"):
        out = pipe.generate("a red circle", seed=3, control=[(str(s["control"]), big)])
    assert np.array_equal(np.asarray(out[0]), np.asarray(
        pipe.generate("a red circle", seed=3, control=[(str(s["control"]), s["cond"])])[0]))


def test_parse_control_spec():
    assert parse_control_spec("edges:map.png") == ("edges", "map.png", 1.0)
    assert parse_control_spec("boxes:dir/map.png:0.5") == ("boxes", "dir/map.png", 0.5)
    assert parse_control_spec("runs/c/control:map.png:2") == ("runs/c/control", "map.png", 2.0)
    for bad in ("edges", "edges:", ":map.png", "edges:map.png:-1"):
        with pytest.raises(ValueError):
            parse_control_spec(bad)


def test_cli_generate_with_control(control_setup, tmp_path, capsys):
    s = control_setup
    out = tmp_path / "a.png"
    code, _, err = run_cli(["generate", "a red circle", "--model", s["base"], "-o", out,
                            "--control", f"{s['control']}:{s['cond']}:1.0"], capsys)
    assert code == 0, err
    import ditkit

    want = ditkit.load(str(s["base"])).generate("a red circle", control=[(str(s["control"]), s["cond"])])[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))
    for bad, needle in ((f"{s['control']}:{s['cond']}:-2", "control scale"),
                        (f"depth:{s['cond']}", "unknown control model"),
                        (f"{s['control']}:{tmp_path / 'missing.png'}", "missing.png")):
        bad_out = tmp_path / "bad.png"
        code, _, err = run_cli(["generate", "x", "--model", s["base"], "-o", bad_out, "--control", bad], capsys)
        assert code == 2 and needle in err and "Traceback" not in err, err
        assert not bad_out.exists()
    code, _, err = run_cli(["generate", "x", "--model", s["other"], "-o", tmp_path / "o.png",
                            "--control", f"{s['control']}:{s['cond']}"], capsys)
    assert_one_line_error(code, err, "is for the base")


def test_cli_control_map(tmp_path, capsys):
    scene = sample_scene(np.random.default_rng(4), 64)
    src = tmp_path / "scene.png"
    render(scene.objects, 64).save(src)
    for kind in CONDITIONS:
        out = tmp_path / f"{kind}.png"
        code, stdout, err = run_cli(["control-map", kind, src, "-o", out], capsys)
        assert code == 0, err
        assert np.array_equal(np.asarray(Image.open(out).convert("L")), condition_map(kind, render(scene.objects, 64)))
    code, _, err = run_cli(["control-map", "depth", src, "-o", tmp_path / "d.png"], capsys)
    assert_one_line_error(code, err, "edges, boxes, seg")
    notes = tmp_path / "n.txt"
    notes.write_text("x")
    code, _, err = run_cli(["control-map", "edges", notes, "-o", tmp_path / "e2.png"], capsys)
    assert_one_line_error(code, err, "n.txt")
    assert not (tmp_path / "e2.png").exists()


# -- training ---------------------------------------------------------------------------------

def _control_config(tmp_path, base, **train):
    cfg = tiny_train_config(tmp_path / "run", init_from=str(base), control={"condition": "boxes", "blocks": 1},
                            **train)
    return cfg


@pytest.fixture(scope="module")
def train_base(tmp_path_factory):
    """A saved base whose config is tiny_train_config's model (text_dim 384 for minilm)."""
    from ditkit.core.checkpoint import save_model

    torch.manual_seed(0)
    cfg = tiny_train_config("unused")
    model = perturb_(DiT(cfg.model), std=0.05, seed=1)
    return save_model(tmp_path_factory.mktemp("train-base") / "base", model, cfg.sample)


def test_control_training_lowers_the_loss_and_trains_only_the_control(tmp_path, train_base):
    from ditkit.core.checkpoint import _load_tensors
    from ditkit.core.encoders import get_text_encoder
    from ditkit.core.control import training_model
    from ditkit.training.loop import TrainingLoop, TrainSettings
    from ditkit.training.train import step_batch, training_loss

    cfg = _control_config(tmp_path, train_base)
    model = training_model(cfg, "cpu")
    encoder = get_text_encoder("minilm")
    batch = step_batch(cfg, 0)
    assert batch["control"].shape == (2, 3, 32, 32)
    before = training_loss(model, cfg, encoder, 0, torch.device("cpu"), batch).item()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    loop = TrainingLoop(model, TrainSettings(steps=15, lr=3e-3))
    loop.run(lambda step: training_loss(loop.net, cfg, encoder, 0, torch.device("cpu"), {**batch, "step": 0}))
    after = training_loss(model, cfg, encoder, 0, torch.device("cpu"), batch).item()
    assert after < before
    assert all(torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items())
    assert set(_load_tensors(train_base / "model.safetensors")) == set(base_before)


def test_train_control_run_and_exact_resume(tmp_path, train_base):
    from ditkit.training.train import train

    whole = _control_config(tmp_path / "a", train_base, steps=4, checkpoint_every=2)
    train(whole, progress=False)
    part = _control_config(tmp_path / "b", train_base, steps=4, checkpoint_every=2)
    train(part, progress=False, stop_after=2)
    train(part, resume=True, progress=False)
    a, info = load_control(tmp_path / "a" / "run" / "control")
    b, _ = load_control(tmp_path / "b" / "run" / "control")
    assert info.condition == "boxes" and info.trained_steps == 4
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    # the control folder works from the API on its base
    import ditkit

    cond = map_image(draw_boxes([(2, 2, 14, 14), (18, 18, 30, 30)], 32))
    out = ditkit.load(str(train_base)).generate("a red circle and a blue square",
                                                control=[(str(tmp_path / "a" / "run" / "control"), cond)])
    assert out[0].size == (32, 32)


def test_control_config_errors(tmp_path, train_base):
    with pytest.raises(ValueError, match="train.init_from"):
        tiny_train_config(tmp_path, control={"condition": "edges"})
    with pytest.raises(ValueError, match="edges, boxes, seg"):
        tiny_train_config(tmp_path, init_from=str(train_base), control={"condition": "depth"})
    from ditkit.training.train import train

    with pytest.raises(ValueError, match="eval control"):
        train(_control_config(tmp_path, train_base, eval_every=2), progress=False)


def test_cli_info_describes_a_control_folder(control_setup, capsys):
    code, out, err = run_cli(["info", control_setup["control"]], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["kind"] == "control" and info["condition"] == "edges" and info["blocks"] == 1
    assert info["parameters"] == sum(p.numel() for p in load_control(control_setup["control"])[0].parameters())


def test_embedded_control_models_steer_shapes_64():
    """The shipped control models: found by kind, for shapes-64's weights, fp16 files under 40 MB,
    scale 0 is shapes-64 itself and scale 1 changes the image."""
    import ditkit
    from ditkit.core.control import embedded_controls, resolve_control

    assert {"shapes-64-control-edges", "shapes-64-control-boxes"} <= set(embedded_controls())
    pipe = ditkit.load("shapes-64")
    scene = sample_scene(np.random.default_rng(0), 64, category="position")
    plain = np.asarray(pipe.generate(scene.caption, steps=2, seed=0)[0])
    for kind in ("edges", "boxes"):
        folder = resolve_control(f"shapes-64-control-{kind}")
        assert sum(f.stat().st_size for f in folder.iterdir()) < 40e6
        assert read_control_info(folder).condition == kind
        cond = map_image(scene_map(kind, scene, 64))
        off = np.asarray(pipe.generate(scene.caption, steps=2, seed=0, control=[(kind, cond, 0.0)])[0])
        on = np.asarray(pipe.generate(scene.caption, steps=2, seed=0, control=[(kind, cond)])[0])
        assert np.array_equal(off, plain) and not np.array_equal(on, plain)
