"""Linear stand-ins for blocks: fit a token-wise affine map x -> x A + b to each block's
inputs and outputs (Razzhigaev et al., ACL 2024, Sec. 5: a block whose output is nearly a
linear function of its input can be swapped for that map). How well such a map explains
a block is a measurement of the block (research/standin_r2.py); `ditkit prune
--replace-linear` puts the fitted maps in place of removed blocks
(ditkit.analysis.surgery.remove_blocks)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ditkit.analysis.calibration import fixed_batches
from ditkit.analysis.linearity import block_io_hooks
from ditkit.analysis.surgery import LinearMaps
from ditkit.core.flow import interpolate
from ditkit.core.model import DiT


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
