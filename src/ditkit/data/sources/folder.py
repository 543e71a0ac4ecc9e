"""data.kind folder: a folder of images with captions.

Captions come from a same-name .txt file next to each image (cat.png + cat.txt, UTF-8), or
from metadata.jsonl files as in Hugging Face's imagefolder: one JSON object per line,
{"file_name": "cat.png", "text": "a cat"} ("caption" is accepted for "text"), file names
relative to the folder holding that metadata.jsonl. A metadata caption wins over a .txt.
The folder is searched recursively (hidden files and folders skipped) and the index is
sorted by path, so the same files give the same index on any machine.

The index is built once when the source opens (file names only); images and .txt captions
are read when a batch needs them, so a corrupt file is skipped when it is met (mapstyle.py).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ditkit.data.sources.images import IMAGE_SUFFIXES, UnreadableSample, decode_caption, decode_image
from ditkit.data.sources.mapstyle import MapSource

METADATA_FILE = "metadata.jsonl"
CAPTION_KEYS = ("text", "caption")


def walk_files(root: Path) -> list[Path]:
    """Every file under root, recursively, hidden names skipped, sorted by relative path."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in files if not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_metadata(path: Path) -> dict[Path, str]:
    """One metadata.jsonl: {image path: caption}. A malformed line is a clear error."""
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise ValueError(f"{where} needs a JSON object with a \"file_name\" string")
        key = next((k for k in CAPTION_KEYS if k in row), None)
        if key is None or not isinstance(row[key], str):
            raise ValueError(f"{where} needs a caption string under \"text\" or \"caption\"; got keys {sorted(row)}")
        captions[(path.parent / row["file_name"]).resolve()] = row[key].strip()
    return captions


class FolderSource(MapSource):
    """Images and captions under a folder, indexed once (see the module docstring)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        root = Path(path).expanduser()
        if not root.exists():
            raise ValueError(f"data.path {path} does not exist")
        if not root.is_dir():
            raise ValueError(f"data.path {path} is not a folder (data.kind folder wants a folder of images)")
        files = walk_files(root)
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise ValueError(f"data.path {path} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
        metadata: dict[Path, str] = {}
        for f in files:
            if f.name == METADATA_FILE:
                metadata.update(read_metadata(f))
        # (image, caption text from metadata, or the .txt file to read when the sample is loaded)
        self.entries: list[tuple[Path, str | Path]] = []
        uncaptioned = []
        for image in images:
            txt = image.with_suffix(".txt")
            caption = metadata.get(image.resolve()) if metadata else None
            if caption is not None:
                self.entries.append((image, caption))
            elif txt.is_file():
                self.entries.append((image, txt))
            else:
                uncaptioned.append(image)
        if not self.entries:
            raise ValueError(f"data.path {path} holds {len(images)} images but no captions: give each image a "
                             f"same-name .txt file (cat.png + cat.txt) or list them in a {METADATA_FILE} "
                             "({\"file_name\": ..., \"text\": ...})")
        listed = {image.resolve() for image in images} if metadata else set()
        missing = [p for p in metadata if p not in listed]
        if uncaptioned:
            warnings.warn(f"data.path {path}: {len(uncaptioned)} of {len(images)} images have no caption and are "
                          f"left out (first: {uncaptioned[0]})", stacklevel=2)
        if missing:
            warnings.warn(f"data.path {path}: {len(missing)} {METADATA_FILE} rows name no image file here "
                          f"(first: {missing[0]})", stacklevel=2)
        self.index_skipped = len(uncaptioned) + len(missing)

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, index: int) -> str:
        return str(self.entries[index][0])

    def caption(self, index: int) -> str:
        image, caption = self.entries[index]
        if isinstance(caption, str):
            return caption
        try:
            return decode_caption(caption.read_bytes(), str(caption))
        except OSError as e:
            raise UnreadableSample(f"cannot read caption {caption}: {e.strerror or e}") from None

    def read(self, index: int, size: int) -> tuple[np.ndarray, str]:
        caption = self.caption(index)  # first: a bad caption costs no image decode
        return decode_image(self.entries[index][0], size, self.name(index)), caption

    def captions(self) -> Iterator[str]:
        """Every readable caption in index order (unreadable ones skipped with a warning)."""
        for index in range(len(self)):
            try:
                yield self.caption(index)
            except UnreadableSample as e:
                warnings.warn(f"skipping {self.name(index)}: {e}", stacklevel=2)
