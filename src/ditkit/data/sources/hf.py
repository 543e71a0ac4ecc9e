"""data.kind hf: a local Hugging Face `datasets` data set, read with the datasets library.

data.path is either a folder written by Dataset.save_to_disk (read with
datasets.load_from_disk; a DatasetDict uses its "train" split) or a local image folder with
a metadata.jsonl (read with load_dataset("imagefolder", data_dir=...), which caches an Arrow
copy of the index under ~/.cache/huggingface/datasets as datasets always does). Nothing is
downloaded: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set before datasets is imported, and
the only builder used is the packaged imagefolder.

Columns: the image is the "image" column, or else the first Image feature; the caption is
"text" or "caption". Images are read undecoded (Image(decode=False)) and decoded by
images.decode_image, so every kind preprocesses the same bytes the same way and a corrupt
image is skipped, not raised inside datasets.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ditkit.data.sources.images import UnreadableSample, decode_image
from ditkit.data.sources.mapstyle import MapSource

CAPTION_COLUMNS = ("text", "caption")
# Files datasets' save_to_disk writes (a Dataset; a DatasetDict).
SAVED_MARKERS = ("state.json", "dataset_dict.json")


def _datasets():
    """The datasets module, imported offline. Why here: an optional dependency (the "data"
    extra), slow to import, and its offline switch is read when it is imported."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets  # why here: see the docstring
    except ImportError:
        raise ValueError("data.kind hf needs the datasets package: pip install 'ditkit[data]'") from None
    return datasets


def load_local_dataset(path: str):
    """The datasets.Dataset at a local path (save_to_disk folder or image folder)."""
    datasets = _datasets()
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"data.path {path} does not exist")
    if not folder.is_dir():
        raise ValueError(f"data.path {path} is not a folder (data.kind hf wants a save_to_disk folder "
                         "or an image folder with metadata.jsonl)")
    if any((folder / m).is_file() for m in SAVED_MARKERS):
        ds = datasets.load_from_disk(str(folder))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"data.path {path} holds splits {sorted(ds)} but no 'train' split")
            ds = ds["train"]
        return ds
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    except Exception as e:  # datasets raises its own types (DataFilesNotFoundError, ...) for an unusable folder
        raise ValueError(f"data.path {path} is neither a save_to_disk folder ({' or '.join(SAVED_MARKERS)}) nor "
                         f"an image folder datasets can read: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def image_column(features, path: str) -> str:
    """"image" if it is an Image feature, else the first Image feature."""
    datasets = _datasets()
    images = [name for name, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise ValueError(f"data.path {path} has no image column (an Image feature); its columns are "
                         f"{list(features)}")
    return "image" if "image" in images else images[0]


def caption_column(features, path: str) -> str:
    for name in CAPTION_COLUMNS:
        if name in features:
            return name
    raise ValueError(f"data.path {path} has no caption column ({' or '.join(CAPTION_COLUMNS)}); its columns are "
                     f"{list(features)}")


class HFSource(MapSource):
    """Rows of a local datasets.Dataset (see the module docstring)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        ds = load_local_dataset(path)
        self.image_col = image_column(ds.features, path)
        self.caption_col = caption_column(ds.features, path)
        if len(ds) == 0:
            raise ValueError(f"data.path {path} holds no rows")
        datasets = _datasets()
        self.ds = ds.cast_column(self.image_col, datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.ds)

    def name(self, index: int) -> str:
        return f"{self.path} row {index}"

    def read(self, index: int, size: int) -> tuple[np.ndarray, str]:
        row = self.ds[index]
        caption, image = row[self.caption_col], row[self.image_col]
        if not isinstance(caption, str):
            raise UnreadableSample(f"{self.name(index)}: its {self.caption_col!r} is {caption!r}, not a string")
        if not image or not (image.get("bytes") or image.get("path")):
            raise UnreadableSample(f"{self.name(index)}: its {self.image_col!r} holds no image")
        data = image["bytes"] if image.get("bytes") else image["path"]
        return decode_image(data, size, self.name(index)), caption.strip()

    def captions(self) -> Iterator[str]:
        for index, caption in enumerate(self.ds[self.caption_col]):
            if isinstance(caption, str):
                yield caption.strip()
            else:
                warnings.warn(f"skipping {self.name(index)}: its {self.caption_col!r} is {caption!r}", stacklevel=2)
