"""ControlNet-Transformer for ditkit DiTs (PixArt-delta, Chen et al. 2024, Sec. 3.2).

A control model steers a frozen text-to-image DiT with a condition map (core/control_maps.py:
edges, layout boxes, silhouettes). It holds trainable copies of the base's first N blocks:

    c    = embed(condition)                                  (B, N_tokens, W), its own stem + patch embedding
    h_0  = tokens + before_proj(c)                            tokens: the base's embedded input
    h_i  = copy_i(h_{i-1}, mod, text, ...)                    i = 1..N, the base's block i-1 as initialisation
    base: x_i = base_block_i(x_{i-1}) + scale * after_proj_i(h_i)     for i <= N, the rest unchanged

before_proj and every after_proj start at zero (ControlNet's zero convolutions, Zhang et al.
2023, as PixArt-delta's zero linear layers), so a fresh control model leaves the base's output
bit-identical, and a scale of 0 is the base itself (the control is not run at all). The copies
see the base's own embedded tokens, timestep modulation and text, so the condition is read in
the base's feature space. PixArt-delta's "each copy's output added to the base's hidden states
before the next base block" is the residual after base block i, which is what block i + 1 reads.

The control acts only through DiT.forward's `block_runner` hook (control_runner): the base and
its int8 copy run unchanged, the feature caches (engine/cache.py) wrap the controlled blocks
(a cached block reuses its residual with the control in it), and several control models add
their scaled residuals. A control folder holds only the control's weights and the record of its
base (name, model config, sha256 of the weights: core.lora.base_info), so it is never applied to
another base:

    control_config.json   {"format", "condition", "blocks", "base_model", "base_config", "base_sha256", ...}
    control.safetensors   cond_stem / cond_patch / before_proj / blocks.i / after_proj.i
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ditkit.core.checkpoint import WEIGHTS_DIR, atomic_save_tensors, load_model, resolve_model
from ditkit.core.config import Config, DiTConfig
from ditkit.core.control_maps import CONDITIONS, check_condition
from ditkit.core.files import atomic_write_json
from ditkit.core.lora import BaseInfo, base_fingerprint, base_info
from ditkit.core.model import DiT, DiTBlock, LinearBlock

CONTROL_CONFIG = "control_config.json"
CONTROL_WEIGHTS = "control.safetensors"
FORMAT = "ditkit-control-v1"
CONDITION_CHANNELS = 3  # a condition map is a gray image on three channels (control_maps.maps_tensor)

BlockRunner = Callable[[Sequence[Callable], torch.Tensor, tuple], torch.Tensor]


def default_blocks(depth: int) -> int:
    """Half the base's depth, at least one: PixArt-delta copies 13 of PixArt-alpha's 28 blocks."""
    return max(1, depth // 2)


def check_base_model(cfg: DiTConfig) -> None:
    """A control model steers a text-to-image image model."""
    if getattr(cfg, "frames", 0):
        raise ValueError("control works with image models; this is a video model (model.frames > 0)")
    if cfg.cond_channels:
        raise ValueError(f"control works with text-to-image models; this model takes a {cfg.cond_channels}-channel "
                         "conditioning image of its own (inpainting / upscaling)")


class ControlNet(nn.Module):
    """Trainable copies of a base's first `blocks` blocks, the condition's embedding and the zero projections."""

    def __init__(self, base: DiTConfig, condition: str, blocks: int = 0):
        super().__init__()
        check_base_model(base)
        self.condition = check_condition(condition)
        blocks = blocks or default_blocks(base.depth)
        if not 1 <= blocks <= base.depth:
            raise ValueError(f"control blocks must be between 1 and the base's depth {base.depth}, got {blocks}")
        self.base_config = base
        w, p, c = base.width, base.patch_size, base.stem_channels
        # The condition's own stem and patch embedding, shaped as the base's (initialised from them by from_base).
        self.cond_stem = (nn.Sequential(nn.Conv2d(CONDITION_CHANNELS, c, 3, padding=1), nn.GELU(approximate="tanh"))
                          if c > 0 else nn.Identity())
        self.cond_patch = nn.Conv2d(c if c > 0 else CONDITION_CHANNELS, w, p, stride=p)
        self.before_proj = nn.Linear(w, w)
        self.blocks = nn.ModuleList(LinearBlock(w) if i in base.linear_blocks else DiTBlock(base)
                                    for i in range(blocks))
        self.after_proj = nn.ModuleList(nn.Linear(w, w) for _ in range(blocks))
        for proj in (self.before_proj, *self.after_proj):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    @classmethod
    def from_base(cls, base: DiT, condition: str, blocks: int = 0) -> "ControlNet":
        """A fresh control model for `base`: copies of its first blocks, a condition embedding
        initialised from its input embedding when the channels allow, zero projections."""
        net = cls(base.config, condition, blocks).to(base.dtype).to(next(base.parameters()).device)
        with torch.no_grad():
            for mine, theirs in zip(net.blocks, base.blocks):
                mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
            c_in = base.config.in_channels + base.config.cond_channels
            if c_in == CONDITION_CHANNELS:
                net.cond_stem.load_state_dict(base.stem.state_dict())
                net.cond_patch.load_state_dict(base.patch_embed.state_dict())
        return net

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def embed_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) condition in [-1, 1] -> (B, H/p * W/p, W) tokens, in the base's token order."""
        return self.cond_patch(self.cond_stem(condition)).flatten(2).transpose(1, 2).contiguous()

    def residuals(self, tokens: torch.Tensor, block_args: tuple, condition: torch.Tensor) -> list[torch.Tensor]:
        """What the control adds after each of the base's first N blocks: N tensors (B, N_tokens, W).
        tokens: the base's embedded input (B, N_tokens, W); block_args: the base's (mod, text, mask,
        rope, grid); condition: (B or 1, 3, H, W), repeated to the batch (guidance runs cond and uncond
        as one batch)."""
        condition = DiT.match_batch(condition, tokens.shape[0]).to(tokens.dtype)
        c = self.embed_condition(condition)
        if c.shape[1] != tokens.shape[1]:
            raise ValueError(f"the condition map gives {c.shape[1]} tokens and the image {tokens.shape[1]}: the map must "
                             "have the image's size")
        h = tokens + self.before_proj(c)
        out = []
        for blk, proj in zip(self.blocks, self.after_proj):
            h = blk(h, *block_args)
            out.append(proj(h))
        return out


# ----------------------------------------------------------------------------
# running: the block runner that adds the controls
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AppliedControl:
    """One control of a generation: the model, its condition (B or 1, 3, H, W) in [-1, 1] and its scale."""
    net: ControlNet
    condition: torch.Tensor
    scale: float


class _ControlledBlock:
    """A base block followed by the sum of the controls' scaled residuals for it."""

    def __init__(self, block: Callable, residual: torch.Tensor):
        self.block, self.residual = block, residual

    def __call__(self, tokens: torch.Tensor, *args) -> torch.Tensor:
        out = self.block(tokens, *args)
        return out + self.residual.to(out.dtype)


def control_runner(controls: Sequence[AppliedControl], inner: BlockRunner | None = None) -> BlockRunner | None:
    """A DiT block runner that runs the controls on the embedded tokens, then the base's blocks
    with each control's scaled residual added after block i (through `inner`, a cache policy's
    runner, when given). Controls at scale 0 are not run, so with none left this is `inner`."""
    active = [c for c in controls if c.scale != 0]
    if not active:
        return inner

    def run(blocks, tokens: torch.Tensor, block_args: tuple) -> torch.Tensor:
        added: list[torch.Tensor | None] = [None] * len(blocks)
        for control in active:
            for i, r in enumerate(control.net.residuals(tokens, block_args, control.condition)):
                r = r * control.scale if control.scale != 1 else r
                added[i] = r if added[i] is None else added[i] + r
        wrapped = [blk if r is None else _ControlledBlock(blk, r) for blk, r in zip(blocks, added)]
        if inner is not None:
            return inner(wrapped, tokens, block_args)
        for blk in wrapped:
            tokens = blk(tokens, *block_args)
        return tokens

    return run


class ControlledModel:
    """A model (a DiT, its int8 copy) run with controls and, optionally, a cache policy's block
    runner. Callable like the DiT; other attributes (config, parameters, ...) pass through."""

    def __init__(self, model, controls: Sequence[AppliedControl], policy=None):
        self.model, self.controls, self.policy = model, list(controls), policy

    def __call__(self, x, t, context, context_mask=None):
        inner = self.policy.run_blocks if self.policy is not None else None
        return self.model(x, t, context, context_mask, block_runner=control_runner(self.controls, inner))

    def __getattr__(self, name):
        return getattr(self.model, name)


class ControlledDiT(nn.Module):
    """The model a train.control run trains: the frozen base and the trainable control. Its
    forward is the DiT's with `control=` the condition (B, 3, H, W); only the control's
    parameters require gradients."""

    def __init__(self, base: DiT, control: ControlNet):
        super().__init__()
        self.base, self.control = base, control
        base.requires_grad_(False)

    @property
    def config(self) -> DiTConfig:
        return self.base.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def forward(self, x, t, context, context_mask=None, block_runner=None, cond=None, control=None):
        runner = block_runner
        if control is not None:
            runner = control_runner([AppliedControl(self.control, control, 1.0)], block_runner)
        return self.base(x, t, context, context_mask, block_runner=runner, cond=cond)


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ControlInfo:
    """A control folder's record: its condition, copied blocks, base and training steps."""
    folder: Path
    condition: str
    blocks: int
    base: BaseInfo
    trained_steps: int = 0


def embedded_controls() -> list[str]:
    """Names of the control models shipped in the package (folders under ditkit/weights with control_config.json)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONTROL_CONFIG).is_file())


def resolve_control(name_or_path: str | Path) -> Path:
    """An embedded control name or a control folder -> the folder."""
    name = str(name_or_path)
    if name in embedded_controls():
        return WEIGHTS_DIR / name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / CONTROL_CONFIG).is_file():
            raise ValueError(f"{path} is not a control model folder: {CONTROL_CONFIG} is missing")
        return path
    raise ValueError(f"unknown control model {name!r}: not an embedded control model "
                     f"({', '.join(embedded_controls()) or 'none'}) and not a folder")


def save_control(folder: str | Path, net: ControlNet, base: BaseInfo, extra: dict | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Write a control folder (created if needed): the weights first, then the config, each atomically.
    dtype: store the weights in this dtype (fp16 for the embedded models)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    atomic_save_tensors(folder / CONTROL_WEIGHTS, state, metadata={"format": "pt"})
    info = {"format": FORMAT, "condition": net.condition, "blocks": net.num_blocks, **base.to_json(), **(extra or {})}
    atomic_write_json(folder / CONTROL_CONFIG, info, durable=True)
    return folder


def read_control_info(name_or_path: str | Path) -> ControlInfo:
    folder = resolve_control(name_or_path)
    path = folder / CONTROL_CONFIG
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
        base = BaseInfo(name=str(raw["base_model"]), config=DiTConfig.from_dict(raw["base_config"]).to_dict(),
                        sha256=str(raw["base_sha256"]))
        return ControlInfo(folder, check_condition(str(raw["condition"])), int(raw["blocks"]), base,
                           int(raw.get("trained_steps", 0)))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"control file {path} is invalid ({type(e).__name__}: {e}); it needs format, condition, "
                         "blocks, base_model, base_config and base_sha256") from None


def load_control(name_or_path: str | Path, device: str | torch.device = "cpu") -> tuple[ControlNet, ControlInfo]:
    """A control model and its record, weights from safetensors only (never a pickle), in fp32."""
    info = read_control_info(name_or_path)
    weights = info.folder / CONTROL_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"control folder {info.folder}: the weights {CONTROL_WEIGHTS} are missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"control file {weights} is corrupt or not a safetensors file: {e}") from None
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ValueError(f"control file {weights} holds NaN or inf (in {bad})")
    net = ControlNet(DiTConfig.from_dict(info.base.config), info.condition, info.blocks)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise ValueError(f"control file {weights} does not match its config ({CONTROL_CONFIG}): "
                         f"{str(e).splitlines()[0]}") from None
    return net.to(device).eval(), info


def check_control_base(info: ControlInfo, model: nn.Module, name: str, fingerprint: str | None = None) -> None:
    """Refuse a control model trained for another base than `model` (called `name`): another
    architecture, or the same one with other weights."""
    mine = model.config.to_dict()
    theirs = info.base.config
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ValueError(f"control model {info.folder.name} is for the base {info.base.name!r}, not {name!r}: "
                         f"their model configs differ in {diff}")
    fingerprint = fingerprint or base_fingerprint(model)
    if fingerprint != info.base.sha256:
        raise ValueError(f"control model {info.folder.name} is for the base {info.base.name!r} (weights sha256 "
                         f"{info.base.sha256[:12]}), not {name!r} (weights sha256 {fingerprint[:12]})")


def check_scale(scale) -> float:
    """A control scale: a finite number >= 0 (0 = the base alone, 1 = as trained)."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"control scale must be a number >= 0, got {scale!r}") from None
    if isinstance(scale, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"control scale must be a finite number >= 0, got {scale!r}")
    return value


# ----------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------

def training_model(cfg: Config, device: torch.device | str) -> ControlledDiT:
    """The model of a train.control run: the base train.init_from (frozen; its model config must
    be cfg.model) with a fresh control model of cfg.train.control."""
    if cfg.train.parallel == "fsdp":
        raise ValueError("train.control runs in one process or with train.parallel ddp, not fsdp")
    folder = resolve_model(cfg.train.init_from)
    base, _ = load_model(folder, device)
    mine, theirs = cfg.model.to_dict(), base.config.to_dict()
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ValueError(f"train.init_from {cfg.train.init_from}: its model config differs from this config in {diff}; "
                         "a control run keeps the base's architecture (copy its model section)")
    s = cfg.train.control
    base.eval()  # the base is frozen: no dropout anywhere, and its norms never change
    return ControlledDiT(base, ControlNet.from_base(base, s.condition, s.blocks))


def save_training_control(model: ControlledDiT, folder: str | Path, cfg: Config, step: int) -> Path:
    """A train.control checkpoint: the (EMA) control model with the base it was trained on."""
    return save_control(folder, model.control, base_info(model.base, cfg.train.init_from),
                        extra={"trained_steps": step})


__all__ = ["CONDITIONS", "AppliedControl", "ControlInfo", "ControlNet", "ControlledDiT", "ControlledModel",
           "check_control_base", "check_scale", "control_runner", "embedded_controls", "load_control",
           "read_control_info", "resolve_control", "save_control", "training_model"]
