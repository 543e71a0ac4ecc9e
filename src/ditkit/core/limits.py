"""The limits on what a caller may ask for, and the checks that enforce them.

Every number a user can pass (API keyword, CLI flag, config file) goes through one of
these checks, called from the configs (core.config) and the engine's request
(engine.request), so the API, the CLI and the coming server refuse the same inputs with
the same message. The limits are listed in README.md ("Limits").

A check returns the value in its canonical type (an int for integers, a float for
numbers) and raises ValueError naming the value, what it was and what is allowed. It
never truncates: 2.7 steps is an error, not 2; 2.0 is accepted as 2 (JSON and YAML
write whole numbers that way).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

MAX_STEPS = 1000           # sampling steps of one request (flow models need tens)
SEED_LIMIT = 2 ** 63       # seeds are 0 <= seed < 2**63: torch.Generator.manual_seed takes a 64-bit integer
MAX_SIZE = 1024            # image side in pixels
MAX_FRAMES = 64            # frames of one video (RoPE is relative: a model samples more frames than it trained on)
MAX_RESAMPLE = 20          # RePaint resampling rounds per step (each one costs a full step)
MAX_NUM_IMAGES = 10_000    # images per prompt in one call
MAX_BEST_OF = 1000         # best-of-N candidates per image
MAX_BATCH_SIZE = 1024      # prompts per forward batch
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE  # input images (16.8 MP), checked before decoding


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """value as an int with lo <= value <= hi (either bound may be None)."""
    if isinstance(value, bool) or not (isinstance(value, Integral)
                                        or (isinstance(value, float) and value.is_integer())):
        raise ValueError(f"{name} must be an integer{_range(lo, hi)}, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be an integer{_range(lo, hi)}, got {v}")
    return v


def check_number(name: str, value, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """value as a finite float with lo <= value <= hi (< where lo_open / hi_open)."""
    bounds = _interval(lo, hi, lo_open, hi_open)
    allowed = f"{name} must be{bounds} (a finite number)" if bounds else f"{name} must be a finite number"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{allowed}, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{allowed}, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{allowed}, got {v}")
    return v


def check_seed(value, name: str = "seed") -> int:
    """A seed: an integer with 0 <= seed < 2**63."""
    if isinstance(value, bool) or not (isinstance(value, Integral)
                                        or (isinstance(value, float) and value.is_integer())) \
            or not 0 <= int(value) < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer with 0 <= {name} < 2**63, got {value!r}")
    return int(value)


def check_interval(lo, hi, name: str = "guidance interval") -> tuple[float, float]:
    """A guidance interval (lo, hi) with 0 <= lo <= hi <= 1."""
    lo = check_number(f"{name} start", lo, 0.0, 1.0)
    hi = check_number(f"{name} end", hi, 0.0, 1.0)
    if lo > hi:
        raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 1, got ({lo}, {hi})")
    return lo, hi


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}"
    if lo is not None:
        return f" >= {lo}"
    return f" <= {hi}" if hi is not None else ""


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return f" {'<' if hi_open else '<='} {hi:g}" if hi is not None else ""
