"""What `ditkit eval` leaves in --out-dir: images, a grid, plots, results.json and a
one-page report.md per benchmark (the file writers are ditkit.core.reports)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ditkit.core.files import atomic_save_image
from ditkit.core.reports import bar_plot, confusion_plot, markdown_table, write_json, write_report
from ditkit.evaluation.shapes_scoring import score_image


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
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (im, (cat, prompt)) in enumerate(zip(result["images"], result["prompts"])):
        atomic_save_image(out / "images" / f"{i:04d}.png", im)
        rows.append({"index": i, "category": cat, "prompt": prompt, "correct": bool(score_image(im, prompt))})
    atomic_save_image(out / "grid.png", image_grid(result["images"]))
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
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(result["images"]):
        atomic_save_image(out / "images" / f"{i:04d}.png", im)
    atomic_save_image(out / "grid.png", image_grid(result["images"], columns=result["settings"]["per_digit"]))
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


def save_fwd_outputs(result: dict, out_dir: str | Path, command: str) -> None:
    """results.json and report.md of a Frechet Wavelet Distance between two image sets
    (result: {"fwd", "a", "b", "level", "n_a", "n_b"})."""
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    write_json(out / "results.json", result)
    write_report(out / "report.md", "Frechet Wavelet Distance", command, [
        ("Result", markdown_table(["A", "B", "images A", "images B", "level", "FWD"],
                                  [[result["a"], result["b"], result["n_a"], result["n_b"], result["level"],
                                    result["fwd"]]])),
    ])
