"""Evaluation runs: ShapesEval, the GenEval-style compositional benchmark on the shapes
world (see docs/shapes-world.md for the contract and scoring rules), and the real-data
digits benchmark (the judge's accuracy, and FWD against the real test split).
What a run writes to disk is in ditkit.evaluation.outputs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ditkit.core.config import SampleConfig
from ditkit.core.guidance import APG
from ditkit.core.images import to_pil
from ditkit.data import digits, shapes
from ditkit.engine import ProgressCallback, generate_tensor
from ditkit.evaluation.digits_judge import digit_accuracy
from ditkit.evaluation.fwd import fwd
from ditkit.evaluation.shapes_scoring import evaluate


def shapes_eval(model: torch.nn.Module, encoder, sample: SampleConfig, per_category: int = 50, seed: int = 0,
                apg: APG | None = None, precision: str = "fp32", batch_size: int = 32,
                callback: ProgressCallback | None = None, return_images: bool = False,
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
    result = evaluate(images, prompts, categories)
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
    prompts = digits.benchmark_prompts(per_digit)
    was_training = model.training
    model.eval()
    try:
        x = generate_tensor(model, encoder, prompts, sample, seed, precision=precision, batch_size=batch_size)
    finally:
        model.train(was_training)
    images = to_pil(x)
    result = digit_accuracy(images, prompts)
    result["n"] = len(images)
    result["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                          "shift": sample.shift, "size": sample.size, "per_digit": per_digit, "seed": seed}
    if return_images:
        result["images"] = images
        result["prompts"] = prompts
    return result


def digits_fwd(images: list[Image.Image]) -> dict:
    """FWD of generated digits against the real test split, next to the real baseline: FWD of
    as many real training images (a fixed random subset) against the same test split. FWD is
    biased upwards for small sets, so the baseline uses the generated set's size, not all 1,347.
    Returns {"generated_vs_test", "train_vs_test", "images", "ratio"}."""
    generated = np.stack([np.asarray(im.convert("RGB")) for im in images])
    test, train = digits.load_split("test").images, digits.load_split("train").images
    n = min(len(generated), len(train))
    subset = train[np.random.default_rng(0).choice(len(train), n, replace=False)]
    gen_test, train_test = fwd(generated, test), fwd(subset, test)
    return {"generated_vs_test": gen_test, "train_vs_test": train_test, "images": n,
            "ratio": gen_test / train_test if train_test > 0 else float("inf")}


def benchmark_prompts_for(dataset: str | None) -> list[str] | None:
    """The benchmark prompts of a model's dataset (FWD's default prompts for a generated set):
    ShapesEval's 200 prompts (50 per category, seed 0), or one per digit; None for another dataset."""
    if dataset == "digits":
        return digits.benchmark_prompts(1)
    if dataset == "shapes":
        return [p for _, p in shapes.benchmark_prompts(50, 0)]
    return None
