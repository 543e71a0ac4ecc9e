"""Fixed held-out data for measuring blocks: the batches that fit linear stand-ins, the
validation flow-matching loss that scores ablations, and the default calibration prompts.
The same on every call (fixed seeds, noise and times), so two models (a model and its
pruned copy, or the model with one block skipped) are compared on exactly the same inputs."""

from __future__ import annotations

from typing import Iterator

import torch

from ditkit.core.flow import flow_loss, interpolate, sample_time_logit_normal
from ditkit.core.guidance import autocast_for
from ditkit.core.model import DiT
from ditkit.data import make_batch
from ditkit.engine.prompts import default_prompts

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def fixed_batches(encoder, dataset: str, size: int, batches: int, batch_size: int, seed: int,
                  device: torch.device) -> Iterator[Batch]:
    """Yields (x0 (B, C, size, size), eps (like x0), t (B,), context (B, L, D), mask (B, L))
    on device: held-out data (a seed training never uses) with fixed noise and
    logit-normal times, the same on every call."""
    for k in range(batches):
        x0, captions = make_batch(dataset, seed, k, batch_size, size)
        g = torch.Generator().manual_seed(seed * 31 + k)
        eps, t = torch.randn(x0.shape, generator=g), sample_time_logit_normal(len(x0), generator=g)
        ctx, mask = encoder.encode(captions, device)
        yield x0.to(device), eps.to(device), t.to(device), ctx, mask


@torch.no_grad()
def validation_loss(model: DiT, encoder, dataset: str, size: int, batches: int = 4, batch_size: int = 32,
                    seed: int = 90_001, precision: str = "fp32") -> float:
    """Flow-matching loss on fixed held-out batches (a seed training never uses), fixed noise and times."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    total = 0.0
    try:
        for x0, eps, t, ctx, mask in fixed_batches(encoder, dataset, size, batches, batch_size, seed, device):
            with autocast_for(precision, device):
                v = model(interpolate(x0, eps, t), t, ctx, mask)
            total += float(flow_loss(v.float(), x0, eps).mean())
    finally:
        model.train(was)
    return total / batches


def default_calibration_prompts(dataset: str, n: int = 16) -> list[str]:
    """n of the dataset's benchmark prompts (a fixed draw, seed 777) for block scores and analysis."""
    return default_prompts(dataset, n, seed=777)
