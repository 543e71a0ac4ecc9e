"""The Python API.

    import ditkit
    pipe = ditkit.load("shapes-64")            # an embedded model name, or a model folder
    images = pipe.generate("a red circle to the left of a blue square", seed=0)

Images are PIL at the edges and (B, C, H, W) tensors in [-1, 1] inside.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_model
from .config import SampleConfig
from .encoders import TextEncoder, get_text_encoder
from .guidance import APG, guided_velocity
from .sampling import get_sampler, timesteps

WEIGHTS_DIR = Path(__file__).parent / "weights"
PRECISIONS = ("fp32", "bf16")


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


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def from_pil(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """List of PIL images -> (B, 3, H, W) in [-1, 1], resized to size x size if given."""
    out = []
    for im in images:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out)


def initial_noise(n: int, shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Noise for n images; image i uses a generator seeded with seed + i, so an image
    does not depend on the batch it was generated in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]).to(device)


def generate_tensor(model: torch.nn.Module, encoder: TextEncoder, prompts: Sequence[str], sample: SampleConfig,
                    seed: int = 0, apg: APG | None = None, guidance_interval: tuple[float, float] = (0.0, 1.0),
                    precision: str = "fp32", batch_size: int = 16,
                    callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Sample one image per prompt. Returns (N, C, size, size) in [-1, 1] (unclamped)."""
    validate_sample(model, sample, precision)
    device = next(model.parameters()).device
    sampler = get_sampler(sample.sampler)
    ts = timesteps(sample.steps, sample.shift)
    c = model.config
    noise = initial_noise(len(prompts), (c.in_channels, sample.size, sample.size), seed, device)
    outs, total, done = [], len(prompts) * sample.steps, 0
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        cond = encoder.encode(chunk, device)
        uncond = encoder.encode([""] * len(chunk), device)
        velocity = guided_velocity(model, cond, uncond, sample.guidance, apg if sample.apg else None,
                                   guidance_interval, precision)

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
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    p = model.config.patch_size
    if sample.size % p or not p <= sample.size <= 1024:
        raise ValueError(f"size {sample.size} must be a multiple of the patch size {p} between {p} and 1024")
    get_sampler(sample.sampler)


class Pipeline:
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

    def sample_config(self, steps=None, guidance=None, sampler=None, size=None, shift=None, apg=None) -> SampleConfig:
        d = self.defaults
        return replace(d, steps=int(d.steps if steps is None else steps),
                       guidance=float(d.guidance if guidance is None else guidance),
                       sampler=d.sampler if sampler is None else sampler,
                       size=int(d.size if size is None else size),
                       shift=float(d.shift if shift is None else shift),
                       apg=bool(d.apg if apg is None else apg))

    def generate(self, prompt: str | Sequence[str], steps: int | None = None, guidance: float | None = None,
                 apg: bool | APG | None = None, sampler: str | None = None, seed: int = 0, size: int | None = None,
                 num_images: int = 1, shift: float | None = None,
                 guidance_interval: tuple[float, float] = (0.0, 1.0), precision: str = "fp32",
                 batch_size: int = 16, callback: Callable[[int, int], None] | None = None) -> list[Image.Image]:
        """Generate num_images images per prompt. An empty prompt means unconditional.
        Image k of prompt j uses seed + j * num_images + k."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompts given")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        apg_cfg = apg if isinstance(apg, APG) else (APG() if apg else None)
        sample = self.sample_config(steps, guidance, sampler, size, shift, apg_cfg is not None)
        flat = [p for p in prompts for _ in range(num_images)]
        x = generate_tensor(self.model, self.text_encoder, flat, sample, seed, apg_cfg, guidance_interval,
                            precision, batch_size, callback)
        return to_pil(x)

    def __repr__(self) -> str:
        return f"Pipeline(source={self.source!r}, params={sum(p.numel() for p in self.model.parameters()):,})"


def load(name_or_path: str | Path = "shapes-64", device: str | torch.device = "cpu") -> Pipeline:
    """Load an embedded model by name or a model folder."""
    folder = resolve_model(name_or_path)
    model, cfg = load_model(folder, device)
    return Pipeline(model, cfg, str(folder), device)
