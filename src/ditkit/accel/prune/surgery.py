"""Structural surgery on a ditkit DiT: remove whole blocks, or replace them by fitted
token-wise affine stand-ins x -> x A + b (Razzhigaev et al., ACL 2024, Sec. 5: a block
whose output is nearly a linear function of its input can be swapped for that map),
and skip blocks temporarily for ablations."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ditkit.accel.prune.calibration import fixed_batches
from ditkit.analysis.linearity import block_io_hooks
from ditkit.core.flow import interpolate
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


def check_k(k: int, depth: int) -> None:
    """ValueError unless K (the number of blocks to remove) is an integer with 0 <= K < depth."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < depth:
        raise ValueError(f"K (blocks to remove) must be an integer with 0 <= K < depth = {depth}, got {k!r}")


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


# ----------------------------------------------------------------------------
# linear stand-ins
# ----------------------------------------------------------------------------


@torch.no_grad()
def fit_linear_maps(model: DiT, encoder, blocks: Sequence[int], dataset: str, size: int, batches: int = 4,
                    batch_size: int = 32, seed: int = 80_001, ridge: float = 1e-4) -> LinearMaps:
    """Least-squares token-wise affine maps Y ≈ X A + b for each block, fitted on its
    inputs/outputs over noisy training-distribution inputs at logit-normal times.
    A small ridge term keeps the solve stable (the residual stream is rank-deficient early)."""
    device = next(model.parameters()).device
    inputs = ((interpolate(x0, eps, t), t, ctx, mask)
              for x0, eps, t, ctx, mask in fixed_batches(encoder, dataset, size, batches, batch_size, seed, device))
    xs, ys = block_io_rows(model, inputs, blocks)
    return {i: solve_affine(xs[i], ys[i], ridge) for i in blocks}


@torch.no_grad()
def block_io_rows(model: DiT, inputs: Iterable, blocks: Sequence[int]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Each listed block's input and output tokens, one row per token ((N, W) float32, CPU), over
    `inputs`, an iterable of (x_t, t, context, mask) batches run through the model in eval mode."""
    xs: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
    ys: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}

    def record(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if i in xs:
            xs[i].append(x.reshape(-1, x.shape[-1]))
            ys[i].append(y.reshape(-1, y.shape[-1]))

    was = model.training
    model.eval()
    try:
        with block_io_hooks(model, record):
            for xt, t, ctx, mask in inputs:
                model(xt, t, ctx, mask)
    finally:
        model.train(was)
    return {i: torch.cat(xs[i]) for i in blocks}, {i: torch.cat(ys[i]) for i in blocks}


def solve_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares for Y (N, D_out) ≈ X (N, D_in) A + b over token rows (float64 normal
    equations; the ridge is relative to the Gram matrix's mean diagonal). Returns (A, b) in float32."""
    x, y = x.double(), y.double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = x1.T @ x1
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    sol = torch.linalg.solve(gram, x1.T @ y)
    return sol[:-1].float(), sol[-1].float()
