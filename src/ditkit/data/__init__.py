"""Training data: the built-in worlds (the shapes world in shapes/, scikit-learn's real digits in
digits.py) and the user's own data (sources/: data.kind folder, webdataset, hf; features.py:
precomputed text features). training_batch is what a trainer calls: a rank's slice of a step's
batch of any kind."""

from __future__ import annotations

from typing import Iterator

from ditkit.data import digits, shapes, video
from ditkit.data.sources import open_source

DATASETS = ("shapes", "digits", "shapes-video")
VIDEO_DATASETS = ("shapes-video",)  # clips (B, F, 3, S, S) instead of images


def check_mix_dataset(dataset: str) -> None:
    """Category weights (data.mix) exist only for the shapes world."""
    if dataset != "shapes":
        raise ValueError(f"data.mix re-weights the shapes world's categories; dataset {dataset!r} has none")


def make_batch(dataset: str, seed: int, step: int, batch_size: int, size: int, mix=None, frames: int = 0):
    """A training batch of a built-in dataset: images (B, 3, S, S) in [-1, 1] and captions,
    depending only on (seed, step); for shapes-video clips (B, F, 3, S, S) of `frames` frames.
    mix: the shapes world's category weights (data.mix)."""
    if mix:
        check_mix_dataset(dataset)
    if dataset == "shapes":
        return shapes.make_batch(seed, step, batch_size, size, mix)
    if dataset == "digits":
        return digits.make_batch(seed, step, batch_size, size)
    if dataset == "shapes-video":
        return video.make_video_batch(seed, step, batch_size, size, frames or video.DEFAULT_FRAMES)
    raise ValueError(f"no built-in data for dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


def benchmark_prompts(dataset: str, n: int, seed: int = 0) -> list[str] | None:
    """About n of a built-in dataset's benchmark prompts, spread over its classes (ShapesEval
    categories, digits), for calibration; None for a dataset without built-in prompts."""
    if dataset == "shapes":
        return [p for _, p in shapes.benchmark_prompts(max(1, n // 4), seed)]
    if dataset == "digits":
        return digits.benchmark_prompts(max(1, n // 10))[:n]
    return None  # shapes-video: its prompts are evaluation.video_eval's


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


class TrainingBatch(tuple):
    """(images, captions), unpacked as a pair, with `skipped`: how many unreadable samples of the
    user's data were replaced to fill this batch (0 for the built-in worlds). It travels with the
    batch out of a DataLoader worker, so the trainer can log it."""

    skipped: int

    def __new__(cls, images, captions: list[str], skipped: int = 0):
        batch = super().__new__(cls, (images, captions))
        batch.skipped = skipped
        return batch

    def __reduce__(self):  # keep `skipped` when a DataLoader worker pickles the batch
        return (TrainingBatch, (self[0], self[1], self.skipped))


def training_batch(data_cfg, seed: int, step: int, batch_size: int, size: int, rank: int = 0,
                   world: int = 1) -> TrainingBatch:
    """Rank `rank`'s part of the global training batch of step `step`: images
    (batch_size / world, 3, S, S) float32 in [-1, 1] and their captions (a TrainingBatch, which
    also counts the unreadable samples it replaced). `data_cfg` is the config's data section
    (DataConfig). For the built-in worlds and the map-style kinds (folder, hf) the global batch
    depends only on (seed, step), so a run's data is the same on any world size: built-in worlds
    draw the whole batch and slice it (a few milliseconds at 64x64); folder and hf load only the
    rank's samples (sources/mapstyle.py). webdataset streams shards per rank and data worker,
    so its step's data also depends on the world size and worker count (sources/wds.py)."""
    part = rank_slice(batch_size, rank, world)
    kind = getattr(data_cfg, "kind", "builtin")
    if kind == "builtin":
        x0, captions = make_batch(data_cfg.dataset, seed, step, batch_size, size, data_cfg.mix,
                                  getattr(data_cfg, "frames", 0))
        return TrainingBatch(x0[part], captions[part])
    source = open_source(data_cfg)
    if kind == "webdataset":
        images, captions, skipped = source.batch(seed, step, batch_size, size, part, rank, world)
    else:
        images, captions, skipped = source.batch(seed, step, batch_size, size, part)
    import torch  # lazy, as in digits.py: importing the data module should not pull in torch

    return TrainingBatch(torch.from_numpy(images), captions, skipped)


def check_data(data_cfg, world: int = 1, workers: int = 0) -> None:
    """Open the config's data now (the folder indexed, shards listed, the datasets folder read),
    so a bad data.path fails with its own message before training starts, not in a data worker.
    world, workers: the run's ranks and data workers per rank (webdataset needs a shard for each
    of their world x workers streams)."""
    kind = getattr(data_cfg, "kind", "builtin")
    if kind != "builtin":
        source = open_source(data_cfg)
        if kind == "webdataset":
            source.check_streams(world, max(workers, 1))


def data_captions(data_cfg) -> Iterator[str]:
    """Every caption of the user's data (for precomputing text features); unreadable ones are
    skipped with a warning. The built-in worlds are refused: they draw new captions every step
    from a generator (the shapes world composes them from colours, shapes, counts and
    relations), so there is no fixed list to precompute, and the trainer's text encoder already
    encodes each distinct caption only once."""
    kind = getattr(data_cfg, "kind", "builtin")
    if kind == "builtin":
        raise ValueError(f"data.kind builtin ({data_cfg.dataset}) has no fixed caption list to precompute: its "
                         "captions are drawn anew every step and the trainer's text encoder caches each one; "
                         "precomputed features are for data.kind folder, webdataset or hf")
    return open_source(data_cfg).captions()
