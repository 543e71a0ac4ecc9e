"""SmoothCache calibration (Liu et al., CVPR-W 2025): sample a few prompts through the
engine with every block running, record how much each block's residual moves between
consecutive model calls, and reuse a block's residual where that change is small.
The schedule and the cache policies are in ditkit.engine.cache."""

from __future__ import annotations

from typing import Sequence

import torch

from ditkit.core.config import SampleConfig
from ditkit.engine.cache import CachedModel, SmoothSchedule, relative_change
from ditkit.engine.generate import Engine
from ditkit.engine.request import GenerationRequest


class _Recorder:
    """Calibration: runs every block and records how much each residual moved since the last call."""

    def __init__(self):
        self.prev: dict[int, torch.Tensor] = {}
        self.errors: list[list[float]] = []

    def run_blocks(self, blocks, tokens, args):
        row = []
        for i, blk in enumerate(blocks):
            out = blk(tokens, *args)
            r = out - tokens
            row.append(relative_change(r, self.prev[i]) if i in self.prev else float("inf"))
            self.prev[i] = r.detach()
            tokens = out
        self.errors.append(row)
        return tokens


def calibrate_smooth(model: torch.nn.Module, encoder, prompts: Sequence[str], sample: SampleConfig,
                     alpha: float = 0.15, seed: int = 0, max_consecutive: int = 2) -> SmoothSchedule:
    """SmoothCache calibration: per model call and block, the mean relative L1 change of the
    block's residual from the previous call over calibration prompts; reuse where it is
    below alpha, never more than max_consecutive calls in a row for a block (the cached
    residual grows stale), never at the first call."""
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    rec = _Recorder()
    request = GenerationRequest.from_sample(list(prompts), sample, seed, batch_size=len(prompts))
    Engine(CachedModel(model, rec), encoder, sample).generate(request)
    errors = rec.errors
    depth = len(errors[0])
    reuse, run = [], [0] * depth
    for row in errors:
        flags = []
        for i, e in enumerate(row):
            ok = e < alpha and run[i] < max_consecutive
            run[i] = run[i] + 1 if ok else 0
            flags.append(ok)
        reuse.append(flags)
    finite = [[e if e != float("inf") else -1.0 for e in row] for row in errors]  # -1: no previous call
    return SmoothSchedule(sample.steps, sample.sampler, float(alpha), reuse, finite)
