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


def check_world(batch_size: int, world: int) -> None:
    """The global batch is split evenly over the ranks of a distributed run."""
    if world < 1 or batch_size % world:
        raise ValueError(f"train.batch_size {batch_size} (the global batch) must be a multiple of the world size "
                         f"{world}, and at least it; each rank trains on batch_size / world samples")


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """The part of a global batch of `batch_size` that rank `rank` of `world` trains on."""
    check_world(batch_size, world)
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def training_batch(data_cfg, seed: int, step: int, batch_size: int, size: int, rank: int = 0,
                   world: int = 1):
    """Rank `rank`'s part of the global training batch of step `step`: images
    (batch_size / world, 3, S, S) in [-1, 1] and their captions. The global batch depends only
    on (seed, step), so a run's data is the same on any world size; `data_cfg` is the config's
    data section (DataConfig). Built-in worlds draw the whole batch and slice it (a few
    milliseconds at 64x64)."""
    part = rank_slice(batch_size, rank, world)
    x0, captions = make_batch(data_cfg.dataset, seed, step, batch_size, size, data_cfg.mix)
    return x0[part], captions[part]
