"""Precomputed text features: every caption's text-encoder states, written once by
`ditkit data prepare` and read by training (data.features) instead of running the encoder.

Folder layout (format "ditkit-text-features-v1"):
- features-00000.safetensors, ...: each holds "states" (T, D) float32, the unpadded states of
  its captions laid end to end, and "offsets" (n + 1,) int64: caption row r is
  states[offsets[r]:offsets[r + 1]];
- index.json: {"format", "text_encoder" (the config's text_encoder), "dim" (D), "shards",
  "captions": {caption: [shard, row]}}; the empty caption (caption dropout) is always in it.

The states are the ones the text encoder caches for a caption encoded alone (core.encoders),
so PrecomputedText.encode returns exactly what TextEncoder.encode would: states (B, L, D)
zero-padded to the batch's longest caption and a mask (B, L) of its real tokens
(tests/test_features.py checks this bit for bit). Safetensors slices are read through
safe_open's memory map, so a large features folder is not loaded whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditkit.data import data_captions

FORMAT = "ditkit-text-features-v1"
INDEX_FILE = "index.json"
SHARD_NAME = "features-{:05d}.safetensors"
ROWS_PER_SHARD = 4096
ENCODE_CHUNK = 64  # captions per encoder call while preparing (each is still encoded alone)


def write_features(folder: str | Path, captions: Iterable[str],
                   encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]], text_encoder: str,
                   rows_per_shard: int = ROWS_PER_SHARD) -> dict:
    """Encode the distinct captions (stripped, plus the empty caption) with `encode` (a text
    encoder's encode: list -> (states (B, L, D), mask (B, L))) into `folder`, which must be new
    (the caller makes it atomic: core.files.atomic_folder). Returns {"captions", "shards", "dim"}."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    unique = sorted({str(c).strip() for c in captions} | {""})
    index: dict[str, list[int]] = {}
    shards: list[str] = []
    dim = None
    for start in range(0, len(unique), rows_per_shard):
        rows = unique[start:start + rows_per_shard]
        pieces = []
        for c in range(0, len(rows), ENCODE_CHUNK):
            states, mask = encode(rows[c:c + ENCODE_CHUNK])
            states, mask = states.float().cpu(), mask.cpu()
            pieces.extend(states[i, : int(mask[i].sum())] for i in range(len(states)))
        dim = pieces[0].shape[-1]
        offsets = torch.zeros(len(pieces) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([p.shape[0] for p in pieces]), 0)
        name = SHARD_NAME.format(len(shards))
        save_file({"states": torch.cat(pieces).contiguous(), "offsets": offsets}, str(folder / name))
        index.update({caption: [len(shards), row] for row, caption in enumerate(rows)})
        shards.append(name)
    meta = {"format": FORMAT, "text_encoder": text_encoder, "dim": dim, "shards": shards, "captions": index}
    (folder / INDEX_FILE).write_text(json.dumps(meta, ensure_ascii=False))
    return {"captions": len(index), "shards": len(shards), "dim": dim}


class PrecomputedText:
    """A text encoder's stand-in that looks captions up in a features folder: the same
    encode(captions, device) -> (states (B, L, D), mask (B, L)) and `dim`."""

    def __init__(self, folder: str | Path, text_encoder: str | None = None):
        self.folder = Path(folder).expanduser()
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise ValueError(f"data.features {folder} is not a features folder (no {INDEX_FILE}); "
                             "make one with `ditkit data prepare CONFIG -o DIR`")
        meta = json.loads(index_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"data.features {folder}: unknown format {meta.get('format')!r}; expected {FORMAT}")
        if text_encoder is not None and meta["text_encoder"] != text_encoder:
            raise ValueError(f"data.features {folder} was encoded with text encoder {meta['text_encoder']!r}, but "
                             f"this config's text_encoder is {text_encoder!r}; prepare the features again")
        self.name = meta["text_encoder"]
        self.dim = int(meta["dim"])
        self.captions: dict[str, list[int]] = meta["captions"]
        self._files = [safe_open(str(self.folder / s), framework="pt") for s in meta["shards"]]
        self._offsets = [f.get_tensor("offsets").tolist() for f in self._files]

    def __contains__(self, caption: str) -> bool:
        return caption.strip() in self.captions

    def states(self, caption: str) -> torch.Tensor:
        """One caption's unpadded states (L, D) float32."""
        where = self.captions.get(caption.strip())
        if where is None:
            raise ValueError(f"caption {caption.strip()[:80]!r} is not in the precomputed text features "
                             f"{self.folder}; run `ditkit data prepare` again for this config's data")
        shard, row = where
        start, end = self._offsets[shard][row], self._offsets[shard][row + 1]
        return self._files[shard].get_slice("states")[start:end]

    def check_covers(self, captions: Iterable[str]) -> None:
        """Raise (naming one) if a caption has no features."""
        missing = [c for c in captions if c.strip() not in self.captions]
        if missing:
            raise ValueError(f"{len(missing)} captions of the data are not in the precomputed text features "
                             f"{self.folder} (first: {missing[0][:80]!r}); run `ditkit data prepare` again")

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, device: str | torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """As TextEncoder.encode: states (B, L, D) float32 zero-padded to the longest caption,
        mask (B, L) bool of real tokens, on `device` (default the CPU)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        seqs = [self.states(str(p)) for p in prompts]
        # The padding of core.encoders.pad_states, written again: the data layer imports nothing of ditkit.
        length = max(s.shape[0] for s in seqs)
        states = torch.zeros(len(seqs), length, self.dim)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool)
        for i, s in enumerate(seqs):
            states[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        return states.to(device or "cpu"), mask.to(device or "cpu")


def open_features(data_cfg, text_encoder: str) -> PrecomputedText:
    """The features of a config's data (data.features), checked against its text encoder and,
    for the map-style kinds (folder, hf), against every caption of the data, so a missing
    caption fails now and not hours into the run. (webdataset is not checked: that needs a
    pass over every shard; a missing caption then fails at the step that meets it.)"""
    features = PrecomputedText(data_cfg.features, text_encoder)
    if data_cfg.kind in ("folder", "hf"):
        features.check_covers(data_captions(data_cfg))
    return features
