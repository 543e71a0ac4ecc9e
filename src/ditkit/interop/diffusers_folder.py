"""Any diffusers transformer saved in a local folder (save_pretrained layout): detect one,
load it offline, and build data-free forward inputs for it. `ditkit analyze` and
`ditkit prune` accept such folders next to ditkit model folders; ditkit.interop.diffusers
converts the PixArt ones to and from ditkit.

diffusers is an optional dependency (the [interop] extra) and is imported lazily.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ditkit.core.checkpoint import require_safetensors_weights

# The diffusers transformers whose blocks ditkit can analyse and prune.
DIFFUSERS_CLASSES = ("PixArtTransformer2DModel", "SD3Transformer2DModel")


def is_diffusers_folder(path: str | Path) -> bool:
    """A folder whose config.json names a diffusers class (written by save_pretrained)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return "_class_name" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def load_diffusers_transformer(path: str | Path) -> nn.Module:
    """Load a PixArt or SD3 transformer from a local save_pretrained folder (nothing is downloaded)."""
    name = json.loads((Path(path) / "config.json").read_text()).get("_class_name")
    if name not in DIFFUSERS_CLASSES:
        raise ValueError(f"unsupported diffusers class {name!r}; allowed: {', '.join(DIFFUSERS_CLASSES)}")
    require_safetensors_weights(path, "diffusers folder")
    import diffusers  # optional dependency (the [interop] extra)

    # use_safetensors=True: never fall back to unpickling a .bin. low_cpu_mem_usage=False: the
    # default asks for `accelerate` (not a dependency) and prints a warning.
    with _quiet_diffusers():
        return getattr(diffusers, name).from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                        low_cpu_mem_usage=False).eval()


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' loader logs to stderr (config keys it ignores, hints) and may draw progress
    bars; ditkit reports its own errors and progress, so both are off while a folder loads
    and restored after."""
    from diffusers.utils import logging as diffusers_logging  # optional dependency (the [interop] extra)

    level, bars = diffusers_logging.get_verbosity(), diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bars:
            diffusers_logging.enable_progress_bar()


def calibration_inputs(transformer: nn.Module, batch: int = 4, num_timesteps: int = 8, text_tokens: int = 16,
                       seed: int = 0) -> dict:
    """Forward inputs for a diffusers transformer without a pipeline: Gaussian latents
    hidden_states (batch, C, S, S) (what a sampler feeds at t = 1, and close to it at high t),
    Gaussian text states (batch, text_tokens, D_text) and `timestep`: num_timesteps time bins
    evenly over diffusers' 0-1000 scale. Real latents and prompt embeddings give more
    faithful block scores for low t; pass them to analysis.analyze_diffusers directly."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    name = type(transformer).__name__
    size = int(c.sample_size)
    x = torch.randn(batch, c.in_channels, size, size, generator=g)
    ts = [float(t) for t in torch.linspace(999, 0, num_timesteps + 1)[:-1]]
    if name == "PixArtTransformer2DModel":
        ctx = torch.randn(batch, text_tokens, c.caption_channels, generator=g)
        return dict(hidden_states=x, encoder_hidden_states=ctx, timestep=ts,
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    if name == "SD3Transformer2DModel":
        ctx = torch.randn(batch, text_tokens, c.joint_attention_dim, generator=g)
        pooled = torch.randn(batch, c.pooled_projection_dim, generator=g)
        return dict(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=ts)
    raise ValueError(f"no calibration inputs for {name}; allowed: {', '.join(DIFFUSERS_CLASSES)}")
