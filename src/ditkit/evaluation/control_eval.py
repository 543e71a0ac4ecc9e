"""The control benchmark (`ditkit eval control`, issue 30 "Evaluation"): how closely a control
model's images follow their condition maps, and whether the text still decides what is drawn.

    pipe = ditkit.load("shapes-64")
    result = control_eval(pipe, "boxes", per_category=6, seed=0, out_dir="runs/eval-control-boxes")

Prompts are ShapesEval's (data.shapes.benchmark_prompts(per_category, seed)). Prompt i gets a
fresh ground-truth scene, scene_for_caption(caption, numpy.random.default_rng([seed, 7, i]), size),
whose condition map (core.control_maps.scene_map: edges of the rendered scene, its layout boxes
or its silhouettes) steers image i; image i samples from seed + i twice, with the control and with the
text alone, one generate call each (a call shares one map among its images; batching the
text-only images would change their rounding), so the two differ only by the control and scale
0 gives the text-only images bit for bit.

Measures, each for "control" and "text_only" (the text-only images say what chance gives):
- fidelity: each ground-truth object is matched with the detection (shapes_detector.detect)
  of the highest IoU: mask IoU of silhouettes for edges and seg (the detection's mask is its
  connected component, shapes_detector.detect_with_masks), box IoU for boxes (against the silhouette's tight
  box, which is the condition's box except where a triangle leaves an edge row empty). Mean over objects, and the share
  with IoU >= MATCH_IOU.
- object correctness: the share of objects whose best match overlaps them (IoU > 0) and has
  the object's color and shape (what the text asked for, at the place the map gave).
- edge F1 (edges only): Canny edges of the output (control_maps.edges_map) against the
  condition's, with a one-pixel tolerance (edge_f1).
- ShapesEval (shapes_scoring.evaluate) per category and overall; "position" is surfaced.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ditkit.core.control import ControlInfo, check_scale, embedded_controls
from ditkit.core.control_maps import CONDITIONS, check_condition, edges_map, map_image, scene_map, scene_masks
from ditkit.core.files import atomic_save_image, remove_orphan_temps
from ditkit.core.limits import check_int, check_seed
from ditkit.core.reports import markdown_table, write_json, write_report
from ditkit.data.shapes import CATEGORIES, Scene, benchmark_prompts, parse_caption, render, scene_for_caption
from ditkit.engine.control import control_name
from ditkit.evaluation.outputs import image_grid
from ditkit.evaluation.shapes_detector import Detection, detect_with_masks
from ditkit.evaluation.shapes_scoring import evaluate, judged_colors, score_image

MATCH_IOU = 0.5  # an object counts as placed when its best match reaches this IoU
SCENE_STREAM = 7  # scene i draws from default_rng([seed, SCENE_STREAM, i]): apart from other streams of the seed
MODES = ("control", "text_only")
FOLDERS = ("control", "text_only", "condition")  # out_dir's image folders: image i is NNNN.png in each
GRID_PER_CATEGORY = 2  # prompts of each category in grid.png
_PNG_NAME = re.compile(r"^[0-9]{4,}\.png$")
# generate's arguments control_eval sets itself
_OWN_KWARGS = ("prompt", "control", "num_images", "best_of", "verifier")


# -- metric helpers ---------------------------------------------------------------------------

def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)


def detection_masks(image: Image.Image | np.ndarray, detections: Sequence[Detection],
                    colors: Sequence[str] | None = None) -> list[np.ndarray]:
    """Each detection's pixels, bool (H, W): the component detect() found it as
    (shapes_detector.detect_with_masks). `detections` must come from detect(image, colors)
    with the same colors."""
    masks = dict(detect_with_masks(image, colors))
    missing = next((d for d in detections if d not in masks), None)
    if missing is not None:
        raise ValueError(f"no component of the image matches the detection {missing}: detect it with the same colors")
    return [masks[d] for d in detections]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (H, W); 0 when both are empty."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes (x0, y0, x1, y1), end-exclusive; 0 when they do not overlap."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The tight box (x0, y0, x1, y1), end-exclusive, of a non-empty bool mask (H, W)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("an empty mask has no box")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def edge_f1(output: np.ndarray, condition: np.ndarray) -> dict[str, float]:
    """Edge agreement of two edge maps (bool or 0/255, (H, W)) with a one-pixel tolerance:
    precision = share of output edge pixels within one pixel (3x3 dilation) of a condition
    edge, recall = the reverse, f1 their harmonic mean. An empty side scores 0 (1 when both
    are empty: nothing to draw, nothing drawn)."""
    from scipy import ndimage  # why here: ~0.3 s to import, and `ditkit --help` imports this module

    out, cond = np.asarray(output) > 0, np.asarray(condition) > 0
    if out.shape != cond.shape:
        raise ValueError(f"edge maps must have the same shape, got {out.shape} and {cond.shape}")
    n_out, n_cond = int(out.sum()), int(cond.sum())
    if n_out == 0 or n_cond == 0:
        same = float(n_out == n_cond)
        return {"precision": same, "recall": same, "f1": same}
    near = np.ones((3, 3), bool)
    precision = float((out & ndimage.binary_dilation(cond, near)).sum() / n_out)
    recall = float((cond & ndimage.binary_dilation(out, near)).sum() / n_cond)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def match_objects(kind: str, scene: Scene, image: Image.Image | np.ndarray,
                  colors: Sequence[str] | None = None) -> list[dict]:
    """Each ground-truth object of `scene` (caption order) matched with the detection of `image`
    of the highest IoU: box IoU (with the silhouette's tight box) for "boxes", silhouette mask IoU
    for "edges" and "seg".
    Returns per object {"color", "shape", "iou", "match": "color shape" or None, "correct"
    (the match overlaps, IoU > 0, with the object's color and shape)}."""
    check_condition(kind)
    arr = _rgb(image)
    found = detect_with_masks(arr, colors)
    dets = [d for d, _ in found]
    silhouettes = scene_masks(scene, arr.shape[0])
    if kind == "boxes":
        # The silhouette's tight box, not the drawn square: a triangle's mask may leave a row of its
        # square empty, and the detector boxes what is drawn, so a perfect image scores 1.
        truth = [mask_box(m) for m in silhouettes]
        ious = [[box_iou(t, (d.x0, d.y0, d.x1, d.y1)) for d in dets] for t in truth]
    else:
        ious = [[mask_iou(t, m) for _, m in found] for t in silhouettes]
    rows = []
    for obj, row in zip(scene.objects, ious):
        j = int(np.argmax(row)) if row else -1
        iou = row[j] if row else 0.0
        best = dets[j] if iou > 0 else None
        rows.append({"color": obj.color, "shape": obj.shape, "iou": float(iou),
                     "match": f"{best.color} {best.shape}" if best else None,
                     "correct": bool(best and best.color == obj.color and best.shape == obj.shape)})
    return rows


# -- the benchmark ----------------------------------------------------------------------------

def resolve_eval_control(engine, kind: str, control_model: str | None = None) -> ControlInfo:
    """The control model a run evaluates, loaded and checked against the engine's model: the
    embedded <model>-control-<kind> when control_model is None, else that name or folder; it
    must read `kind` maps. A missing embedded one is a ValueError saying how to train it."""
    check_condition(kind)
    if control_model is None:
        name = control_name(kind, engine.source)
        if name not in embedded_controls():
            raise ValueError(f"no control model {name!r} for {kind} maps (embedded: "
                             f"{', '.join(embedded_controls()) or 'none'}); train one with `ditkit train "
                             f"configs/control-{kind}.yaml` and pass its folder (runs/control-{kind}/control) "
                             "as --control-model / control_model=")
    else:
        name = str(control_model)
    _, info = engine.control_model(name)
    if info.condition != kind:
        raise ValueError(f"control model {info.folder.name} reads {info.condition} maps, not {kind}: "
                         f"evaluate it with condition {info.condition!r}")
    return info


def _mode_summary(kind: str, matches: list[list[dict]], edges: list[dict] | None, shapes: dict) -> dict:
    """One mode's numbers over all images."""
    objects = [m for rows in matches for m in rows]
    ious = [m["iou"] for m in objects]
    out = {"iou_kind": "box" if kind == "boxes" else "mask",
           "mean_iou": float(np.mean(ious)) if ious else 0.0,
           "iou_at_0.5": float(np.mean([v >= MATCH_IOU for v in ious])) if ious else 0.0,
           "object_correct": float(np.mean([m["correct"] for m in objects])) if objects else 0.0}
    if edges is not None:
        out["edge_f1"] = {k: float(np.mean([e[k] for e in edges])) for k in ("precision", "recall", "f1")}
    out["shapes_eval"] = shapes
    out["position"] = shapes["categories"].get("position")
    return out


def _shifted(callback: Callable[[dict], None] | None, offset: int, total: int) -> Callable[[dict], None] | None:
    """A call's progress reported as part of the whole run: done + offset of total."""
    if callback is None:
        return None
    return lambda info: callback({**info, "done": info["done"] + offset, "total": total})


def control_eval(pipe: Any, condition: str, per_category: int = 6, seed: int = 0, control_model: str | None = None,
                 scale: float = 1.0, out_dir: str | Path | None = None, callback: Callable[[dict], None] | None = None,
                 return_images: bool = False, command: str = "", **generate_kwargs) -> dict:
    """Run the control benchmark with a Pipeline (ditkit.load) and one condition kind.

    condition: "edges", "boxes" or "seg"; control_model: a control model's embedded name or
    folder (default: the embedded <model>-control-<condition>); scale >= 0 (0: the base alone).
    generate_kwargs: Pipeline.generate's sampling arguments (steps, guidance, sampler, size,
    shift, precision, batch_size, ...; the model's defaults otherwise). out_dir: also write
    control/, text_only/ and condition/ NNNN.png, grid.png, results.json and report.md there
    (each file atomically). callback: the engine's progress dicts, "done"/"total" over the run.

    Returns {"settings", "counts": {"prompts", "objects", "per_category"}, "control" and
    "text_only": {"iou_kind", "mean_iou", "iou_at_0.5", "object_correct", "edge_f1" (edges
    only: {"precision", "recall", "f1"}), "shapes_eval": {"overall", "categories", "n"},
    "position"}, "per_image": a row per prompt} (+ "images": {"control", "text_only",
    "condition", "truth"}: lists of PIL images, with return_images or out_dir).
    """
    kind = check_condition(condition)
    scale = check_scale(scale)
    per_category = check_int("per_category", per_category, 1)
    seed = check_seed(seed)
    bad = sorted(k for k in generate_kwargs if k in _OWN_KWARGS)
    if bad:
        raise ValueError(f"control_eval sets {', '.join(bad)} itself; pass only sampling arguments")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is a file; it must be a folder")
    if out_dir is not None and not Path(out_dir).parent.is_dir():
        raise ValueError(f"the parent folder of out_dir {str(out_dir)!r} does not exist")
    info = resolve_eval_control(pipe.engine, kind, control_model)  # a missing or wrong control fails first
    kw = generate_kwargs
    sample = pipe.sample_config(kw.get("steps"), kw.get("guidance"), kw.get("sampler"), kw.get("size"),
                                kw.get("shift"))
    size = sample.size
    pairs = benchmark_prompts(per_category, seed)
    categories, prompts = [c for c, _ in pairs], [p for _, p in pairs]
    scenes = [scene_for_caption(p, np.random.default_rng([seed, SCENE_STREAM, i]), size) for i, p in enumerate(prompts)]
    truth = [render(s.objects, size) for s in scenes]
    maps = [scene_map(kind, s, size, im) for s, im in zip(scenes, truth)]
    what = str(control_model) if control_model is not None else kind
    total = 2 * len(prompts) * sample.steps

    # One call per image in both modes: a call shares one map among its images, and the text-only
    # image must not differ from its controlled twin by batch composition (batched matmuls round
    # differently), so scale 0 reproduces the text-only images bit for bit.
    images: dict[str, list[Image.Image]] = {"control": [], "text_only": []}
    for i, (p, m) in enumerate(zip(prompts, maps)):
        images["text_only"] += pipe.generate(p, seed=seed + i, callback=_shifted(callback, 2 * i * sample.steps, total),
                                             **kw)
        images["control"] += pipe.generate(p, seed=seed + i, control=[(what, map_image(m), scale)],
                                           callback=_shifted(callback, (2 * i + 1) * sample.steps, total), **kw)

    result: dict = {
        "settings": {"condition": kind, "control_model": str(info.folder) if control_model else info.folder.name,
                     "scale": scale, "per_category": per_category, "seed": seed, "size": size,
                     "sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                     "shift": sample.shift, "precision": kw.get("precision", "fp32"), "model": pipe.source},
        "counts": {"prompts": len(prompts), "objects": sum(len(s.objects) for s in scenes),
                   "per_category": {c: categories.count(c) for c in CATEGORIES if c in categories}},
    }
    rows = [{"index": i, "category": c, "prompt": p, "seed": seed + i} for i, (c, p) in enumerate(pairs)]
    for mode in MODES:
        matches, edges = [], [] if kind == "edges" else None
        for i, (p, scene, image) in enumerate(zip(prompts, scenes, images[mode])):
            colors = judged_colors(parse_caption(p))  # the scorer's vocabulary for this caption
            matches.append(match_objects(kind, scene, image, colors))
            row = {"objects": matches[-1], "shapes_correct": bool(score_image(image, p))}
            if edges is not None:
                edges.append(edge_f1(edges_map(image), maps[i]))
                row["edge_f1"] = edges[-1]
            rows[i][mode] = row
        result[mode] = _mode_summary(kind, matches, edges, evaluate(images[mode], prompts, categories))
    result["per_image"] = rows
    if return_images or out_dir is not None:
        result["images"] = {**images, "condition": [map_image(m) for m in maps], "truth": truth}
    if out_dir is not None:
        save_control_outputs(result, out_dir, command)
    return result


# -- outputs ----------------------------------------------------------------------------------

def _grid_rows(rows: Sequence[dict], per_category: int) -> list[int]:
    """The indices of the first per_category prompts of each category."""
    seen: dict[str, int] = {}
    keep = []
    for row in rows:
        if seen.get(row["category"], 0) < per_category:
            keep.append(row["index"])
            seen[row["category"]] = seen.get(row["category"], 0) + 1
    return keep


def save_control_outputs(result: dict, out_dir: str | Path, command: str = "") -> Path:
    """Write a control_eval result (with its "images") into out_dir: control/, text_only/ and
    condition/ NNNN.png (image i of each; numbered PNGs an earlier, longer run left there are
    removed), grid.png (a row per prompt: condition, ground truth, control, text only),
    results.json and report.md, each atomically. Returns results.json's path."""
    if "images" not in result:
        raise ValueError("save_control_outputs needs control_eval(..., return_images=True)")
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    remove_orphan_temps(out)
    images = result["images"]
    for name in FOLDERS:
        folder = out / name
        folder.mkdir(exist_ok=True)
        remove_orphan_temps(folder)
        for i, im in enumerate(images[name]):
            atomic_save_image(folder / f"{i:04d}.png", im)
        for stale in folder.iterdir():
            if _PNG_NAME.match(stale.name) and int(stale.stem) >= len(images[name]) and stale.is_file():
                stale.unlink()
    keep = _grid_rows(result["per_image"], GRID_PER_CATEGORY)
    atomic_save_image(out / "grid.png", image_grid([images[k][i] for i in keep
                                                    for k in ("condition", "truth", "control", "text_only")],
                                                   columns=4))
    summary = {k: v for k, v in result.items() if k != "images"}
    path = out / "results.json"
    write_json(path, summary)
    s = result["settings"]
    write_report(out / "report.md", f"Control benchmark: {s['condition']}", command or "ditkit eval control", [
        ("Scores", summary_table(result, markdown=True)),
        ("Images", f"A row per prompt (the first {GRID_PER_CATEGORY} of each category): condition, ground truth, "
                   "with the control, text only. ![grid](grid.png)"),
        ("Settings", "\n".join(f"- {k}: {v}" for k, v in s.items())),
    ])
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def summary_table(result: dict, markdown: bool = False) -> str:
    """A control_eval result as a table: a row per measure, columns control and text only."""
    c, t = result["control"], result["text_only"]
    iou = f"{c['iou_kind']} IoU"
    table = [[f"{iou} (mean)", c["mean_iou"], t["mean_iou"]],
             [f"{iou} >= {MATCH_IOU:g}", c["iou_at_0.5"], t["iou_at_0.5"]],
             ["object correct", c["object_correct"], t["object_correct"]]]
    if "edge_f1" in c:
        table.append(["edge F1", c["edge_f1"]["f1"], t["edge_f1"]["f1"]])
    table.append(["ShapesEval overall", c["shapes_eval"]["overall"], t["shapes_eval"]["overall"]])
    for cat in c["shapes_eval"]["categories"]:
        table.append([f"  {cat}", c["shapes_eval"]["categories"][cat], t["shapes_eval"]["categories"].get(cat)])
    header = ["measure", "control", "text only"]
    if markdown:
        return markdown_table(header, [[r[0], _fmt(r[1]), _fmt(r[2])] for r in table])
    cells = [header] + [[r[0], _fmt(r[1]), _fmt(r[2])] for r in table]
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


__all__ = ["CONDITIONS", "MATCH_IOU", "box_iou", "control_eval", "detection_masks", "edge_f1", "mask_box",
           "mask_iou", "match_objects", "resolve_eval_control", "save_control_outputs", "summary_table"]
