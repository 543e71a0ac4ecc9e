"""A generation request: everything one text-to-image call asks for, checked in one place.

    request = GenerationRequest.from_sample(["a red circle"], sample, seed=0, precision="bf16")
    images = engine.generate(request)            # ditkit.engine.generate.Engine

The model's stored defaults (SampleConfig) merge with a caller's overrides in
`sample_settings`; a request then holds the final values. Checks that need only the request
run when it is built (`__post_init__`); checks against a model (patch size, device, cache
schedule depth) run in `check_for`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence, Union

import torch

from ditkit.core.config import SampleConfig
from ditkit.core.guidance import APG
from ditkit.core.precision import check_precision
from ditkit.core.sampling import get_sampler

CacheFactory = Callable[[], object]  # () -> a fresh cache policy for one batch (ditkit.engine.cache)
CacheSetting = Union[str, CacheFactory, None]  # a spec string ("first-block:0.08", "smooth:PATH.json") or a factory


def sample_settings(defaults: SampleConfig, steps=None, guidance=None, sampler=None, size=None, shift=None,
                    apg=None, interval=None, prior_until=None, prior_model=None) -> SampleConfig:
    """A model's default sampling settings with the given overrides (None keeps the default)."""
    d = defaults
    lo, hi = (d.interval_lo, d.interval_hi) if interval is None else (float(interval[0]), float(interval[1]))
    return replace(d, steps=int(d.steps if steps is None else steps), interval_lo=lo, interval_hi=hi,
                   guidance=float(d.guidance if guidance is None else guidance),
                   sampler=d.sampler if sampler is None else sampler,
                   size=int(d.size if size is None else size),
                   shift=float(d.shift if shift is None else shift),
                   apg=bool(d.apg if apg is None else apg),
                   prior_until=float(d.prior_until if prior_until is None else prior_until),
                   prior_model=str(d.prior_model if prior_model is None else prior_model))


def seed_list(n: int, seed: int | Sequence[int]) -> tuple[int, ...]:
    """Per-image seeds: seed + i for an int, else the given list (one per image)."""
    seeds = tuple(seed + i for i in range(n)) if isinstance(seed, int) else tuple(int(s) for s in seed)
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds given for {n} images")
    return seeds


@dataclass(frozen=True)
class GenerationRequest:
    """One image per prompt; image i starts from the noise of seeds[i].

    guidance: CFG scale (1 = conditional only); apg: APG settings or None for plain CFG;
    guidance_interval: guidance only for t in [lo, hi]. precision: fp32, bf16 (autocast),
    int8 (quantized Linear layers, CPU) or fp16 (GPU). cache: None, a spec string or a factory
    of fresh ditkit.engine.cache policies (each batch gets its own). prior_until, prior_model:
    steps with t >= prior_until take x0 from the t = 1 prediction of prior_model ("" = the
    model itself; sampling.pure_noise_prior). batch_size: prompts per forward batch (an image
    does not depend on its batch)."""
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    size: int = SampleConfig.size  # the defaults are SampleConfig's, written once there
    sampler: str = SampleConfig.sampler
    steps: int = SampleConfig.steps
    shift: float = SampleConfig.shift
    guidance: float = SampleConfig.guidance
    apg: APG | None = None
    guidance_interval: tuple[float, float] = (SampleConfig.interval_lo, SampleConfig.interval_hi)
    precision: str = "fp32"
    cache: CacheSetting = None
    prior_until: float = SampleConfig.prior_until
    prior_model: str = SampleConfig.prior_model
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "seeds", seed_list(len(self.prompts), self.seeds))
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        get_sampler(self.sampler)  # names the allowed samplers
        lo, hi = self.guidance_interval
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got ({lo}, {hi})")
        if not 0.0 < self.prior_until <= 1.0:
            raise ValueError(f"prior_until must be in (0, 1], got {self.prior_until}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_sample(cls, prompts: Sequence[str], sample: SampleConfig, seed: int | Sequence[int] = 0,
                    apg: APG | None = None, guidance_interval: tuple[float, float] | None = None,
                    precision: str = "fp32", batch_size: int = 16, cache: CacheSetting = None) -> "GenerationRequest":
        """A request from a model's sampling settings. APG applies only where sample.apg is set;
        guidance_interval None keeps the settings' interval."""
        if guidance_interval is None:
            guidance_interval = (sample.interval_lo, sample.interval_hi)
        return cls(tuple(prompts), seed, size=sample.size, sampler=sample.sampler, steps=sample.steps,
                   shift=sample.shift, guidance=sample.guidance, apg=apg if sample.apg else None,
                   guidance_interval=tuple(guidance_interval), precision=precision, cache=cache,
                   prior_until=sample.prior_until, prior_model=sample.prior_model, batch_size=batch_size)

    @property
    def uses_prior(self) -> bool:
        """Whether the first steps come from a pure-noise prediction (prior_until < 1 or a prior model)."""
        return bool(self.prior_model) or self.prior_until < 1.0

    def check_for(self, model: torch.nn.Module) -> None:
        """The checks that need the model: precision on its device, size against its patch size."""
        check_precision(self.precision, next(model.parameters()).device)
        p = model.config.patch_size
        if self.size % p or not p <= self.size <= 1024:
            raise ValueError(f"size {self.size} must be a multiple of the patch size {p} between {p} and 1024")
