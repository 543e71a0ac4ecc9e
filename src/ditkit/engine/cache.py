"""Training-free feature caching across sampling steps for any ditkit DiT.

Two policies, both per generation (a fresh cache object per sampling run, so no
state survives between requests) and batch-safe (cached residuals are per sample;
the reuse decision is taken for the whole batch):

- FirstBlockCache (ParaAttention's "first block cache", after TeaCache, Liu et al.
  2024): run block 0; if its residual changed by less than `threshold` (relative
  mean absolute difference) since the last full step, skip the remaining blocks
  and add the residual they produced then. threshold 0 never reuses: exact.
- SmoothCache (Liu et al., CVPR-W 2025): calibrate, on a few prompts, how much
  each block's residual changes between consecutive steps; at steps where the
  error is below alpha, reuse that block's residual from the previous step. The
  schedule is static for a step count and is saved next to the model.

Spec strings for the CLI: "first-block:0.08", "smooth:calibrated" (the model's
saved schedule) or "smooth:PATH.json". SmoothCache calibration, which samples through the
engine, is ditkit.engine.calibration.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ditkit.core.reports import write_json

SCHEDULE_FILE = "cache_schedule.json"
POLICIES = ("first-block:THRESHOLD", "smooth:calibrated", "smooth:PATH.json")


def relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """Mean absolute change of a residual relative to its previous mean magnitude."""
    return float((new - old).abs().mean() / old.abs().mean().clamp_min(1e-12))


class FirstBlockCache:
    """One generation's first-block cache. Pass `run_blocks` as DiT.forward's block_runner."""

    def __init__(self, threshold: float):
        if not (math.isfinite(threshold) and threshold >= 0):  # inf would reuse every step after the first
            raise ValueError(f"first-block cache threshold must be a finite number >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.prev_first: torch.Tensor | None = None  # block 0's residual at the last full step
        self.rest: torch.Tensor | None = None  # what blocks 1.. added at the last full step
        self.hits = 0
        self.calls = 0

    def run_blocks(self, blocks, tokens: torch.Tensor, args: tuple) -> torch.Tensor:
        self.calls += 1
        h = blocks[0](tokens, *args)
        first = h - tokens
        if (self.prev_first is not None and self.prev_first.shape == first.shape
                and relative_change(first, self.prev_first) < self.threshold):
            self.hits += 1
            return h + self.rest.to(h.dtype)
        out = h
        for blk in blocks[1:]:
            out = blk(out, *args)
        # Keep the residual of the last *full* step (not of a cached one), so reuse error cannot accumulate.
        self.prev_first, self.rest = first.detach(), (out - h).detach()
        return out


@dataclass
class SmoothSchedule:
    """reuse[k][i]: at model call k, reuse block i's residual from call k - 1 instead of running it."""
    steps: int
    sampler: str
    alpha: float
    reuse: list[list[bool]]
    errors: list[list[float]]

    def save(self, path: str | Path) -> None:
        write_json(Path(path), self.__dict__)

    @classmethod
    def load(cls, path: str | Path) -> "SmoothSchedule":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"no cache schedule at {p}; calibrate one with `ditkit cache-calibrate MODEL --steps N`")
        try:
            d = json.loads(p.read_text())
            return cls(int(d["steps"]), str(d["sampler"]), float(d["alpha"]),
                       [[bool(b) for b in row] for row in d["reuse"]], [[float(e) for e in row] for row in d["errors"]])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{p} is not a ditkit cache schedule: {e}") from None

    def check(self, steps: int, sampler: str, depth: int) -> None:
        """Refuse a run the schedule was not calibrated for (never silent misuse)."""
        if steps != self.steps or sampler != self.sampler:
            raise ValueError(f"this cache schedule was calibrated for {self.sampler} with {self.steps} steps; this run "
                             f"uses {sampler} with {steps}: recalibrate with `ditkit cache-calibrate MODEL "
                             f"--steps {steps} --sampler {sampler}`")
        if any(len(r) != depth for r in self.reuse):
            raise ValueError(f"this cache schedule is for a {len(self.reuse[0])}-block model, not {depth} blocks")


class SmoothCache:
    """One generation's run of a static SmoothCache schedule."""

    def __init__(self, schedule: SmoothSchedule):
        self.schedule = schedule
        self.call = 0
        self.residuals: dict[int, torch.Tensor] = {}
        self.hits = 0

    def run_blocks(self, blocks, tokens: torch.Tensor, args: tuple) -> torch.Tensor:
        k = self.call
        self.call += 1
        plan = self.schedule.reuse[k] if k < len(self.schedule.reuse) else [False] * len(blocks)
        for i, blk in enumerate(blocks):
            cached = self.residuals.get(i)
            if plan[i] and cached is not None and cached.shape == tokens.shape:
                self.hits += 1
                tokens = tokens + cached.to(tokens.dtype)
                continue
            out = blk(tokens, *args)
            self.residuals[i] = (out - tokens).detach()
            tokens = out
        return tokens


class CachedModel:
    """A model whose forward runs its blocks through a cache policy. Callable like the DiT;
    other attributes (config, parameters, ...) pass through."""

    def __init__(self, model, policy):
        self.model = model
        self.policy = policy

    def __call__(self, x, t, context, context_mask=None):
        return self.model(x, t, context, context_mask, block_runner=self.policy.run_blocks)

    def __getattr__(self, name):
        return getattr(self.model, name)


def parse_cache_spec(spec: str | None, model_dir: str | Path | None = None):
    """A factory () -> fresh policy for one generation, or None. Raises ValueError listing the options."""
    if spec is None or spec in ("", "none", "off"):
        return None
    kind, _, arg = spec.partition(":")
    if kind == "first-block":
        try:
            threshold = float(arg)
        except ValueError:
            raise ValueError(f"bad cache spec {spec!r}: first-block needs a threshold, e.g. first-block:0.08") from None
        FirstBlockCache(threshold)  # validates
        return lambda: FirstBlockCache(threshold)
    if kind == "smooth":
        if arg == "calibrated":
            if model_dir is None:
                raise ValueError("smooth:calibrated needs a model folder with a saved schedule")
            path = Path(model_dir) / SCHEDULE_FILE
        elif arg.endswith(".json"):
            path = Path(arg)
        else:
            raise ValueError(f"bad cache spec {spec!r}; allowed: {', '.join(POLICIES)}")
        schedule = SmoothSchedule.load(path)
        factory = lambda: SmoothCache(schedule)  # noqa: E731
        factory.schedule = schedule
        return factory
    raise ValueError(f"unknown cache spec {spec!r}; allowed: {', '.join(POLICIES)}")
