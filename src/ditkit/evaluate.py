"""Evaluation: ShapesEval, the GenEval-style compositional benchmark on the
shapes world (see SHAPES.md for the contract and scoring rules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .config import SampleConfig
from .data import shapes
from .guidance import APG
from .pipeline import generate_tensor, to_pil


def shapes_eval(model: torch.nn.Module, encoder, sample: SampleConfig, per_category: int = 50, seed: int = 0,
                apg: APG | None = None, precision: str = "fp32", batch_size: int = 32,
                callback: Callable[[int, int], None] | None = None, return_images: bool = False) -> dict:
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
                            batch_size=batch_size, callback=callback)
    finally:
        model.train(was_training)
    images = to_pil(x)
    result = shapes.evaluate(images, prompts, categories)
    result["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                          "shift": sample.shift, "apg": sample.apg, "size": sample.size,
                          "per_category": per_category, "seed": seed}
    if return_images:
        result["images"] = images
        result["prompts"] = list(zip(categories, prompts))
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


def save_eval_outputs(result: dict, out_dir: str | Path) -> None:
    """Write images/NNNN.png, grid.png, results.json (scores and per-image correctness)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (im, (cat, prompt)) in enumerate(zip(result["images"], result["prompts"])):
        im.save(out / "images" / f"{i:04d}.png")
        rows.append({"index": i, "category": cat, "prompt": prompt, "correct": bool(shapes.score_image(im, prompt))})
    image_grid(result["images"]).save(out / "grid.png")
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts")}
    (out / "results.json").write_text(json.dumps({**summary, "per_image": rows}, indent=2) + "\n")
