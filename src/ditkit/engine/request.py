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
from typing import Callable, Iterable, Sequence, Union

import torch

from ditkit.core.config import SampleConfig
from ditkit.core.control import AppliedControl
from ditkit.core.guidance import APG
from ditkit.core.limits import MAX_BATCH_SIZE, MAX_FRAMES, check_int, check_seed
from ditkit.core.precision import check_precision
from ditkit.interop.engines import check_engine_precision
from ditkit.interop.runtime import blocks_refusal, is_exported_model

CacheFactory = Callable[[], object]  # () -> a fresh cache policy for one batch (ditkit.engine.cache)
CacheSetting = Union[str, CacheFactory, None]  # a spec string ("first-block:0.08", "smooth:PATH.json") or a factory


def sample_settings(defaults: SampleConfig, steps=None, guidance=None, sampler=None, size=None, shift=None,
                    apg=None, interval=None, prior_until=None, prior_model=None) -> SampleConfig:
    """A model's default sampling settings with the given overrides (None keeps the default).
    The overrides are not converted here: SampleConfig checks them (types, finiteness, ranges)."""
    d = defaults
    lo, hi = (d.interval_lo, d.interval_hi) if interval is None else _pair(interval)
    return replace(d, steps=d.steps if steps is None else steps, interval_lo=lo, interval_hi=hi,
                   guidance=d.guidance if guidance is None else guidance,
                   sampler=d.sampler if sampler is None else sampler,
                   size=d.size if size is None else size,
                   shift=d.shift if shift is None else shift,
                   apg=bool(d.apg if apg is None else apg),
                   prior_until=d.prior_until if prior_until is None else prior_until,
                   prior_model=str(d.prior_model if prior_model is None else prior_model))


def _pair(interval) -> tuple:
    """A guidance interval as (lo, hi); its numbers are SampleConfig's to check."""
    try:
        lo, hi = interval
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be a pair (lo, hi) with 0 <= lo <= hi <= 1, got {interval!r}") from None
    return lo, hi


def prompt_list(prompt: str | Sequence[str]) -> list[str]:
    """One prompt or a list of prompts as a non-empty list of strings ("" = unconditional)."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, Iterable) or isinstance(prompt, (bytes, dict)):
        raise ValueError(f"prompts must be a string or a list of strings, got {type(prompt).__name__}")
    prompts = list(prompt)
    bad = next((p for p in prompts if not isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"prompts must be a string or a list of strings; the list holds {bad!r} "
                         f"(type {type(bad).__name__})")
    if not prompts:
        raise ValueError("no prompts given")
    return prompts


def seed_list(n: int, seed: int | Sequence[int]) -> tuple[int, ...]:
    """Per-image seeds: seed + i for an int, else the given list (one per image); every seed
    in 0 <= seed < 2**63 (limits.check_seed)."""
    if isinstance(seed, Iterable) and not isinstance(seed, (str, bytes)):
        seeds = tuple(check_seed(s) for s in seed)
    else:
        first = check_seed(seed)
        if n > 0:
            check_seed(first + n - 1, f"seed + {n - 1} (the last image's seed)")
        seeds = tuple(first + i for i in range(n))
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
    does not depend on its batch). fixed_shape: every forward batch runs at exactly batch_size
    rows (dummy rows appended) with text states padded to the request's text-length bucket (its
    longest prompt's token count rounded up to 16, velocity.fixed_text_length), so an image is
    bit-identical whichever other prompts of the same bucket share its request (on CPU, a
    matmul's result can change in the last bits with its shape); the server batches requests
    this way, one bucket per batch.

    frames: a video model's clip length (0 for an image model; engine/video.py). first_frames:
    image-to-video, the given first frame of each video, (N, C, size, size) in [-1, 1], or None
    for text-to-video.

    controls: ControlNet-Transformer controls (core/control.py), each a control model, its
    condition map (1, 3, size, size) shared by every image, and a scale; engine/control.py builds
    them from (kind or model, image, scale)."""
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
    fixed_shape: bool = False
    frames: int = 0
    first_frames: torch.Tensor | None = None
    controls: tuple[AppliedControl, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checks store each value in its canonical type
        set_(self, "prompts", tuple(prompt_list(self.prompts)))
        set_(self, "seeds", seed_list(len(self.prompts), self.seeds))
        if self.apg is not None and not isinstance(self.apg, APG):
            raise ValueError(f"apg must be an APG or None, got {self.apg!r}")
        # The sampling numbers are a SampleConfig's: its checks are the one place they are validated.
        lo, hi = _pair(self.guidance_interval)
        checked = SampleConfig(sampler=self.sampler, steps=self.steps, guidance=self.guidance, shift=self.shift,
                               apg=self.apg is not None, size=self.size, interval_lo=lo, interval_hi=hi,
                               prior_until=self.prior_until, prior_model=self.prior_model)
        for name in ("steps", "guidance", "shift", "size", "prior_until"):
            set_(self, name, getattr(checked, name))
        set_(self, "guidance_interval", (checked.interval_lo, checked.interval_hi))
        set_(self, "batch_size", check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE))
        if not isinstance(self.fixed_shape, bool):
            raise ValueError(f"fixed_shape must be True or False, got {self.fixed_shape!r}")
        set_(self, "frames", check_int("frames", self.frames, 0, MAX_FRAMES))
        if self.first_frames is not None:
            check_first_frames(self.first_frames, len(self.prompts), self.size)
        set_(self, "controls", tuple(self.controls))
        if not all(isinstance(c, AppliedControl) for c in self.controls):
            raise ValueError("controls must be AppliedControl values (engine.control.applied_controls builds them)")

    @classmethod
    def from_sample(cls, prompts: Sequence[str], sample: SampleConfig, seed: int | Sequence[int] = 0,
                    apg: APG | None = None, guidance_interval: tuple[float, float] | None = None,
                    precision: str = "fp32", batch_size: int = 16, cache: CacheSetting = None) -> "GenerationRequest":
        """A request from a model's sampling settings. APG applies only where sample.apg is set;
        guidance_interval None keeps the settings' interval."""
        if guidance_interval is None:
            guidance_interval = (sample.interval_lo, sample.interval_hi)
        return cls(prompts, seed, size=sample.size, sampler=sample.sampler, steps=sample.steps,
                   shift=sample.shift, guidance=sample.guidance, apg=apg if sample.apg else None,
                   guidance_interval=guidance_interval, precision=precision, cache=cache,
                   prior_until=sample.prior_until, prior_model=sample.prior_model, batch_size=batch_size)

    @property
    def uses_prior(self) -> bool:
        """Whether the first steps come from a pure-noise prediction (prior_until < 1 or a prior model)."""
        return bool(self.prior_model) or self.prior_until < 1.0

    def check_for(self, model: torch.nn.Module) -> None:
        """The checks that need the model: precision on its device, size against its patch size,
        frames against the kind of model."""
        check_precision(self.precision, next(model.parameters()).device)
        if is_exported_model(model):  # an exported graph (interop.runtime): its engine's precisions, no blocks
            check_engine_precision(model.engine_name, self.precision)
            if self.cache is not None or self.controls:
                raise ValueError(blocks_refusal(model.engine_name, "feature caching (cache)" if self.cache is not None
                                                else "control"))
        check_frames_for(model, self.frames, self.first_frames is not None)
        if self.frames and (self.cache is not None or self.uses_prior):
            raise ValueError("feature caches and prior steps (cache, prior_until, prior_model) are for image models; "
                             "a video request takes neither")
        for c in self.controls:
            if self.frames:
                raise ValueError("control works with image models, not video requests")
            if c.net.base_config.to_dict() != model.config.to_dict():
                raise ValueError("a control model of the request was made for another base model's architecture")
            if tuple(c.condition.shape[-2:]) != (self.size, self.size):
                raise ValueError(f"a control's condition map is {tuple(c.condition.shape[-2:])}, the images "
                                 f"{self.size}x{self.size}: they must match")
        p = model.config.patch_size
        if self.size % p or not p <= self.size <= 1024:
            raise ValueError(f"size {self.size} must be a multiple of the patch size {p} between {p} and 1024")


def check_first_frames(first_frames, n: int, size: int) -> None:
    """Image-to-video's given first frames: a tensor (n, C, size, size), finite."""
    if not isinstance(first_frames, torch.Tensor) or first_frames.ndim != 4 or first_frames.shape[0] != n \
            or tuple(first_frames.shape[-2:]) != (size, size):
        shape = tuple(first_frames.shape) if isinstance(first_frames, torch.Tensor) else type(first_frames).__name__
        raise ValueError(f"first_frames must be a tensor (N={n}, C, {size}, {size}) in [-1, 1], one per video; got {shape}")
    if not bool(torch.isfinite(first_frames).all()):
        raise ValueError("first_frames hold NaN or inf")


def check_frames_for(model: torch.nn.Module, frames: int, image_to_video: bool = False) -> None:
    """A video request (frames >= 1) needs a video model and an image request an image model,
    each with a message that names what to use instead."""
    cfg = model.config
    video_model = getattr(cfg, "frames", 0) > 0
    if frames and not video_model:
        raise ValueError("this is an image model; videos need a video model (model.frames > 0), e.g. the embedded "
                         "shapes-video")
    if not frames and video_model:
        raise ValueError(f"this is a video model (it makes clips of {cfg.frames} frames): use generate_video / "
                         "`ditkit video`, or an image model such as shapes-64 for images")
    if frames and frames % cfg.temporal_patch:
        raise ValueError(f"frames {frames} must be a multiple of the model's temporal patch {cfg.temporal_patch}")
    if image_to_video and cfg.temporal_patch != 1:
        raise ValueError("image-to-video needs a model with temporal_patch 1 (the first frame is a latent frame of its own)")
