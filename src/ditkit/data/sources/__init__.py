"""The user's own training data: data.kind folder, webdataset or hf (data.path says where).

- folder.py: images with same-name .txt captions or a metadata.jsonl (map-style);
- hf.py: a local Hugging Face datasets folder (save_to_disk) or image folder (map-style);
- wds.py: webdataset tar shards, streamed per rank and data worker;
- images.py: the decoding and preprocessing all three share (RGB on white, centre crop, [-1, 1]);
- mapstyle.py: how a map-style source's batches follow from (seed, step).

data.kind builtin (the default) is the shapes world or digits (ditkit.data.make_batch) and
has no source here. docs/data.md describes the kinds for users.
"""

from __future__ import annotations

import os

from ditkit.data.sources.folder import FolderSource
from ditkit.data.sources.hf import HFSource
from ditkit.data.sources.images import IMAGE_SUFFIXES, UnreadableSample, decode_image
from ditkit.data.sources.mapstyle import MapSource
from ditkit.data.sources.wds import WebDatasetSource

KINDS = ("builtin", "folder", "webdataset", "hf")
SOURCES = {"folder": FolderSource, "webdataset": WebDatasetSource, "hf": HFSource}

__all__ = ["KINDS", "SOURCES", "IMAGE_SUFFIXES", "FolderSource", "HFSource", "MapSource", "UnreadableSample",
           "WebDatasetSource", "check_kind", "decode_image", "make_source", "open_source"]


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown data.kind {kind!r}; allowed: {', '.join(KINDS)}")


def make_source(data_cfg) -> FolderSource | HFSource | WebDatasetSource:
    """A new source for a config's data section (DataConfig) of a kind other than builtin;
    the index is built (and data.path checked) now."""
    check_kind(data_cfg.kind)
    if data_cfg.kind == "builtin":
        raise ValueError(f"data.kind builtin draws the {data_cfg.dataset} world's batches itself "
                         "(ditkit.data.make_batch); only folder, webdataset and hf read a data.path")
    if not data_cfg.path:
        raise ValueError(f"data.kind {data_cfg.kind} needs data.path (where the data is)")
    return SOURCES[data_cfg.kind](data_cfg.path)


_OPEN: dict[tuple[str, str], FolderSource | HFSource | WebDatasetSource] = {}


def open_source(data_cfg) -> FolderSource | HFSource | WebDatasetSource:
    """make_source, once per (kind, absolute path) in a process: every step of a run reuses the
    index, and forked data workers inherit it. A folder changed during the process is not re-read."""
    key = (data_cfg.kind, "::".join(os.path.abspath(os.path.expanduser(p)) for p in str(data_cfg.path).split("::")))
    if key not in _OPEN:
        _OPEN[key] = make_source(data_cfg)
    return _OPEN[key]
