"""The Python API.

    import ditkit
    pipe = ditkit.load("shapes-64")            # an embedded model name, or a model folder
    images = pipe.generate("a red circle to the left of a blue square", seed=0)

Images are PIL at the edges and (B, C, H, W) tensors in [-1, 1] inside.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from PIL import Image

from ditkit.core.checkpoint import load_model
from ditkit.core.config import SampleConfig
from ditkit.core.encoders import TextEncoder, get_text_encoder
from ditkit.core.guidance import APG, guided_velocity
from ditkit.tasks.pipeline_edit import EditMethods
from ditkit.core.sampling import get_sampler, pure_noise_prior, timesteps

WEIGHTS_DIR = Path(__file__).parent / "weights"


def embedded_models() -> list[str]:
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """An embedded model name or a folder path -> the model folder."""
    name = str(name_or_path)
    if name in embedded_models():
        return WEIGHTS_DIR / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(f"unknown model {name!r}: not an embedded model ({', '.join(embedded_models()) or 'none'}) "
                     "and not a model folder")


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


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def initial_noise(n: int, shape: tuple[int, ...], seed: int | Sequence[int], device: torch.device) -> torch.Tensor:
    """Noise for n images; image i uses a generator seeded with seed + i (or seed[i]
    when a list of seeds is given), so an image does not depend on its batch."""
    seeds = [seed + i for i in range(n)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds given for {n} images")
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)


def generate_tensor(model: torch.nn.Module, encoder: TextEncoder, prompts: Sequence[str], sample: SampleConfig,
                    seed: int | Sequence[int] = 0, apg: APG | None = None,
                    guidance_interval: tuple[float, float] | None = None,
                    precision: str = "fp32", batch_size: int = 16,
                    callback: Callable[[int, int], None] | None = None, cache=None) -> torch.Tensor:
    """Sample one image per prompt; image i starts from the noise of seed + i (or seed[i]).
    precision: fp32, bf16 (autocast), int8 (dynamically quantized Linear layers, CPU) or
    fp16 (GPU). cache: None, a spec string ("first-block:0.08", "smooth:PATH.json") or a
    factory returning a fresh ditkit.engine.cache policy; each batch gets its own, so no cache
    state survives a generation. Returns (N, C, size, size) in [-1, 1] (unclamped)."""
    from ditkit.engine.cache import CachedModel, parse_cache_spec
    from ditkit.core.precision import model_for

    validate_sample(model, sample, precision)
    device = next(model.parameters()).device
    make_cache = parse_cache_spec(cache) if isinstance(cache, str) else cache
    schedule = getattr(make_cache, "schedule", None)
    if schedule is not None:
        schedule.check(sample.steps, sample.sampler, len(model.blocks))
    runner = model_for(model, precision)
    prior = load_prior(sample.prior_model, model, device) if sample.prior_model else None
    prior_steps = prior is not None or sample.prior_until < 1.0
    if schedule is not None and prior_steps:
        raise ValueError("a calibrated cache schedule (smooth:...) counts the main model's steps from the first, and "
                         "prior steps (prior_until, prior_model) skip the first ones: use first-block caching or no prior")
    if guidance_interval is None:  # the model's default (SampleConfig.interval_lo / interval_hi)
        guidance_interval = (sample.interval_lo, sample.interval_hi)
    autocast_precision = "fp32" if precision == "int8" else precision
    sampler = get_sampler(sample.sampler)
    ts = timesteps(sample.steps, sample.shift)
    c = model.config
    noise = initial_noise(len(prompts), (c.in_channels, sample.size, sample.size), seed, device)
    outs, total, done = [], len(prompts) * sample.steps, 0
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        cond = encoder.encode(chunk, device)
        uncond = encoder.encode([""] * len(chunk), device)
        net = CachedModel(runner, make_cache()) if make_cache else runner
        velocity = guided_velocity(net, cond, uncond, sample.guidance, apg if sample.apg else None,
                                   guidance_interval, autocast_precision)
        if prior_steps:
            at_one = guided_velocity(prior, cond, uncond, sample.guidance, precision=autocast_precision) if prior else None
            velocity = pure_noise_prior(velocity, sample.prior_until, at_one)

        def step_cb(k: int, n: int, base=done, b=len(chunk)) -> None:
            if callback:
                callback(base + k * b, total)

        outs.append(sampler(velocity, noise[i:i + len(chunk)], ts, step_cb))
        done += len(chunk) * sample.steps
    return torch.cat(outs)


def validate_sample(model: torch.nn.Module, sample: SampleConfig, precision: str) -> None:
    if sample.steps < 1:
        raise ValueError(f"steps must be >= 1, got {sample.steps}")
    if sample.guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {sample.guidance}")
    from ditkit.core.precision import check_precision

    check_precision(precision, next(model.parameters()).device)
    p = model.config.patch_size
    if sample.size % p or not p <= sample.size <= 1024:
        raise ValueError(f"size {sample.size} must be a multiple of the patch size {p} between {p} and 1024")
    get_sampler(sample.sampler)


if TYPE_CHECKING:
    from ditkit.accel.scaling import BestOfN, Verifier


class Pipeline(EditMethods):
    """A loaded model plus its text encoder and default sampling settings."""

    def __init__(self, model: torch.nn.Module, config: dict, source: str, device: str | torch.device = "cpu"):
        self.model = model
        self.config = config
        self.source = source
        self.device = torch.device(device)
        self.defaults: SampleConfig = config["sample"]
        self._encoder: TextEncoder | None = None

    @property
    def text_encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = get_text_encoder(self.config.get("text_encoder", "minilm"), device=self.device)
        return self._encoder

    def sample_config(self, steps=None, guidance=None, sampler=None, size=None, shift=None, apg=None,
                      interval=None, prior_until=None, prior_model=None) -> SampleConfig:
        d = self.defaults
        lo, hi = (d.interval_lo, d.interval_hi) if interval is None else (float(interval[0]), float(interval[1]))
        return replace(d, steps=int(d.steps if steps is None else steps), interval_lo=lo, interval_hi=hi,
                       guidance=float(d.guidance if guidance is None else guidance),
                       sampler=d.sampler if sampler is None else sampler,
                       size=int(d.size if size is None else size),
                       shift=float(d.shift if shift is None else shift),
                       apg=bool(d.apg if apg is None else apg),
                       prior_until=float(d.prior_until if prior_until is None else prior_until),
                       prior_model=str(d.prior_model if prior_model is None else prior_model))

    def generate(self, prompt: str | Sequence[str], steps: int | None = None, guidance: float | None = None,
                 apg: bool | APG | None = None, sampler: str | None = None, seed: int = 0, size: int | None = None,
                 num_images: int = 1, shift: float | None = None,
                 guidance_interval: tuple[float, float] | None = None, precision: str = "fp32",
                 batch_size: int = 16, callback: Callable[[int, int], None] | None = None,
                 best_of: int = 1, verifier: "str | Verifier | None" = None,
                 cache: str | None = None, prior_until: float | None = None,
                 prior_model: str | None = None) -> list[Image.Image]:
        """Generate num_images images per prompt. An empty prompt means unconditional.
        Image k of prompt j uses seed + j * num_images + k.

        best_of > 1: for each requested image, generate best_of candidates and keep
        the one the verifier ("shapes", "digits" or a callable (image, prompt) -> float)
        scores highest (see ditkit.accel.scaling; costs best_of times the sampling).

        precision: fp32, bf16, int8 (CPU) or fp16 (GPU). cache: feature caching across
        steps, "first-block:THRESHOLD", "smooth:calibrated" (the schedule saved in the
        model folder by calibrate_cache) or "smooth:PATH.json" (see ditkit.engine.cache).
        prior_until, prior_model: steps with t >= prior_until take x0 from the t = 1 prediction of
        prior_model ("" = the model itself; sampling.pure_noise_prior)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompts given")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        flat = [p for p in prompts for _ in range(num_images)]
        kwargs = dict(steps=steps, guidance=guidance, apg=apg, sampler=sampler, seed=seed, size=size, shift=shift,
                      guidance_interval=guidance_interval, precision=precision, batch_size=batch_size,
                      callback=callback, cache=cache, prior_until=prior_until, prior_model=prior_model)
        if best_of != 1 or verifier is not None:
            return self.generate_best_of(flat, best_of, verifier, **kwargs).images
        return to_pil(self._sample(flat, [seed + i for i in range(len(flat))], **kwargs))

    def generate_best_of(self, prompts: str | Sequence[str], n: int, verifier: "str | Verifier | None",
                         seed: int = 0, **kwargs) -> "BestOfN":
        """Best-of-n per prompt (ditkit.accel.scaling): all candidates, their scores and the choice.
        Candidate k of prompt j uses seed + j + k * scaling.CANDIDATE_STRIDE (candidate 0 is
        the plain image). Takes the keyword arguments of generate."""
        from ditkit.accel.scaling import candidate_seeds, check_best_of, get_verifier, score_candidates

        check_best_of(n)
        if verifier is None:
            raise ValueError("best-of-N needs a verifier: 'shapes', 'digits' or a callable (image, prompt) -> float")
        get_verifier(verifier)  # fail on a bad name before sampling anything
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        flat = [p for p in prompts for _ in range(n)]
        images = to_pil(self._sample(flat, candidate_seeds(len(prompts), n, seed), **kwargs))
        return score_candidates(images, prompts, n, verifier)

    def _sample(self, prompts: list[str], seeds: list[int], steps=None, guidance=None, apg=None, sampler=None,
                size=None, shift=None, guidance_interval=None, precision="fp32", batch_size=16,
                callback=None, seed=None, cache=None, prior_until=None, prior_model=None) -> torch.Tensor:
        from ditkit.engine.cache import parse_cache_spec

        apg_cfg = apg if isinstance(apg, APG) else (APG() if apg else None)
        sample = self.sample_config(steps, guidance, sampler, size, shift, apg_cfg is not None,
                                    prior_until=prior_until, prior_model=prior_model)
        make_cache = parse_cache_spec(cache, self.source) if isinstance(cache, str) else cache
        return generate_tensor(self.model, self.text_encoder, prompts, sample, seeds, apg_cfg, guidance_interval,
                               precision, batch_size, callback, cache=make_cache)

    def compile(self) -> "Pipeline":
        """torch.compile the model in place (about 40 s on first use; measured ~9% faster on
        this project's CPU, so off by default). Returns self."""
        if not getattr(self.model, "_ditkit_compiled", False):
            self.model.forward = torch.compile(self.model.forward)
            self.model._ditkit_compiled = True
        return self

    def calibrate_cache(self, steps: int | None = None, sampler: str | None = None, alpha: float = 0.15,
                        prompts: Sequence[str] | None = None, out: str | Path | None = None, seed: int = 0) -> Path:
        """Calibrate a SmoothCache schedule for this model at a step count and sampler and save it
        (default: cache_schedule.json in the model folder, which "smooth:calibrated" loads)."""
        from ditkit.engine.cache import SCHEDULE_FILE, calibrate_smooth

        if prompts is None:
            prompts = _default_prompts(self.config)
        sample = self.sample_config(steps=steps, sampler=sampler)
        schedule = calibrate_smooth(self.model, self.text_encoder, list(prompts), sample, alpha, seed)
        path = Path(out) if out is not None else Path(self.source) / SCHEDULE_FILE
        schedule.save(path)
        return path

    def __repr__(self) -> str:
        return f"Pipeline(source={self.source!r}, params={sum(p.numel() for p in self.model.parameters()):,})"


def _default_prompts(config: dict, n: int = 8) -> list[str]:
    """A few of the model's own benchmark prompts (for calibration), by the dataset it records."""
    from ditkit.data import benchmark_prompts

    prompts = benchmark_prompts((config.get("data") or {}).get("dataset"), n, seed=4242)
    if prompts is None:
        raise ValueError("this model records no dataset, so there are no default calibration prompts; pass prompts")
    return prompts


def load(name_or_path: str | Path = "shapes-64", device: str | torch.device = "cpu") -> Pipeline:
    """Load an embedded model by name or a model folder."""
    folder = resolve_model(name_or_path)
    model, cfg = load_model(folder, device)
    return Pipeline(model, cfg, str(folder), device)
