"""Structural surgery on a ditkit DiT, the tool every block measurement needs: remove whole
blocks (optionally keeping linear stand-ins x -> x A + b in their place, Razzhigaev et al.,
ACL 2024, Sec. 5), or skip blocks temporarily for an ablation. The pruning recipe
(ditkit.accel.prune) removes the blocks it chooses with the same functions."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Sequence

import torch
from torch import nn

from ditkit.core.model import DiT

LinearMaps = dict[int, tuple[torch.Tensor, torch.Tensor]]  # {block index: (A (W, W), b (W,))}


def check_remove(model: DiT, remove: Sequence[int]) -> list[int]:
    """The block indices to remove, sorted; ValueError unless distinct, in range, and leaving one block."""
    depth = len(model.blocks)
    idx = sorted({int(i) for i in remove})
    if len(idx) != len(list(remove)):
        raise ValueError(f"block indices to remove must be distinct, got {list(remove)}")
    if any(not 0 <= i < depth for i in idx):
        raise ValueError(f"block indices must be in 0..{depth - 1}, got {list(remove)}")
    if len(idx) >= depth:
        raise ValueError(f"cannot remove {len(idx)} of {depth} blocks: at least one must stay (0 <= K < depth)")
    return idx


def remove_blocks(model: DiT, remove: Sequence[int], linear_maps: LinearMaps | None = None) -> DiT:
    """A new DiT without the given blocks; the other weights are copied exactly.

    linear_maps {block index: (A (W, W), b (W,))}: keep those blocks as LinearBlock
    x -> x A + b instead of dropping them (the depth then stays)."""
    idx = check_remove(model, remove)
    linear_maps = linear_maps or {}
    if set(linear_maps) - set(idx):
        raise ValueError(f"linear maps given for blocks {sorted(set(linear_maps) - set(idx))} that are not removed")
    cfg = model.config
    keep = [i for i in range(cfg.depth) if i not in idx or i in linear_maps]
    new_linear = [keep.index(i) for i in keep if i in linear_maps or i in cfg.linear_blocks]
    new_cfg = replace(cfg, depth=len(keep), linear_blocks=tuple(new_linear))
    new = DiT(new_cfg).to(next(model.parameters()).device)
    state = model.state_dict()
    out = {}
    for k, v in state.items():
        if not k.startswith("blocks."):
            out[k] = v
            continue
        old_i, rest = k.split(".", 2)[1:]
        old_i = int(old_i)
        if old_i in keep and old_i not in linear_maps:
            out[f"blocks.{keep.index(old_i)}.{rest}"] = v
    for old_i, (a, b) in linear_maps.items():
        j = keep.index(old_i)
        out[f"blocks.{j}.linear.weight"] = a.T.contiguous().to(state["final_table"].dtype)
        out[f"blocks.{j}.linear.bias"] = b.to(state["final_table"].dtype)
    new.load_state_dict(out, strict=True)
    new.train(model.training)
    return new


class _Skip(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


@contextmanager
def skipping(model: DiT, blocks: Sequence[int]) -> Iterator[DiT]:
    """Temporarily replace blocks by the identity (an ablation without copying the model)."""
    saved = {i: model.blocks[i] for i in blocks}
    try:
        for i in blocks:
            model.blocks[i] = _Skip()
        yield model
    finally:
        for i, b in saved.items():
            model.blocks[i] = b
