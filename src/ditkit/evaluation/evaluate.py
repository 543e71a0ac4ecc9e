"""Evaluation: ShapesEval, the GenEval-style compositional benchmark on the
shapes world (see SHAPES.md for the contract and scoring rules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ditkit.core.config import SampleConfig
from ditkit.data import shapes
from ditkit.core.guidance import APG
from ditkit.api import generate_tensor, to_pil


def shapes_eval(model: torch.nn.Module, encoder, sample: SampleConfig, per_category: int = 50, seed: int = 0,
                apg: APG | None = None, precision: str = "fp32", batch_size: int = 32,
                callback: Callable[[int, int], None] | None = None, return_images: bool = False,
                cache=None) -> dict:
    """Generate per_category images for each ShapesEval category and score them.

    Prompts come from shapes.benchmark_prompts(per_category, seed); image i uses
    seed + i. Returns {"overall", "categories", "n", "settings"} (+ "images",
    "prompts" if return_images)."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    pairs = shapes.benchmark_prompts(per_category, seed)
    categories = [c for c, _ in pairs]
    prompts = [p for _, p in pairs]
    was_training = model.training
    model.eval()
    try:
        x = generate_tensor(model, encoder, prompts, sample, seed, apg, precision=precision,
                            batch_size=batch_size, callback=callback, cache=cache)
    finally:
        model.train(was_training)
    images = to_pil(x)
    result = shapes.evaluate(images, prompts, categories)
    result["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                          "shift": sample.shift, "apg": sample.apg, "size": sample.size,
                          "prior_until": sample.prior_until, "prior_model": sample.prior_model,
                          "per_category": per_category, "seed": seed}
    if return_images:
        result["images"] = images
        result["prompts"] = list(zip(categories, prompts))
    return result


def digits_eval(model: torch.nn.Module, encoder, sample: SampleConfig, per_digit: int = 20, seed: int = 0,
                precision: str = "fp32", batch_size: int = 50, return_images: bool = False) -> dict:
    """Generate per_digit images of each digit 0-9 and score them with the digits judge
    (a classifier fit on the real training split). Image i uses seed + i.
    Returns {"accuracy", "per_digit", "predicted", "confusion", "n", "settings"} (+ "images", "prompts")."""
    from ditkit.data import digits

    prompts = digits.benchmark_prompts(per_digit)
    was_training = model.training
    model.eval()
    try:
        x = generate_tensor(model, encoder, prompts, sample, seed, precision=precision, batch_size=batch_size)
    finally:
        model.train(was_training)
    images = to_pil(x)
    result = digits.digit_accuracy(images, prompts)
    result["n"] = len(images)
    result["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                          "shift": sample.shift, "size": sample.size, "per_digit": per_digit, "seed": seed}
    if return_images:
        result["images"] = images
        result["prompts"] = prompts
    return result


def image_grid(images: list[Image.Image], columns: int = 10, pad: int = 2) -> Image.Image:
    """Tile images (same size) into one grid on a gray background."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (128, 128, 128))
    for i, im in enumerate(images):
        grid.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


def save_eval_outputs(result: dict, out_dir: str | Path, command: str = "") -> None:
    """Write images/NNNN.png, grid.png, results.json (scores and per-image correctness),
    scores.png (per-category bars) and report.md."""
    from ditkit.core.reports import bar_plot, markdown_table, write_json, write_report

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (im, (cat, prompt)) in enumerate(zip(result["images"], result["prompts"])):
        im.save(out / "images" / f"{i:04d}.png")
        rows.append({"index": i, "category": cat, "prompt": prompt, "correct": bool(shapes.score_image(im, prompt))})
    image_grid(result["images"]).save(out / "grid.png")
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts")}
    write_json(out / "results.json", {**summary, "per_image": rows})
    bar_plot(out / "scores.png", {"overall": result["overall"], **result["categories"]}, "ShapesEval")
    wrong = [r for r in rows if not r["correct"]][:20]
    write_report(out / "report.md", "ShapesEval", command or "ditkit eval shapes", [
        ("Settings", "```json\n" + json.dumps(result["settings"], indent=2) + "\n```"),
        ("Scores", markdown_table(["overall", *result["categories"]],
                                  [[result["overall"], *result["categories"].values()]]) + f"\n\n{result['n']} images."),
        ("Plots", "![scores](scores.png)\n\nAll images, in prompt order: ![grid](grid.png)"),
        ("First failures", "\n".join(f"- images/{r['index']:04d}.png: {r['prompt']}" for r in wrong) or "none"),
    ])


def save_digits_outputs(result: dict, out_dir: str | Path, command: str = "") -> None:
    """Write images/NNNN.png, grid.png, results.json, per_digit.png, confusion.png and report.md."""
    from ditkit.core.reports import bar_plot, confusion_plot, markdown_table, write_json, write_report

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(result["images"]):
        im.save(out / "images" / f"{i:04d}.png")
    image_grid(result["images"], columns=result["settings"]["per_digit"]).save(out / "grid.png")
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts")}
    write_json(out / "results.json", summary)
    bar_plot(out / "per_digit.png", result["per_digit"], "digit accuracy (judge vs prompt)", ylabel="accuracy")
    confusion_plot(out / "confusion.png", result["confusion"], "prompted vs predicted digit")
    body = markdown_table(["accuracy", *[f"digit {d}" for d in result["per_digit"]]],
                          [[result["accuracy"], *result["per_digit"].values()]])
    if "fwd" in result:
        f = result["fwd"]
        body += ("\n\n" + markdown_table(["FWD(generated, real test)", f"FWD({f['images']} real train, real test)",
                                          "ratio"], [[f["generated_vs_test"], f["train_vs_test"], f["ratio"]]]))
    write_report(out / "report.md", "Digits benchmark", command or "ditkit eval digits", [
        ("Settings", "```json\n" + json.dumps(result["settings"], indent=2) + "\n```"),
        ("Scores", body + f"\n\n{result['n']} images; the judge is an RBF SVM fit on the real training split."),
        ("Plots", "![per digit](per_digit.png) ![confusion](confusion.png)\n\nImages (one row per digit): ![grid](grid.png)"),
    ])


def best_of_sweep(model: torch.nn.Module, encoder, sample: SampleConfig, prompts: list[str], ns: list[int],
                  verifier, judge: Callable[[list[Image.Image], list[str]], dict], seed: int = 0,
                  precision: str = "fp32", batch_size: int = 32,
                  callback: Callable[[int, int], None] | None = None) -> dict:
    """Inference-time scaling curve: for each N in ns, the judge's result when each prompt
    keeps the best of its first N candidates by the verifier (ditkit.accel.scaling).

    max(ns) candidates per prompt are generated once (candidate k of prompt j from seed
    + j + k * CANDIDATE_STRIDE; candidate 0 is the plain image), so the rows share
    candidates and cost is reported as images generated per prompt (= N).
    Returns {"rows": [{"best_of", "result", "images_per_prompt"}], "seconds_per_image",
    "chosen_images" (best of max N), "scores" (P, max N)}."""
    import time

    from ditkit.accel.scaling import candidate_seeds, check_best_of, get_verifier, score_candidates

    if not ns:
        raise ValueError("give at least one N")
    for n in ns:
        check_best_of(n)
    get_verifier(verifier)
    n_max = max(ns)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        flat = [p for p in prompts for _ in range(n_max)]
        x = generate_tensor(model, encoder, flat, sample, candidate_seeds(len(prompts), n_max, seed),
                            precision=precision, batch_size=batch_size, callback=callback)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    best = score_candidates(to_pil(x), prompts, n_max, verifier)
    rows = []
    for n in sorted(set(ns)):
        images, _ = best.best_of(n)
        rows.append({"best_of": n, "images_per_prompt": n, "result": judge(images, prompts)})
    return {"rows": rows, "seconds_per_image": seconds / len(flat), "chosen_images": best.images,
            "scores": best.scores.tolist()}


def shapes_best_of_eval(model: torch.nn.Module, encoder, sample: SampleConfig, ns: list[int],
                        per_category: int = 25, seed: int = 0, verifier="shapes", **kwargs) -> dict:
    """ShapesEval against best-of-N (SANA 1.5's inference-time scaling) for each N in ns."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    pairs = shapes.benchmark_prompts(per_category, seed)
    categories = [c for c, _ in pairs]
    prompts = [p for _, p in pairs]
    out = best_of_sweep(model, encoder, sample, prompts, ns, verifier,
                        lambda ims, ps: shapes.evaluate(ims, ps, categories), seed=seed, **kwargs)
    out["prompts"] = list(zip(categories, prompts))
    out["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                       "shift": sample.shift, "size": sample.size, "prior_until": sample.prior_until,
                       "prior_model": sample.prior_model,
                       "per_category": per_category, "seed": seed,
                       "verifier": verifier if isinstance(verifier, str) else getattr(verifier, "__name__", "callable")}
    return out


def save_best_of_outputs(result: dict, out_dir: str | Path, title: str, command: str) -> None:
    """results.json (one row per N), scaling.png, grid.png (best of max N), report.md."""
    from ditkit.core.reports import line_plot, markdown_table, write_json, write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    ns = [r["best_of"] for r in rows]
    first = rows[0]["result"]
    if "categories" in first:
        series = {"overall": [r["result"]["overall"] for r in rows]}
        for cat in first["categories"]:
            series[cat] = [r["result"]["categories"][cat] for r in rows]
        header = ["N", "images per prompt", "overall", *first["categories"]]
        table = [[r["best_of"], r["best_of"], r["result"]["overall"], *r["result"]["categories"].values()] for r in rows]
    else:
        series = {"accuracy": [r["result"]["accuracy"] for r in rows]}
        header = ["N", "images per prompt", "accuracy"]
        table = [[r["best_of"], r["best_of"], r["result"]["accuracy"]] for r in rows]
    line_plot(out / "scaling.png", ns, series, title, "N (candidates per prompt)", logx=True)
    image_grid(result["chosen_images"]).save(out / "grid.png")
    summary = {k: v for k, v in result.items() if k not in ("chosen_images", "prompts")}
    write_json(out / "results.json", summary)
    cost = (f"Sampling cost: {result['seconds_per_image']:.3f} s per candidate image, so best-of-N costs N times "
            f"the plain generation ({rows[-1]['best_of']} candidates per prompt were generated once; each N reads the "
            "first N).")
    write_report(out / "report.md", title, command, [
        ("Settings", "```json\n" + json.dumps(result["settings"], indent=2) + "\n```"),
        ("Scores", markdown_table(header, table) + "\n\n" + cost),
        ("Plots", f"![scaling](scaling.png)\n\nBest-of-{rows[-1]['best_of']} images: ![grid](grid.png)"),
    ])
