"""Rectified-flow reflow with the guidance distilled in: the second few-step method of
`ditkit distill` (distill.method: reflow), kept beside LCM so the two can be compared.

Reflow (Liu et al., ICLR 2023, "Flow Straight and Fast"; InstaFlow, Liu et al., ICLR 2024)
couples each noise eps with the image x0 the guided teacher's ODE maps it to, then trains the
student on the straight line between them: x_t = (1 - t) x0 + t eps, target v = eps - x0.
Where the teacher's paths cross, the straight couplings do not, so few Euler steps follow them
well. The cost is up front: each pair is a full guided teacher trajectory (steps x 2 NFE),
where LCM pays 2 teacher NFE per training sample. Pairs are generated once and reused.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ditkit.core.flow import flow_loss, interpolate
from ditkit.core.guidance import autocast_for


def pair_seeds(seed: int, n: int) -> list[int]:
    """The noise seeds of the n pairs (disjoint from the small seeds evaluation uses)."""
    return [1_000_003 * (seed + 1) + i for i in range(n)]


def make_pairs(pipe, n: int, guidance: float, teacher_steps: int, seed: int, dataset: str, size: int,
               batch_size: int = 16, precision: str = "fp32", callback=None) -> dict:
    """n (noise, teacher image, caption) triples: captions from the teacher's training data,
    images from its default sampler with CFG `guidance` (teacher_steps 0: its default steps).
    Deterministic given the arguments."""
    from ditkit.data import make_batch
    from ditkit.api import generate_tensor, initial_noise

    if n < 1:
        raise ValueError(f"distill.pairs must be >= 1 for reflow, got {n}")
    captions: list[str] = []
    k = 0
    while len(captions) < n:  # in fixed chunks of 16, so the captions do not depend on batch_size
        captions += make_batch(dataset, seed, 1_000_000 + k, 16, size)[1]
        k += 1
    captions = captions[:n]
    sample = replace(pipe.defaults, guidance=guidance, size=size,
                     **({"steps": teacher_steps} if teacher_steps else {}))
    seeds = pair_seeds(seed, n)
    device = next(pipe.model.parameters()).device
    x0 = generate_tensor(pipe.model, pipe.text_encoder, captions, sample, seeds, precision=precision,
                         batch_size=batch_size, callback=callback).clamp(-1, 1)
    eps = initial_noise(n, tuple(x0.shape[1:]), seeds, device)
    return {"x0": x0, "eps": eps, "captions": captions}


def reflow_loss(student, encoder, pairs: dict, batch_size: int, precision: str, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """Flow-matching loss on random pairs at uniform times (InstaFlow's 2-rectified flow)."""
    n = pairs["x0"].shape[0]
    idx = torch.randint(0, n, (batch_size,), generator=generator)
    t = torch.rand(batch_size, generator=generator).to(device)
    x0, eps = pairs["x0"][idx].to(device), pairs["eps"][idx].to(device)
    context, mask = encoder.encode([pairs["captions"][i] for i in idx.tolist()], device)
    with autocast_for(precision, device):
        v = student(interpolate(x0, eps, t), t, context, mask)
    return flow_loss(v, x0, eps).mean()
