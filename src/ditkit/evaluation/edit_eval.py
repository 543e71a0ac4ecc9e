"""`ditkit eval edit`: the editing tasks measured on the shapes world with its detector
(issue: multifunctional editing). Every case is built from a seed, so a run is repeatable.

- inpaint: a generated scene, one detected object's box plus a 3 px margin masked, the hole
  asked to hold "a COLOR SHAPE" (a different object): success when exactly one object is
  detected in the hole, it is the asked one, and every object outside the hole is still
  detected. Training-free (blend) and the inpainting model side by side.
- outpaint: a generated scene extended by 50% on one side, prompted with an extra object:
  success when the original pixels are byte-identical and the object appears in the new area.
- vary: strength 0.3 and 0.9; "kept" when the detector sees the same objects (colour, shape,
  count); the layout shift is the mean distance from each source object to the nearest
  object of the same colour and shape (the image side when there is none).
- fuse: two single-object scenes; success when both objects are detected in the fusion.
- upscale: ground-truth renders downscaled 2x (area) and upscaled back by the model and by
  bicubic: PSNR and the detector's agreement with the original, at 32->64 and 64->128.
- seams (inpaint, outpaint): mean gradient magnitude on the mask border over the mean
  gradient magnitude of the whole image (1 = the border is as smooth as the rest).

The tasks run as the functions of ditkit.tasks.pipeline_edit over an engine (the model under
test), with `companion` (suffix -> the engine of a companion model, e.g. its inpainting model)
and `upscaler` (the engine of an upscaling model) given by the caller.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ditkit.core.files import atomic_save_image, atomic_write_json, atomic_write_text
from ditkit.core.images import to_pil
from ditkit.data.shapes import PALETTE, SHAPE_NAMES, ShapeObject, benchmark_prompts, object_caption, render, sample_scene
from ditkit.engine import Engine, GenerationRequest
from ditkit.evaluation.shapes_detector import detect
from ditkit.tasks.pipeline_edit import Companion, bicubic_upscale, fuse, inpaint, outpaint, psnr, upscale, vary

COLORS, SHAPES = tuple(PALETTE), SHAPE_NAMES

EDIT_TASKS = ("inpaint", "outpaint", "vary", "fuse", "upscale")
MARGIN = 3


def _objects(image) -> Counter:
    return Counter((d.color, d.shape) for d in detect(image))


def _inside(det, box) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= det.cx < x1 and y0 <= det.cy < y1


def seam_ratio(image: Image.Image, fill: np.ndarray) -> float:
    """Mean gradient magnitude on the border pixels of the fill region over the image's mean."""
    arr = np.asarray(image.convert("RGB"), np.float64).mean(2)
    gy, gx = np.gradient(arr)
    mag = np.hypot(gx, gy)
    f = fill.astype(bool)
    border = np.zeros_like(f)
    border[:, 1:] |= f[:, 1:] != f[:, :-1]
    border[:, :-1] |= f[:, 1:] != f[:, :-1]
    border[1:, :] |= f[1:, :] != f[:-1, :]
    border[:-1, :] |= f[1:, :] != f[:-1, :]
    overall = mag.mean()
    return float(mag[border].mean() / overall) if border.any() and overall > 0 else float("nan")


def _other_object(rng: np.random.Generator, color: str, shape: str) -> tuple[str, str]:
    while True:
        c, s = str(rng.choice(COLORS)), str(rng.choice(SHAPES))
        if (c, s) != (color, shape):
            return c, s


def _caption(color: str, shape: str) -> str:
    return object_caption(ShapeObject(shape, color, 0, 0, 1))


def _generate(engine: Engine, prompts: list[str], seed: int) -> list[Image.Image]:
    """Text-to-image at the model's settings, image i from seed + i (Pipeline.generate's defaults)."""
    return to_pil(engine.generate(GenerationRequest.from_sample(prompts, engine.sample_config(apg=False), seed)))


def _source_scenes(engine: Engine, n: int, seed: int, category: str) -> list[tuple[Image.Image, str]]:
    prompts = [p for c, p in benchmark_prompts(n, seed) if c == category][:n]
    images = _generate(engine, prompts, seed)
    return list(zip(images, prompts))


def eval_inpaint(engine: Engine, n: int, seed: int, examples: list, companion: Companion | None = None) -> dict:
    rng = np.random.default_rng([seed, 1])
    variants = {"blend": ("blend", 0), "blend+repaint2": ("blend", 2)}
    if engine.model.config.cond_channels == 4 or (companion is not None and companion("inpaint") is not None):
        variants = {"model": ("model", 0), **variants}  # only where there is an inpainting model
    out = {m: {"success": 0, "seam": []} for m in variants}
    cases = 0
    for k, (src, _) in enumerate(_source_scenes(engine, n, seed, "two_object")):
        dets = detect(src)
        if not dets:
            continue
        d = dets[int(rng.integers(len(dets)))]
        s = src.size[0]
        box = (max(0, int(d.x0) - MARGIN), max(0, int(d.y0) - MARGIN), min(s, int(np.ceil(d.x1)) + MARGIN),
               min(s, int(np.ceil(d.y1)) + MARGIN))
        fill = np.zeros((s, s), bool)
        fill[box[1]:box[3], box[0]:box[2]] = True
        color, shape = _other_object(rng, d.color, d.shape)
        others = Counter((o.color, o.shape) for o in dets if o is not d)
        cases += 1
        for name, (method, resample) in variants.items():
            res = inpaint(engine, src, Image.fromarray(fill.astype(np.uint8) * 255), _caption(color, shape),
                          method=method, resample=resample, seed=seed + k, companion=companion)
            found = detect(res)
            hole = [o for o in found if _inside(o, box)]
            kept = Counter((o.color, o.shape) for o in found if not _inside(o, box))
            ok = len(hole) == 1 and (hole[0].color, hole[0].shape) == (color, shape) and all(
                kept[key] >= cnt for key, cnt in others.items())
            out[name]["success"] += int(ok)
            out[name]["seam"].append(seam_ratio(res, fill))
            if k < 8:
                examples.append((f"inpaint-{name}", res))
    return {m: {"success_rate": v["success"] / max(cases, 1), "seam_ratio": float(np.nanmean(v["seam"])),
                "cases": cases} for m, v in out.items()}


def eval_outpaint(engine: Engine, n: int, seed: int, examples: list, companion: Companion | None = None) -> dict:
    rng = np.random.default_rng([seed, 2])
    success, identical, seams, cases = 0, 0, [], 0
    sides = ("right", "left", "bottom", "top")
    for k, (src, _) in enumerate(_source_scenes(engine, n, seed + 1, "single_object")):
        side = sides[k % 4]
        s = src.size[0]
        amount = s // 2
        found_src = detect(src)
        color, shape = _other_object(rng, *(found_src[0].color, found_src[0].shape) if found_src else ("", ""))
        res = outpaint(engine, src, _caption(color, shape), seed=seed + k, companion=companion, **{side: amount})
        w, h = res.size
        ox, oy = (amount if side == "left" else 0), (amount if side == "top" else 0)
        region = np.asarray(res)[oy:oy + s, ox:ox + s]
        same = bool((region == np.asarray(src)).all())
        new_box = {"right": (s, 0, w, h), "left": (0, 0, amount, h), "bottom": (0, s, w, h), "top": (0, 0, w, amount)}[side]
        new = [o for o in detect(res) if _inside(o, new_box) and (o.color, o.shape) == (color, shape)]
        fill = np.ones((h, w), bool)
        fill[oy:oy + s, ox:ox + s] = False
        cases += 1
        identical += int(same)
        success += int(same and len(new) >= 1)
        seams.append(seam_ratio(res, fill))
        if k < 8:
            examples.append(("outpaint", res))
    return {"success_rate": success / max(cases, 1), "original_identical_rate": identical / max(cases, 1),
            "seam_ratio": float(np.nanmean(seams)), "cases": cases}


def _layout_shift(src_dets, dets, side: int) -> float:
    if not src_dets:
        return 0.0
    dists = []
    for a in src_dets:
        same = [np.hypot(a.cx - b.cx, a.cy - b.cy) for b in dets if (b.color, b.shape) == (a.color, a.shape)]
        dists.append(min(same) if same else float(side))
    return float(np.mean(dists))


def eval_vary(engine: Engine, n: int, seed: int, examples: list) -> dict:
    out = {}
    sources = _source_scenes(engine, n, seed + 2, "two_object")
    for strength in (0.3, 0.9):
        kept, shifts = 0, []
        for k, (src, _) in enumerate(sources):
            src_dets = detect(src)
            var = vary(engine, src, strength=strength, seed=seed + k)[0]
            dets = detect(var)
            kept += int(Counter((d.color, d.shape) for d in dets) == Counter((d.color, d.shape) for d in src_dets))
            shifts.append(_layout_shift(src_dets, dets, src.size[0]))
            if k < 8:
                examples.append((f"vary-{strength}", var))
        out[str(strength)] = {"kept_rate": kept / max(len(sources), 1), "mean_position_shift_px": float(np.mean(shifts)),
                              "cases": len(sources)}
    return out


FUSE_VARIANTS = (("pixels", "join"), ("noise", "join"), ("pixels", "mix"), ("pixels", "prompt"))


def eval_fuse(engine: Engine, n: int, seed: int, examples: list, variants=FUSE_VARIANTS) -> dict:
    """Per variant (mode, condition): the rate of fusions in which both objects are detected.
    condition "join" / "mix": prompt_a and prompt_b's token states side by side / interpolated;
    "prompt": the written prompt "A and B"."""
    rng = np.random.default_rng([seed, 3])
    pairs = []
    for k in range(n):
        ca, sa = str(rng.choice(COLORS)), str(rng.choice(SHAPES))
        cb, sb = _other_object(rng, ca, sa)
        pairs.append(((ca, sa), (cb, sb)))
    sources = [_generate(engine, [_caption(*a), _caption(*b)], seed + 2 * k) for k, (a, b) in enumerate(pairs)]
    out = {}
    for mode, condition in variants:
        both = 0
        for k, ((a, b), (img_a, img_b)) in enumerate(zip(pairs, sources)):
            pa, pb = _caption(*a), _caption(*b)
            prompt = f"{pa} and {pb}" if condition == "prompt" else None
            fused = fuse(engine, img_a, img_b, prompt=prompt, prompt_a=pa, prompt_b=pb, mode=mode,
                         condition="mix" if condition == "mix" else "join", seed=seed + k)
            found = _objects(fused)
            both += int(found[a] >= 1 and found[b] >= 1)
            if k < 8:
                examples.append((f"fuse-{mode}-{condition}", fused))
        out[f"{mode}/{condition}"] = {"both_objects_rate": both / max(n, 1), "cases": n}
    return out


def eval_upscale(upscaler: Engine, n: int, seed: int, examples: list) -> dict:
    """The upscaling model (e.g. shapes-upscale) against bicubic on ground-truth renders."""
    rng = np.random.default_rng([seed, 4])
    out = {}
    for size in (64, 128):
        res = {"model_psnr": [], "bicubic_psnr": [], "model_agree": 0, "bicubic_agree": 0}
        for k in range(n):
            scene = sample_scene(rng, size)
            hi = render(scene.objects, size)
            low = hi.resize((size // 2, size // 2), Image.BOX)
            truth = _objects(hi)
            for name, img in (("model", upscale(upscaler, low, seed=seed + k)), ("bicubic", bicubic_upscale(low))):
                res[f"{name}_psnr"].append(psnr(img, hi))
                res[f"{name}_agree"] += int(_objects(img) == truth)
                if name == "model" and k < 8:
                    examples.append((f"upscale-{size // 2}to{size}", img))
        out[f"{size // 2}->{size}"] = {"model_psnr": float(np.mean(res["model_psnr"])),
                                       "bicubic_psnr": float(np.mean(res["bicubic_psnr"])),
                                       "model_detector_agreement": res["model_agree"] / n,
                                       "bicubic_detector_agreement": res["bicubic_agree"] / n, "cases": n}
    return out


def edit_eval(engine: Engine, tasks, n: int = 50, seed: int = 0, companion: Companion | None = None,
              upscaler: Engine | None = None) -> tuple[dict, list]:
    """Run the named EDIT_TASKS on the engine's model: (results, [(example name, image)]).
    "upscale" needs `upscaler`, the engine of an upscaling model."""
    if "upscale" in tasks and upscaler is None:
        raise ValueError("the upscale task needs an upscaling model's engine (upscaler)")
    examples: list = []
    results: dict = {"model": engine.source, "n": n, "seed": seed}
    for task in tasks:
        if task == "inpaint":
            results["inpaint"] = eval_inpaint(engine, n, seed, examples, companion)
        elif task == "outpaint":
            results["outpaint"] = eval_outpaint(engine, n, seed, examples, companion)
        elif task == "vary":
            results["vary"] = eval_vary(engine, n, seed, examples)
        elif task == "fuse":
            results["fuse"] = eval_fuse(engine, n, seed, examples)
        elif task == "upscale":
            results["upscale"] = eval_upscale(upscaler, n, seed, examples)
    return results, examples


def save_edit_outputs(results: dict, examples: list, folder: Path, command: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "results.json", results)
    by_task: dict[str, list] = {}
    for name, im in examples:
        by_task.setdefault(name, []).append(im)
    for name, ims in by_task.items():
        h = max(im.size[1] for im in ims[:8])
        w = sum(im.size[0] for im in ims[:8]) + 4 * (len(ims[:8]) - 1)
        sheet = Image.new("RGB", (w, h), (128, 128, 128))
        x = 0
        for im in ims[:8]:
            sheet.paste(im, (x, 0))
            x += im.size[0] + 4
        atomic_save_image(folder / f"{name}.png", sheet)
    lines = [f"# ditkit eval edit: {results.get('model')}", "", f"Command: `{command}`" if command else "", "",
             "```json", json.dumps(results, indent=2), "```", ""]
    lines += [f"![{name}]({name}.png)" for name in by_task]
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")
