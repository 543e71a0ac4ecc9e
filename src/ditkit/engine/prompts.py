"""Default prompts for a model: a few of its dataset's built-in benchmark prompts
(ditkit.data.benchmark_prompts), for cache calibration, pruning calibration and quick checks."""

from __future__ import annotations

from ditkit.data import benchmark_prompts


def model_dataset(config: dict) -> str | None:
    """The training dataset a model folder's config records ("shapes", "digits"), if any."""
    return (config.get("data") or {}).get("dataset")


def default_prompts(dataset: str | None, n: int = 8, seed: int = 4242) -> list[str]:
    """About n of the dataset's benchmark prompts, spread over its classes. ValueError when the
    dataset (None: the model records none) has no built-in prompts."""
    prompts = benchmark_prompts(dataset, n, seed=seed) if dataset else None
    if prompts is None:
        what = f"dataset {dataset!r} has" if dataset else "this model records no dataset, so there are"
        raise ValueError(f"{what} no built-in default prompts; pass prompts")
    return prompts
