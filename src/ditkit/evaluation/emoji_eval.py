"""The emoji benchmark: does a model draw the emoji it is asked for, also for names it never saw?

For every caption of the training split (or an evenly spaced subset) and of the held-out split
of a folder that `ditkit data emoji` wrote (ditkit.data.emoji), one image is generated (image
i with seed + i). Two numbers, each reported apart for training and held-out names:

- prompt fidelity: the share of prompts whose generated image's nearest real emoji, among ALL
  real emoji (training and held-out), is the one named. Chance is 1 / (number of real emoji).
  Two distances: "pixel" (squared L2 over the RGB pixels in [0, 1]) and "lowpass" (the same
  over 4x4 block means: the level-2 Haar approximation band up to a factor of 4, so small
  shifts and fine detail matter less than layout and colour). Held-out fidelity can be above
  chance only if the text encoder's sense of the words carries over (CLIP-style
  retrieval accuracy, Radford et al. 2021, with pixels standing in for an image encoder: the
  benchmark needs no network beyond the model).
- FWD (ditkit.evaluation.fwd, Veeramacheneni et al. 2025) of the generated images against the
  real images of the same names; FWD is biased upwards for small sets, so the held-out value
  (50 images) is not comparable with the training one.

What a run writes (results.json, grids of real|generated pairs, report.md) is save_emoji_outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ditkit.core.config import SampleConfig
from ditkit.core.files import atomic_save_image
from ditkit.core.images import to_pil
from ditkit.core.reports import markdown_table, write_json, write_report
from ditkit.data.emoji import EmojiSplit
from ditkit.engine import ProgressCallback, generate_tensor
from ditkit.evaluation.fwd import DEFAULT_LEVEL, fwd
from ditkit.evaluation.outputs import image_grid

METRICS = ("pixel", "lowpass")
LOWPASS = 4  # block side of the "lowpass" distance: the Haar level-2 approximation band
GRID_PAIRS = 50  # real|generated pairs per grid


def image_features(images: np.ndarray, metric: str) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float64 (N, D) features whose squared L2 distance is the metric's
    (up to a constant factor). They hold integers (pixel values, or their 4x4 block sums), so
    every product and sum below stays an integer far under 2**53: distances are exact whatever
    order a matmul adds in, an image is at distance 0 from its copy, and ties are real ties."""
    if metric not in METRICS:
        raise ValueError(f"unknown distance {metric!r}; allowed: {', '.join(METRICS)}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    x = torch.from_numpy(images).double()  # (N, H, W, 3), values 0..255
    if metric == "lowpass":
        if h % LOWPASS or w % LOWPASS:
            raise ValueError(f"the lowpass distance needs sides divisible by {LOWPASS}, got {h}x{w}")
        x = x.reshape(n, h // LOWPASS, LOWPASS, w // LOWPASS, LOWPASS, 3).sum(dim=(2, 4))
    return x.reshape(n, -1)


def nearest_real(generated: np.ndarray, real: np.ndarray, metric: str = "pixel") -> np.ndarray:
    """For each generated image (N, H, W, 3) the index (N,) of the closest real one (M, H, W, 3);
    ties go to the lower index."""
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated images {generated.shape[1:3]} and real ones {real.shape[1:3]} differ in size")
    g, r = image_features(generated, metric), image_features(real, metric)
    d = (g * g).sum(1, keepdim=True) - 2 * g @ r.T + (r * r).sum(1)[None]  # exact: see image_features
    return d.argmin(dim=1).numpy()  # torch.argmin returns the first of equal minima


def prompt_fidelity(generated: np.ndarray, targets: Sequence[int], real: np.ndarray, metric: str = "pixel") -> float:
    """The share of generated images whose nearest real image is their target (an index into real)."""
    targets = np.asarray(targets)
    if len(targets) != len(generated) or len(generated) == 0:
        raise ValueError(f"need one target per generated image and at least one image, got {len(targets)} targets "
                         f"for {len(generated)} images")
    return float((nearest_real(generated, real, metric) == targets).mean())


@dataclass(frozen=True)
class EmojiBenchmark:
    """The prompts of one run and the real images they are judged against: real holds every
    real emoji (training split first), targets[i] is prompt i's index into it."""
    prompts: list[str]
    splits: list[str]  # "train" or "heldout", per prompt
    targets: np.ndarray
    real: np.ndarray
    real_names: list[str]


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise ValueError(f"the number of training names must be >= 1, got {k}")
    return sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(k)})


def benchmark(train: EmojiSplit, heldout: EmojiSplit | None, train_limit: int | None = None) -> EmojiBenchmark:
    """The prompts (train_limit evenly spaced training names, then every held-out name)."""
    names = list(train.names) + (list(heldout.names) if heldout is not None else [])
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"captions must be unique across the splits to judge fidelity; repeated: {dup[:5]}")
    real = train.images if heldout is None else np.concatenate([train.images, heldout.images])
    picked = evenly_spaced(len(train.names), train_limit)
    held = list(range(len(train.names), len(names))) if heldout is not None else []
    order = picked + held
    return EmojiBenchmark(prompts=[names[i] for i in order], splits=["train"] * len(picked) + ["heldout"] * len(held),
                          targets=np.array(order), real=real, real_names=names)


def score(generated: np.ndarray, bench: EmojiBenchmark, level: int = DEFAULT_LEVEL) -> dict:
    """Fidelity and FWD of generated uint8 (N, H, W, 3) images, one per prompt of bench."""
    splits = np.array(bench.splits)
    nearest = {m: nearest_real(generated, bench.real, m) for m in METRICS}
    fidelity, fwds, counts = {}, {}, {}
    for split in ("train", "heldout"):
        rows = np.flatnonzero(splits == split)
        counts[split] = int(len(rows))
        if not len(rows):
            continue
        fidelity[split] = {m: float((nearest[m][rows] == bench.targets[rows]).mean()) for m in METRICS}
        fwds[split] = _fwd(generated[rows], bench.real[bench.targets[rows]], level)
    fwds["all"] = _fwd(generated, bench.real[bench.targets], level)
    per_prompt = [{"prompt": p, "split": s, **{f"nearest_{m}": bench.real_names[int(nearest[m][i])] for m in METRICS}}
                  for i, (p, s) in enumerate(zip(bench.prompts, bench.splits))]
    return {"fidelity": fidelity, "fwd": fwds, "n": counts, "real_emoji": len(bench.real),
            "chance": 1.0 / len(bench.real), "per_prompt": per_prompt}


def _fwd(a: np.ndarray, b: np.ndarray, level: int) -> float | None:
    """FWD of two uint8 sets; None below the 2 images a covariance needs. fwd warns (FWDWarning)
    when a set has fewer images than the per-packet dimension (48 at 64 px, level 4)."""
    return fwd(a, b, level=level) if len(a) >= 2 else None


def emoji_eval(model: torch.nn.Module, encoder, sample: SampleConfig, train: EmojiSplit,
               heldout: EmojiSplit | None = None, seed: int = 0, train_limit: int | None = None,
               precision: str = "fp32", batch_size: int = 32, level: int = DEFAULT_LEVEL,
               callback: ProgressCallback | None = None, return_images: bool = False) -> dict:
    """Generate one image per prompt of benchmark(train, heldout, train_limit) (image i: seed + i)
    and score it (see the module docstring). Returns score()'s dict plus "settings"
    (+ "images", "prompts", "real" with return_images)."""
    size = train.images.shape[1]
    if sample.size != size:
        raise ValueError(f"the emoji images are {size}x{size} but the model samples at {sample.size}; give --size {size} "
                         f"or render the data at {sample.size} (ditkit data emoji --size {sample.size})")
    bench = benchmark(train, heldout, train_limit)
    if len(bench.real) < 2:
        raise ValueError("the emoji benchmark needs at least 2 real emoji")
    was_training = model.training
    model.eval()
    try:
        x = generate_tensor(model, encoder, bench.prompts, sample, seed, precision=precision, batch_size=batch_size,
                            callback=callback)
    finally:
        model.train(was_training)
    images = to_pil(x)
    generated = np.stack([np.asarray(im.convert("RGB")) for im in images])
    result = score(generated, bench, level)
    result["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                          "shift": sample.shift, "size": sample.size, "seed": seed, "precision": precision,
                          "train_limit": train_limit, "fwd_level": level}
    if return_images:
        result.update(images=images, prompts=bench.prompts, real=bench.real[bench.targets])
    return result


def pairs_grid(real: np.ndarray, generated: Sequence[Image.Image], pairs_per_row: int = 10) -> Image.Image:
    """Real | generated side by side, pairs_per_row pairs a row."""
    tiles = []
    for r, g in zip(real, generated):
        tiles += [Image.fromarray(r), g.convert("RGB")]
    return image_grid(tiles, columns=2 * pairs_per_row)


def save_emoji_outputs(result: dict, out_dir: str | Path, command: str = "") -> None:
    """results.json (scores, settings, per-prompt nearest names), grid_train.png and
    grid_heldout.png (up to GRID_PAIRS real|generated pairs each) and report.md; needs a result
    made with return_images=True."""
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    splits = [row["split"] for row in result["per_prompt"]]
    grids = []
    for split in ("train", "heldout"):
        rows = [i for i, s in enumerate(splits) if s == split]
        rows = [rows[i] for i in evenly_spaced(len(rows), GRID_PAIRS)] if rows else []
        if rows:
            atomic_save_image(out / f"grid_{split}.png",
                              pairs_grid(result["real"][rows], [result["images"][i] for i in rows]))
            grids.append(f"{split} names (real | generated): ![{split}](grid_{split}.png)")
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts", "real")}
    write_json(out / "results.json", summary)
    header = ["split", "prompts", *[f"fidelity ({m})" for m in METRICS], "FWD"]
    table = [[s, result["n"][s], *[result["fidelity"][s][m] for m in METRICS], result["fwd"].get(s)]
             for s in ("train", "heldout") if s in result["fidelity"]]
    write_report(out / "report.md", "Emoji benchmark", command or "ditkit eval emoji", [
        ("Settings", "```json\n" + json.dumps(result["settings"], indent=2) + "\n```"),
        ("Scores", markdown_table(header, table) + f"\n\nFidelity: the share of prompts whose image's nearest of the "
         f"{result['real_emoji']} real emoji is the named one (chance {result['chance']:.4f}). FWD: generated vs the "
         f"real images of the same names (all prompts: {result['fwd']['all']})."),
        ("Grids", "\n\n".join(grids)),
    ])
