"""data.kind webdataset: tar shards of {key}.png/.jpg/... + {key}.txt, read with the webdataset package.

(Named wds.py so that `import webdataset` inside it finds the package, not this module.)

data.path: a folder of .tar shards (sorted by name), a brace pattern
("shards/train-{000000..000099}.tar") or several of either joined by "::" (webdataset's own
list syntax; a YAML list works too). Shards are local files.

A shard is streamed, never indexed, so the batches follow webdataset's semantics, not the
map-style ones (mapstyle.py):
- Streams. Rank r of a world of W ranks takes shards r, r+W, r+2W, ...; a rank with n data
  workers (train.num_workers; 1 without workers) deals its shards again, worker stream j
  taking every n-th of them. The world x n streams hold disjoint shards and together all of
  them, so every process reads only its own files. Step k of rank r is made by stream
  j = k mod n, which is the one a DataLoader's worker (k - start) mod n always gets, from
  that stream's samples (k // n) * b .. (k // n + 1) * b - 1 (b = batch_size / W).
- Epochs. A stream visits its shards in an order shuffled per epoch with a generator seeded
  by (seed, rank, world, j, n, epoch), each shard's samples in tar order (write the shards
  from shuffled samples, as webdataset's docs advise).
- So the data of step k is a function of (seed, step, world size, workers): a resumed run
  with the same world size and train.num_workers sees exactly what an uninterrupted one
  would (the stream reopens the shard it needs and skips to the sample, using the sample
  counts of the shards it has read through), but another world size or worker count reads
  other samples at step k.
- A broken sample (undecodable image, caption not UTF-8, an image without its .txt) is
  replaced by the nearest readable sample of the same batch slice (earlier first), so the
  batch stays full; a truncated shard ends where it breaks (warned about once). Both are
  counted; neither stops training.
"""

from __future__ import annotations

import os
import warnings
from itertools import chain
from pathlib import Path
from typing import Iterator

import numpy as np

from ditkit.data.sources.images import IMAGE_SUFFIXES, UnreadableSample, decode_caption, decode_image

SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
IMAGE_KEYS = tuple(s[1:] for s in IMAGE_SUFFIXES)  # webdataset names a member by its extension
STREAM_TAG = 21  # generator stream of the shard order (distinct from the map-style ones)
# How far past its batch slice a slice without any readable sample looks for a stand-in.
LOOKAHEAD = 10_000


def _webdataset():
    """The webdataset package, or a ValueError saying how to install it."""
    try:
        import webdataset  # why here: an optional dependency (the "data" extra)
    except ImportError:
        raise ValueError("data.kind webdataset needs the webdataset package: pip install 'ditkit[data]'") from None
    return webdataset


def list_shards(path: str | list) -> list[str]:
    """The shard files of data.path (see the module docstring), each checked to exist."""
    expand_urls = _webdataset().shardlists.expand_urls  # braces and "::", as webdataset reads them
    parts = path if isinstance(path, list) else str(path).split("::")
    shards: list[str] = []
    for part in (str(p).strip() for p in parts):
        folder = Path(part).expanduser()
        if folder.is_dir():
            found = sorted(str(f) for f in folder.iterdir() if f.name.endswith(SHARD_SUFFIXES) and f.is_file())
            if not found:
                raise ValueError(f"data.path {part} holds no webdataset shards ({', '.join(SHARD_SUFFIXES)} files)")
            shards.extend(found)
        else:
            shards.extend(expand_urls(part))
    missing = [s for s in shards if not Path(s).expanduser().is_file()]
    if missing:
        raise ValueError(f"data.path {path}: {len(missing)} of {len(shards)} shards do not exist "
                         f"(first: {missing[0]}); webdataset shards must be local .tar files")
    if not shards:
        raise ValueError(f"data.path {path!r} names no shards")
    return shards


def stream_shards(shards: list[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """The shards of worker stream `worker` (of `workers`) on rank `rank` (of `world`)."""
    if len(shards) < world * workers:
        raise ValueError(f"webdataset data has {len(shards)} shards but {world} ranks x {workers} data workers "
                         f"need at least {world * workers} (each stream reads its own shards): write more "
                         "shards or lower train.num_workers")
    return shards[rank::world][worker::workers]


def data_worker() -> tuple[int, int]:
    """(this DataLoader worker's id, the number of workers); (0, 1) outside a DataLoader worker."""
    import torch  # why here: torch is loaded wherever batches are made; `import ditkit.data` stays light

    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardCursor:
    """One stream's samples by position: position p is the p-th sample of the stream's epochs
    laid end to end. Reading moves forward through a shard; a position behind the reader (a
    resume, a replacement search) reopens a shard and skips to it. Whole shards whose sample
    count is known are skipped without opening them."""

    def __init__(self, source: "WebDatasetSource", shards: list[str], seed_key: list[int]):
        self.source, self.shards, self.seed_key = source, shards, seed_key
        self._orders: dict[int, list[str]] = {}
        self._goto(0, 0)

    def order(self, epoch: int) -> list[str]:
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            perm = np.random.default_rng([*self.seed_key, epoch, STREAM_TAG]).permutation(len(self.shards))
            self._orders[epoch] = [self.shards[i] for i in perm]
        return self._orders[epoch]

    def epoch_length(self) -> int | None:
        counts = self.source.counts
        return sum(counts[s] for s in self.shards) if all(s in counts for s in self.shards) else None

    def _goto(self, epoch: int, start: int) -> None:
        """To the first shard of `epoch`, whose first sample is at position `start`."""
        self.epoch, self.k, self.shard_start, self.reader, self.offset = epoch, 0, start, None, 0

    def _next_shard(self, count: int) -> None:
        self.shard_start += count
        self.k, self.reader, self.offset = self.k + 1, None, 0
        if self.k == len(self.shards):
            self.epoch, self.k = self.epoch + 1, 0
            if self.epoch_length() == 0:
                raise ValueError(f"webdataset shards {self.shards[0]} ... ({len(self.shards)} of them) hold no "
                                 "readable sample")

    def at(self, p: int) -> dict:
        """The raw sample (webdataset's dict of member bytes) at position p."""
        length = self.epoch_length()
        if length == 0:
            raise ValueError(f"webdataset shards {self.shards[0]} ... hold no readable sample")
        if length is not None and (p // length != self.epoch or p < self.shard_start):
            self._goto(p // length, p // length * length)
        elif p < self.shard_start:
            self._goto(0, 0)
        while True:
            shard = self.order(self.epoch)[self.k]
            count = self.source.counts.get(shard)
            if count is not None and p >= self.shard_start + count:  # past this shard: skip it unread
                self._next_shard(count)
                continue
            if p < self.shard_start + self.offset:  # behind the reader: read this shard again
                self.reader, self.offset = None, 0
            if self.reader is None:
                self.reader = self.source.read_shard(shard)
            for sample in self.reader:
                self.offset += 1
                if self.shard_start + self.offset - 1 == p:
                    return sample
            self.source.counts[shard] = self.offset
            self._next_shard(self.offset)


class WebDatasetSource:
    """Tar shards streamed per rank and worker (see the module docstring)."""

    def __init__(self, path: str | list):
        self.path = path
        self.shards = list_shards(path)
        self.counts: dict[str, int] = {}   # samples a shard yields, once read through
        self.broken: set[str] = set()      # shards that ended in a read error
        self.bad: set[tuple[str, str]] = set()  # (shard, key) of samples that failed to decode
        self._cursors: dict[tuple, ShardCursor] = {}
        self._pid = os.getpid()

    def check_streams(self, world: int, workers: int) -> None:
        """ValueError unless every rank's worker streams get at least one shard."""
        stream_shards(self.shards, 0, world, 0, workers)

    def read_shard(self, shard: str) -> Iterator[dict]:
        """The raw samples of one shard through webdataset (tar -> samples grouped by key); a
        read error ends the shard with a warning."""
        wds = _webdataset()

        def on_error(exn: Exception) -> bool:
            if shard not in self.broken:
                self.broken.add(shard)
                why = f"{type(exn).__name__}: {exn.args[0] if exn.args else ''}"
                warnings.warn(f"webdataset shard {shard} is broken ({why}); its remaining samples are skipped",
                              stacklevel=2)
            return True  # go on (webdataset's handler protocol): here, end this shard

        return iter(wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=on_error)))

    def decode(self, sample: dict, size: int) -> tuple[np.ndarray, str]:
        """A raw sample -> ((3, S, S) float32, caption); UnreadableSample if it cannot be used."""
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None or "txt" not in sample:
            raise UnreadableSample(f"sample {name} lacks its {'image' if image_key is None else 'txt'} member")
        return decode_image(sample[image_key], size, name), decode_caption(sample["txt"], name)

    def cursor(self, seed: int, rank: int, world: int, worker: int, workers: int) -> ShardCursor:
        if os.getpid() != self._pid:  # a forked data worker: never share the parent's open files
            self._cursors, self._pid = {}, os.getpid()
        key = (seed, rank, world, worker, workers)
        if key not in self._cursors:
            shards = stream_shards(self.shards, rank, world, worker, workers)
            self._cursors[key] = ShardCursor(self, shards, [seed, rank, world, worker, workers])
        return self._cursors[key]

    def batch(self, seed: int, step: int, batch_size: int, size: int, part: slice, rank: int, world: int,
              worker: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str], int]:
        """Rank `rank`'s b = part.stop - part.start samples of step `step` (images (b, 3, S, S)
        float32 in [-1, 1], captions, replaced count). worker: (j, n) to force the worker
        split; by default this DataLoader worker's count n, and stream j = step mod n."""
        _, workers = worker if worker is not None else data_worker()
        j = step % workers
        cursor = self.cursor(seed, rank, world, j, workers)
        b = part.stop - part.start
        first = step // workers * b
        decoded: dict[int, tuple[np.ndarray, str] | None] = {}

        def get(p: int):
            if p not in decoded:
                sample = cursor.at(p)
                key = (str(sample.get("__url__")), str(sample.get("__key__")))
                try:
                    decoded[p] = self.decode(sample, size)
                except UnreadableSample as e:
                    decoded[p] = None
                    if key not in self.bad:
                        self.bad.add(key)
                        warnings.warn(f"skipping unreadable sample: {e}", stacklevel=2)
            return decoded[p]

        images, captions, skipped = [], [], 0
        for p in range(first, first + b):
            got = get(p)
            if got is None:
                skipped += 1
                for q in chain(range(p - 1, first - 1, -1), range(p + 1, first + b + LOOKAHEAD)):
                    got = get(q)
                    if got is not None:
                        break
                else:
                    raise ValueError(f"webdataset data {self.path}: no readable sample within {LOOKAHEAD} samples "
                                     f"of position {p} of stream {j} on rank {rank} (see the warnings)")
            images.append(got[0])
            captions.append(got[1])
        return np.stack(images), captions, skipped

    def captions(self) -> Iterator[str]:
        """Every readable caption of every shard, shard by shard in listed order."""
        for shard in self.shards:
            for sample in self.read_shard(shard):
                if "txt" not in sample:
                    continue
                try:
                    yield decode_caption(sample["txt"], f"{shard}:{sample.get('__key__')}")
                except UnreadableSample as e:
                    warnings.warn(f"skipping: {e}", stacklevel=2)
