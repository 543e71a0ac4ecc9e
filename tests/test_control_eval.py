"""The control benchmark (evaluation/control_eval.py, `ditkit eval control`): its metric helpers
are exact on ground truth and zero on a blank image, the report's keys, ranges and counts on a
tiny model with tiny control models, determinism, scale 0 = text only, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli, save_tiny_control, tiny_folder
from PIL import Image

import ditkit
from ditkit.core.control_maps import edges_map, scene_map, scene_masks
from ditkit.core.files import is_orphan_temp
from ditkit.data.shapes import benchmark_prompts, render, scene_for_caption
from ditkit.evaluation.control_eval import (box_iou, control_eval, detection_masks, edge_f1, mask_box, mask_iou,
                                            match_objects)
from ditkit.evaluation.shapes_detector import detect

SIZE = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny 32 px base folder and tiny edges / boxes control models for it."""
    root = tmp_path_factory.mktemp("control-eval")
    base = tiny_folder(root, "base")
    return {"base": base, "edges": save_tiny_control(base, root / "edges-ctl", "edges"),
            "boxes": save_tiny_control(base, root / "boxes-ctl", "boxes")}


@pytest.fixture(scope="module")
def pipe(models):
    return ditkit.load(str(models["base"]))


def _scenes(size=SIZE, per_category=3, seed=0):
    """Ground-truth scenes of benchmark prompts (every category) and their renderings."""
    pairs = benchmark_prompts(per_category, seed)
    scenes = [scene_for_caption(p, np.random.default_rng([seed, 7, i]), size) for i, (_, p) in enumerate(pairs)]
    return [(s, render(s.objects, size)) for s in scenes]


# -- metric helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [SIZE, 64])
def test_detection_masks_are_the_rendered_silhouettes(size):
    for scene, image in _scenes(size):
        dets = detect(image)
        masks = detection_masks(image, dets)
        truth = scene_masks(scene, size)
        assert len(masks) == len(dets) == len(truth)
        # each true silhouette is exactly one detection's mask
        for t in truth:
            assert sum(np.array_equal(t, m) for m in masks) == 1


@pytest.mark.parametrize("kind", ["edges", "seg", "boxes"])
def test_a_scene_against_itself_scores_one(kind):
    for scene, image in _scenes():
        rows = match_objects(kind, scene, image)
        assert len(rows) == len(scene.objects)
        assert all(r["iou"] == pytest.approx(1.0) and r["correct"] for r in rows), rows
        assert all(r["match"] == f"{r['color']} {r['shape']}" for r in rows)


def test_edge_f1_of_a_scene_with_itself_is_one_and_blank_is_zero():
    blank = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    for scene, image in _scenes():
        cond = scene_map("edges", scene, SIZE, image)
        assert cond.any()
        assert edge_f1(edges_map(image), cond) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
        assert edge_f1(edges_map(blank), cond)["f1"] == 0.0
        for kind in ("edges", "seg", "boxes"):
            assert all(r["iou"] == 0.0 and not r["correct"] and r["match"] is None
                       for r in match_objects(kind, scene, blank))


def test_edge_f1_tolerates_one_pixel_only():
    line = np.zeros((16, 16), bool)
    line[:, 5] = True
    assert edge_f1(np.roll(line, 1, axis=1), line)["f1"] == 1.0  # within the 3x3 neighbourhood
    assert edge_f1(np.roll(line, 2, axis=1), line)["f1"] == 0.0
    half = line.copy()
    half[8:] = False  # half the edge drawn: all of it is right, half the condition is found
    assert edge_f1(half, line) == {"precision": 1.0, "recall": pytest.approx(9 / 16), "f1": pytest.approx(18 / 25)}
    assert edge_f1(np.zeros_like(line), np.zeros_like(line))["f1"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        edge_f1(line, line[:8])


def test_iou_values():
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching, not overlapping
    assert box_iou((1, 1, 5, 5), (1, 1, 5, 5)) == 1.0
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, np.zeros_like(a)) == 0.0 and mask_iou(b, b) == 1.0
    assert mask_box(b) == (0, 1, 4, 3)


# -- the benchmark ----------------------------------------------------------------------------

def _numbers(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("images", "settings")}


@pytest.mark.parametrize("kind", ["edges", "boxes"])
def test_report_keys_ranges_counts_and_determinism(pipe, models, kind, tmp_path):
    out = tmp_path / "out"
    result = control_eval(pipe, kind, per_category=1, seed=3, control_model=str(models[kind]), out_dir=out)
    assert result["counts"]["prompts"] == 4 == len(result["per_image"])
    assert result["counts"]["per_category"] == {"single_object": 1, "two_object": 1, "counting": 1, "position": 1}
    objects = [o for row in result["per_image"] for o in row["control"]["objects"]]
    assert result["counts"]["objects"] == len(objects) >= 4
    assert result["settings"]["condition"] == kind and result["settings"]["scale"] == 1.0
    for mode in ("control", "text_only"):
        m = result[mode]
        assert m["iou_kind"] == ("box" if kind == "boxes" else "mask")
        for key in ("mean_iou", "iou_at_0.5", "object_correct", "position"):
            assert 0.0 <= m[key] <= 1.0, (mode, key)
        assert ("edge_f1" in m) == (kind == "edges")
        if kind == "edges":
            assert all(0.0 <= v <= 1.0 for v in m["edge_f1"].values())
        assert m["shapes_eval"]["n"] == 4 and m["position"] == m["shapes_eval"]["categories"]["position"]
        ious = [o["iou"] for row in result["per_image"] for o in row[mode]["objects"]]
        assert m["mean_iou"] == pytest.approx(float(np.mean(ious)))
        assert all(0.0 <= v <= 1.0 for v in ious)
    # the tiny control changes the images (so the two modes are really two runs)
    images = result["images"]
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images["control"], images["text_only"]))
    # out_dir: every image, the grid, the report and results.json equal to the returned numbers
    for folder in ("control", "text_only", "condition"):
        assert sorted(p.name for p in (out / folder).iterdir()) == [f"{i:04d}.png" for i in range(4)]
    assert (out / "grid.png").is_file() and (out / "report.md").is_file()
    assert not [p for p in out.rglob("*") if is_orphan_temp(p.name)]
    saved = json.loads((out / "results.json").read_text())
    assert saved["control"] == result["control"] and saved["counts"] == result["counts"]
    # same seed, same numbers
    again = control_eval(pipe, kind, per_category=1, seed=3, control_model=str(models[kind]))
    assert _numbers(again) == _numbers(result)


def test_scale_zero_is_text_only(pipe, models):
    result = control_eval(pipe, "boxes", per_category=1, control_model=str(models["boxes"]), scale=0.0,
                          return_images=True)
    for a, b in zip(result["images"]["control"], result["images"]["text_only"]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert result["control"] == result["text_only"]


def test_bad_arguments(pipe, models, tmp_path):
    ctl = str(models["edges"])
    with pytest.raises(ValueError, match="edges, boxes, seg"):
        control_eval(pipe, "depth", control_model=ctl)
    for scale in (-0.5, math.nan):
        with pytest.raises(ValueError, match="control scale"):
            control_eval(pipe, "edges", control_model=ctl, scale=scale)
    with pytest.raises(ValueError, match="per_category"):
        control_eval(pipe, "edges", per_category=0, control_model=ctl)
    with pytest.raises(ValueError, match="sets control, num_images itself"):
        control_eval(pipe, "edges", control_model=ctl, control=[], num_images=2, steps=1)
    with pytest.raises(ValueError, match="reads edges maps, not boxes"):
        control_eval(pipe, "boxes", control_model=ctl)
    # no control model given, and no embedded <model>-control-seg: say what is missing and how to train it
    with pytest.raises(ValueError, match=r"'base-control-seg'.*configs/control-seg\.yaml"):
        control_eval(pipe, "seg")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        control_eval(pipe, "edges", control_model=ctl, out_dir=tmp_path / "file")


# -- the CLI ----------------------------------------------------------------------------------

def test_cli_runs_and_writes(models, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code, stdout, err = run_cli(["eval", "control", "--model", models["base"], "--condition", "edges",
                                 "--control-model", models["edges"], "--per-category", "1", "--out-dir", out], capsys)
    assert code == 0, err
    assert "edge F1" in stdout and "ShapesEval overall" in stdout and "position" in stdout
    assert f"wrote {out / 'results.json'}" in stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["counts"]["prompts"] == 4 and saved["settings"]["condition"] == "edges"


@pytest.mark.parametrize("args, needles", [
    (["--condition", "depth"], ["'depth'", "edges, boxes, seg"]),
    (["--condition", "edges", "--scale", "-1"], ["control scale", ">= 0"]),
    (["--condition", "edges", "--scale", "nan"], ["control scale"]),
    (["--condition", "seg"], ["base-control-seg", "configs/control-seg.yaml", "--control-model"]),
    (["--condition", "edges", "--control-model", "no-such-control"], ["unknown control model", "no-such-control"]),
    (["--condition", "edges", "--per-category", "0"], ["--per-category"]),
    ([], ["--condition"]),
])
def test_cli_bad_input(models, tmp_path, capsys, args, needles):
    code, stdout, err = run_cli(["eval", "control", "--model", models["base"], "--out-dir", tmp_path / "o", *args],
                                capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()  # nothing written
