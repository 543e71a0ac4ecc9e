"""The engine: a model with its text encoder and the models derived from it, and the one
path from a GenerationRequest to images.

    engine = Engine(model, encoder, defaults=sample_config, source="path/to/model")
    x = engine.generate(GenerationRequest.from_sample(prompts, engine.defaults, seed=0))  # (N, C, H, W)

generate: check the request -> per batch, the guided velocity of its prompts
(engine.velocity.prompt_velocity, with a cache policy and the pure-noise prior around it)
-> the sampler -> the images in [-1, 1]. The int8 copy (core.precision) and prior models
(SampleConfig.prior_model) are loaded once per Engine under a lock, so one engine can serve
requests from many threads; all per-generation state (APG momentum, cache residuals) lives
in closures built per batch, never on the engine. Each batch's result is checked once for
NaN/inf (check_finite: one reduction per batch, no per-step sync), so a model with broken
weights is an error naming it, never a black image.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch

from ditkit.core.checkpoint import load_model, resolve_model
from ditkit.core.config import SampleConfig
from ditkit.core.control import ControlInfo, ControlNet, ControlledModel, check_control_base, load_control
from ditkit.core.encoders import TextEncoder
from ditkit.core.guidance import Velocity
from ditkit.core.lora import base_fingerprint
from ditkit.core.precision import model_for
from ditkit.core.sampling import StepInfo, get_sampler, pure_noise_prior, timesteps
from ditkit.interop.runtime import is_exported_model
from ditkit.engine.cache import CachedModel, parse_cache_spec
from ditkit.engine.request import CacheFactory, CacheSetting, GenerationRequest, sample_settings, seed_list
from ditkit.engine.velocity import fixed_length_context, fixed_text_length, prompt_velocity
from ditkit.engine.video import FirstFrameModel

# The user callback gets the sampler's StepInfo ({step, steps, t, x, x0} of the current batch)
# plus progress over the whole request: done and total in image-steps, and index, the position
# of the batch's first image among the request's images.
ProgressCallback = Callable[[dict], None]


def initial_noise(n: int, shape: tuple[int, ...], seed: int | Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Noise (n, *shape) for n images; image i uses a generator seeded with seed + i (or seed[i]
    when a list of seeds is given), so an image does not depend on its batch."""
    seeds = seed_list(n, seed)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


def check_finite(x: torch.Tensor, source: str | None) -> torch.Tensor:
    """x itself if every value is finite; else a ValueError naming the model (its folder).
    Called once per sampled batch (and by the editing tasks on their results): NaN weights
    or an overflowing setting would otherwise come out as an all-black image."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"the model {source or '(unnamed)'} produced non-finite values (NaN or inf): its weights "
                         "may be corrupt or hold NaN, or a setting (guidance, shift) is too extreme for it")
    return x


def load_prior(name_or_path: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The layout-prior model of SampleConfig.prior_model, checked against the main model: it
    must take the same image channels and text states (it sees the same noise and caption)."""
    try:
        folder = resolve_model(name_or_path)
    except ValueError as e:
        raise ValueError(f"prior model: {e}") from None
    prior, _ = load_model(folder, device)
    mine, theirs = model.config, prior.config
    for key in ("in_channels", "out_channels", "text_dim"):
        if getattr(mine, key) != getattr(theirs, key):
            raise ValueError(f"prior model {name_or_path!r} has {key}={getattr(theirs, key)}, "
                             f"the model {getattr(mine, key)}: they must match")
    return prior.eval()


class Engine:
    """A model, its text encoder (or a zero-argument function that loads it on first use), its
    default sampling settings and its folder (for "smooth:calibrated"), with the models derived
    from it loaded once."""

    def __init__(self, model: torch.nn.Module, encoder: TextEncoder | Callable[[], TextEncoder],
                 defaults: SampleConfig | None = None, source: str | None = None):
        self.model = model
        self.defaults = defaults if defaults is not None else SampleConfig()
        self.source = source
        loaded = hasattr(encoder, "encode")  # an encoder, or else the function that loads one
        self._encoder: TextEncoder | None = encoder if loaded else None
        self._load_encoder = None if loaded else encoder
        self._priors: dict[str, torch.nn.Module] = {}
        self._controls: dict[str, tuple[ControlNet, ControlInfo]] = {}
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = self._load_encoder()
        return self._encoder

    def sample_config(self, steps=None, guidance=None, sampler=None, size=None, shift=None, apg=None,
                      interval=None, prior_until=None, prior_model=None) -> SampleConfig:
        """The default sampling settings with overrides (request.sample_settings)."""
        return sample_settings(self.defaults, steps, guidance, sampler, size, shift, apg, interval,
                               prior_until, prior_model)

    def runner(self, precision: str) -> torch.nn.Module:
        """The module that runs at a precision: the model, or its int8 copy (made once per weights);
        for an exported graph (interop.runtime), the graph compiled at that precision (made once)."""
        if is_exported_model(self.model):
            return self.model.at_precision(precision)
        return model_for(self.model, precision)

    def prior(self, name_or_path: str) -> torch.nn.Module:
        """The prior model of SampleConfig.prior_model, loaded on first use and kept."""
        with self._lock:
            if name_or_path not in self._priors:
                self._priors[name_or_path] = load_prior(name_or_path, self.model, self.device)
            return self._priors[name_or_path]

    def control_model(self, name_or_path: str) -> tuple[ControlNet, ControlInfo]:
        """A control model (core/control.py), loaded on first use and kept, checked against this
        engine's model (config and weights): one trained for another base is refused."""
        with self._lock:
            if name_or_path not in self._controls:
                net, info = load_control(name_or_path, self.device)
                if self._fingerprint is None:
                    self._fingerprint = base_fingerprint(self.model)
                check_control_base(info, self.model, self.source or "the loaded model", self._fingerprint)
                self._controls[name_or_path] = (net, info)
            return self._controls[name_or_path]

    def cache_factory(self, cache: CacheSetting) -> CacheFactory | None:
        """A request's cache setting as a factory of fresh policies (a spec string is parsed
        against this engine's model folder) or None."""
        return parse_cache_spec(cache, self.source) if isinstance(cache, str) else cache

    def generate(self, request: GenerationRequest, callback: ProgressCallback | None = None) -> torch.Tensor:
        """Sample one image per prompt (N, C, size, size), or one clip per prompt
        (N, frames, C, size, size) for a video request; values in [-1, 1] (unclamped)."""
        model = self.model
        request.check_for(model)
        make_cache = self.cache_factory(request.cache)
        schedule = getattr(make_cache, "schedule", None)
        if schedule is not None:
            schedule.check(request.steps, request.sampler, len(model.blocks))
        runner = self.runner(request.precision)
        prior = self.prior(request.prior_model) if request.prior_model else None
        if schedule is not None and request.uses_prior:
            raise ValueError("a calibrated cache schedule (smooth:...) counts the main model's steps from the first, and "
                             "prior steps (prior_until, prior_model) skip the first ones: use first-block caching or no prior")
        sampler = get_sampler(request.sampler)
        ts = timesteps(request.steps, request.shift)
        prompts, b = request.prompts, request.batch_size
        frame = (model.config.in_channels, request.size, request.size)
        noise = initial_noise(len(prompts), (request.frames, *frame) if request.frames else frame, request.seeds,
                              self.device)
        first = request.first_frames.to(self.device, noise.dtype) if request.first_frames is not None else None
        outs, total, done = [], len(prompts) * request.steps, 0
        text_length = fixed_text_length(self.encoder, prompts) if request.fixed_shape else None
        for i in range(0, len(prompts), b):
            chunk = list(prompts[i:i + b])
            rows, x = len(chunk), noise[i:i + len(chunk)]
            given = first[i:i + rows] if first is not None else None
            if request.fixed_shape and rows < b:  # dummy rows: unconditional, zero noise, dropped after
                chunk += [""] * (b - rows)
                x = torch.cat([x, x.new_zeros(b - rows, *x.shape[1:])])
                given = torch.cat([given, given.new_zeros(b - rows, *given.shape[1:])]) if given is not None else None
            policy = make_cache() if make_cache else None
            if request.controls:  # control models add their residuals to the blocks (core/control.py)
                net = ControlledModel(runner, request.controls, policy)
            else:
                net = CachedModel(runner, policy) if policy is not None else runner
            if given is not None:  # image-to-video: frame 0 is the given frame at t = 0 (engine/video.py)
                net = FirstFrameModel(net, given)
                x = torch.cat([given[:, None], x[:, 1:]], dim=1)
            velocity = self.batch_velocity(request, chunk, net, prior, text_length)
            report = _progress(callback, done, rows, total, i) if callback else None
            out = check_finite(sampler(velocity, x, ts, report)[:rows], self.source)
            if given is not None:
                out[:, 0] = given[:rows]  # exactly the given frame (the sampler kept it up to rounding)
            outs.append(out)
            done += rows * request.steps
        return torch.cat(outs)

    def batch_velocity(self, request: GenerationRequest, prompts: Sequence[str], net: torch.nn.Module,
                       prior: torch.nn.Module | None, text_length: int | None = None) -> Velocity:
        """The velocity a batch of prompts is sampled with: CFG/APG in the guidance interval,
        with the first steps from a pure-noise prediction where the request asks for them.
        text_length: a fixed_shape request's padded text length (velocity.fixed_text_length)."""
        # int8 runs its quantized Linear layers without autocast
        precision = "fp32" if request.precision == "int8" else request.precision
        context = (fixed_length_context(self.encoder, prompts, self.device, text_length) if request.fixed_shape
                   else None)
        velocity = prompt_velocity(net, self.encoder, prompts, request.guidance, request.apg,
                                   request.guidance_interval, precision, context)
        if request.uses_prior:
            at_one = prompt_velocity(prior, self.encoder, prompts, request.guidance, precision=precision,
                                     context=context) if prior is not None else None
            velocity = pure_noise_prior(velocity, request.prior_until, at_one)
        return velocity


def _progress(callback: ProgressCallback, done: int, batch: int, total: int, index: int) -> Callable[[StepInfo], None]:
    """The sampler callback of one batch: its StepInfo (x and x0 cut to the batch's real rows,
    without fixed_shape's dummy rows) plus the request's progress."""
    def report(info: StepInfo) -> None:
        rows = {k: info[k][:batch] for k in ("x", "x0") if isinstance(info.get(k), torch.Tensor)}
        callback({**info, **rows, "done": done + info["step"] * batch, "total": total, "index": index})

    return report


def generate_tensor(model: torch.nn.Module, encoder: TextEncoder, prompts: Sequence[str], sample: SampleConfig,
                    seed: int | Sequence[int] = 0, apg=None, guidance_interval: tuple[float, float] | None = None,
                    precision: str = "fp32", batch_size: int = 16, callback: ProgressCallback | None = None,
                    cache: CacheSetting = None) -> torch.Tensor:
    """generate for a bare model and sampling settings (a one-off Engine: a prior model is
    loaded per call; keep an Engine to load it once). APG applies only where sample.apg is set."""
    request = GenerationRequest.from_sample(prompts, sample, seed, apg, guidance_interval, precision, batch_size, cache)
    return Engine(model, encoder, sample).generate(request, callback)
