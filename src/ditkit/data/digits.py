"""A real-data benchmark: scikit-learn's handwritten digits.

The 1,797 real 8x8 scans (UCI optical digits, shipped inside scikit-learn, so
nothing is downloaded) are drawn as dark ink on white paper, upsampled
bilinearly to 32x32 RGB (gray in all three channels, so every ditkit tool that
speaks RGB works on them) and split train/test with a fixed seed, stratified by
digit. Captions: "a handwritten digit 7".

The judge that scores generated digits (a classifier fit on the training split)
is evaluation code: ditkit.evaluation.digits_judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is only needed by make_batch and the renderer; keep the import lazy.
    import torch

SPLIT_SEED = 0
TEST_FRACTION = 0.25
SIZE = 32
CAPTION = "a handwritten digit {}"
_CAPTION_RE = re.compile(r"^\s*a handwritten digit ([0-9])\s*$")


@dataclass(frozen=True)
class DigitsSplit:
    """uint8 images (N, S, S, 3), dark ink on white, and int labels (N,)."""
    images: np.ndarray
    labels: np.ndarray


def caption_for(digit: int) -> str:
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    return CAPTION.format(int(digit))


def parse_digit(prompt: str) -> int:
    """The digit a caption asks for ("a handwritten digit 7" -> 7)."""
    m = _CAPTION_RE.match(prompt.lower())
    if not m:
        raise ValueError(f"not a digits caption: {prompt!r}; expected 'a handwritten digit N' with N in 0-9")
    return int(m.group(1))


def _render(raw: np.ndarray, size: int) -> np.ndarray:
    """(N, 8, 8) ink values in [0, 16] -> (N, size, size, 3) uint8, ink dark on white."""
    import torch  # lazy: importing the data module should not pull in torch
    import torch.nn.functional as F

    ink = torch.from_numpy(raw.astype(np.float32) / 16.0)[:, None]
    ink = F.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    gray = (255.0 * (1.0 - ink[:, 0])).round().to(torch.uint8).numpy()
    return np.repeat(gray[..., None], 3, axis=-1)


@lru_cache(maxsize=4)
def load_split(split: str, size: int = SIZE) -> DigitsSplit:
    """The fixed train ("train", 1,347 images) or test ("test", 450 images) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    from sklearn.datasets import load_digits  # optional heavy dependency: only the digits data needs it
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=d.target)
    take = np.sort(train_idx if split == "train" else test_idx)
    images = _render(d.images[take], size)
    images.setflags(write=False)
    labels = d.target[take].astype(np.int64)
    labels.setflags(write=False)
    return DigitsSplit(images, labels)


def make_batch(seed: int, step: int, batch_size: int, size: int = SIZE) -> tuple["torch.Tensor", list[str]]:
    """A training batch from the real training split: images (B, 3, S, S) in [-1, 1] and captions.

    Like shapes.make_batch, it depends only on (seed, step), so resume is exact."""
    import torch  # lazy: importing the data module should not pull in torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
    data = load_split("train", size)
    rng = np.random.default_rng([seed, step, 7])
    pick = rng.integers(0, len(data.labels), size=batch_size)
    pixels = data.images[pick]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    return images, [caption_for(d) for d in data.labels[pick]]


def benchmark_prompts(per_digit: int) -> list[str]:
    """per_digit captions for each digit 0-9, digit-major."""
    if per_digit < 1:
        raise ValueError(f"per_digit must be >= 1, got {per_digit}")
    return [caption_for(d) for d in range(10) for _ in range(per_digit)]
