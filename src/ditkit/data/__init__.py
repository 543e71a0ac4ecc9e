"""Built-in datasets: the shapes world (shapes/) and scikit-learn's real digits (digits.py)."""

from __future__ import annotations

from ditkit.data import digits, shapes

DATASETS = ("shapes", "digits")


def check_mix_dataset(dataset: str) -> None:
    """Category weights (data.mix) exist only for the shapes world."""
    if dataset != "shapes":
        raise ValueError(f"data.mix re-weights the shapes world's categories; dataset {dataset!r} has none")


def make_batch(dataset: str, seed: int, step: int, batch_size: int, size: int, mix=None):
    """A training batch of a built-in dataset: images (B, 3, S, S) in [-1, 1] and captions,
    depending only on (seed, step). mix: the shapes world's category weights (data.mix)."""
    if mix:
        check_mix_dataset(dataset)
    if dataset == "shapes":
        return shapes.make_batch(seed, step, batch_size, size, mix)
    if dataset == "digits":
        return digits.make_batch(seed, step, batch_size, size)
    raise ValueError(f"no built-in data for dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


def benchmark_prompts(dataset: str, n: int, seed: int = 0) -> list[str] | None:
    """About n of a built-in dataset's benchmark prompts, spread over its classes (ShapesEval
    categories, digits), for calibration; None for a dataset without built-in prompts."""
    if dataset == "shapes":
        return [p for _, p in shapes.benchmark_prompts(max(1, n // 4), seed)]
    if dataset == "digits":
        return digits.benchmark_prompts(max(1, n // 10))[:n]
    return None
