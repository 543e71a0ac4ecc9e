"""The digits judge: a classifier trained on the real training split of the digits
benchmark (an RBF SVM on 2x2-pooled pixels, seconds to fit, deterministic). It is
refit on demand rather than stored, so no pickled model is ever loaded. It scores
`ditkit eval digits` and is the `digits` best-of-N verifier."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from ditkit.data.digits import SIZE, load_split, parse_digit


def _features(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, (S/2)^2) ink in [0, 1] after 2x2 average pooling."""
    ink = 1.0 - images[..., :3].astype(np.float32).mean(-1) / 255.0
    n, h, w = ink.shape
    ink = ink[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean((2, 4))
    return ink.reshape(n, -1)


class DigitClassifier:
    """An RBF SVM on the real training split; predict/proba on images of the split's size."""

    def __init__(self, size: int = SIZE):
        from sklearn.calibration import CalibratedClassifierCV  # optional heavy dependency, needed only here
        from sklearn.svm import SVC

        train = load_split("train", size)
        self.size = size
        # Platt-calibrated probabilities: the `digits` verifier ranks candidates by them.
        self.svm = CalibratedClassifierCV(SVC(C=10.0, gamma="scale"), ensemble=False)
        self.svm.fit(_features(train.images), train.labels)

    def _as_array(self, images) -> np.ndarray:
        if isinstance(images, np.ndarray):
            arr = images
        else:
            arr = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                                       if im.size != (self.size, self.size) else im.convert("RGB"))
                            for im in images])
        if arr.ndim != 4 or arr.shape[1:3] != (self.size, self.size):
            raise ValueError(f"expected images of {self.size}x{self.size}, got array of shape {arr.shape}")
        return arr

    def proba(self, images) -> np.ndarray:
        """(N, 10) class probabilities for PIL images or a uint8 (N, S, S, 3) array."""
        return self.svm.predict_proba(_features(self._as_array(images)))

    def predict(self, images) -> np.ndarray:
        return self.svm.predict(_features(self._as_array(images)))


@lru_cache(maxsize=2)
def classifier(size: int = SIZE) -> DigitClassifier:
    """The shared judge (fit once per process, ~1 s)."""
    return DigitClassifier(size)


def digit_accuracy(images: Sequence, prompts: Sequence[str]) -> dict:
    """Accuracy of the judge's prediction against the prompted digit, overall and per digit."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        raise ValueError("no images to score")
    size = images[0].size[0]
    wanted = np.array([parse_digit(p) for p in prompts])
    got = classifier(size).predict(images)
    per_digit = {str(d): float((got[wanted == d] == d).mean()) for d in range(10) if (wanted == d).any()}
    confusion = np.zeros((10, 10), dtype=int)
    for w_, g_ in zip(wanted, got):
        confusion[w_, g_] += 1
    return {"accuracy": float((got == wanted).mean()), "per_digit": per_digit,
            "predicted": got.tolist(), "confusion": confusion.tolist()}
