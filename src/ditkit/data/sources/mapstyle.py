"""Training batches from a map-style source (folder, hf): a deterministic function of (seed, step).

The run reads one endless sequence of samples: position q is element q mod N of epoch
q // N's permutation of the N samples, the permutation seeded by (seed, epoch) alone. The
global batch of step k is positions k*B .. (k+1)*B - 1, and rank r of a distributed run
loads only the positions of its slice. So the data of a step depends on (seed, step) only,
not on the world size, the data workers or what ran before: a resumed run reads what an
uninterrupted one would, and every sample is seen once per epoch.

A sample that cannot be read (a corrupt image, a caption that is not UTF-8) is replaced by
one drawn at random from a generator seeded by (seed, position, attempt), so the batch stays
full and stays a function of (seed, step); each replacement is counted in the batch's
`skipped` and the bad file is warned about once per process.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from ditkit.data.sources.images import UnreadableSample

# Distinct generator streams for the two uses of the seed (the shapes world uses others).
EPOCH_STREAM, REPLACEMENT_STREAM = 11, 12
# This many unreadable samples in a row for one position means the data set is broken, not a file.
MAX_REPLACEMENTS = 100


class MapSource:
    """Base of the map-style sources: N samples addressed by index. A subclass sets `path`
    and implements __len__, read(index, size) -> ((3, S, S) float32, caption) raising
    UnreadableSample (whose message names the file), name(index) and captions()."""

    path: str

    def __init__(self) -> None:
        self.bad: set[int] = set()  # indices that failed once: not decoded (nor warned about) again
        self.index_skipped = 0      # files left out of the index when it was built (no caption, ...)

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int, size: int) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def load(self, index: int, size: int) -> tuple[np.ndarray, str]:
        """read(), remembering samples that failed so each is warned about once."""
        if index in self.bad:
            raise UnreadableSample(f"{self.name(index)} was unreadable before")
        try:
            return self.read(index, size)
        except UnreadableSample as e:
            self.bad.add(index)
            warnings.warn(f"skipping unreadable sample: {e}", stacklevel=2)  # e names the file
            raise

    def batch(self, seed: int, step: int, batch_size: int, size: int, part: slice
              ) -> tuple[np.ndarray, list[str], int]:
        """The samples at positions step*batch_size + i for i in `part` (this rank's slice):
        images (b, 3, S, S) float32 in [-1, 1], captions, and how many unreadable samples were
        replaced."""
        n = len(self)
        images, captions, skipped = [], [], 0
        for i in range(part.start, part.stop):
            position = step * batch_size + i
            index = sample_index(seed, position, n)
            for attempt in range(MAX_REPLACEMENTS + 1):
                try:
                    image, caption = self.load(index, size)
                    break
                except UnreadableSample:
                    skipped += 1
                    index = replacement_index(seed, position, attempt, n)
            else:
                raise ValueError(f"data.path {self.path}: {MAX_REPLACEMENTS + 1} unreadable samples in a row; "
                                 f"{len(self.bad)} of its {n} samples failed so far (see the warnings)")
            images.append(image)
            captions.append(caption)
        return np.stack(images), captions, skipped


@lru_cache(maxsize=2)  # a step reads one epoch, two at an epoch boundary
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n samples (a permutation of 0..n-1)."""
    order = np.random.default_rng([seed, epoch, EPOCH_STREAM]).permutation(n)
    order.flags.writeable = False  # shared through the cache
    return order


def sample_index(seed: int, position: int, n: int) -> int:
    """The sample at `position` of the run's sequence of epochs."""
    epoch, offset = divmod(position, n)
    return int(epoch_order(seed, epoch, n)[offset])


def replacement_index(seed: int, position: int, attempt: int, n: int) -> int:
    """The sample that stands in for an unreadable one at `position` (attempt 0, 1, ...)."""
    return int(np.random.default_rng([seed, position, attempt, REPLACEMENT_STREAM]).integers(n))
