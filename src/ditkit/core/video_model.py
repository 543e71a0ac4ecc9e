"""The video DiT: the image DiT (core/model.py) with a time axis.

Contract (the engine and the training recipe call only this):

    VideoDiT.forward(x, t, context, context_mask) -> v
        x:            (B, F, C, H, W)   noisy clip at time t
        t:            (B,) or (B, F)    flow time, one per clip or one per frame (0 = data, 1 = noise)
        context:      (B, L, text_dim)  per-token text states
        context_mask: (B, L) bool
        v:            (B, F, C, H, W)   predicted velocity eps - x0

Design choices (and why; docs/video.md has the measurements):
- Same family as the image DiT: the per-frame convolutional stem and head, patch tokens,
  adaLN-single, text cross-attention, QK-norm. Every parameter of the image DiT keeps its name
  and shape here (with temporal_patch 1), so a video model is initialised from an image model's
  weights (train.init_from) and the new temporal layers start at zero: at step 0 it is the image
  model run on each frame (the zero-init temporal layers of Make-A-Video, Singer et al. 2022,
  and AnimateDiff). Why initialise rather than train the F = 1 case jointly: on these CPUs the
  image model's colors, shapes and words cost hours to learn, and the video model then spends
  its whole budget on motion.
- 3D patchify with an optional temporal patch: `temporal_patch` frames of stem features go into
  one token (a Conv3d with kernel (pt, p, p) written as a Conv2d over pt * channels), so
  frames / pt latent frames of (H/p) x (W/p) tokens each, ordered (frame, row, column).
- Positions: 3D RoPE with time, height and width frequency bands (as Wan and HunyuanVideo):
  `rope_3d`. For one frame the time band is the identity and the rest is the 2D RoPE of
  core.model (tests/test_video_model.py).
- Attention over a clip: "factorized" (self-attention within each frame with the image model's
  2D RoPE, then a temporal self-attention across frames at each position with the time band;
  Latte, Ma et al. 2024, variant 3; the earlier video LDMs) or "full" (one self-attention over
  all F * h * w tokens with 3D RoPE, as Wan, CogVideoX, HunyuanVideo). The default is
  factorized: it keeps the image model's spatial attention exact, so initialisation from it is
  exact, and it is the cheaper of the two at every clip size we run (benchmarks/video_speed.py).
- Per-frame time (Wan 2.2 TI2V, LTX-Video): t may be (B, F); each frame's adaLN modulation and
  final layer then follow its own time. Image-to-video gives frame 0 at t = 0 (the clean
  conditioning frame) and the rest at t; training does the same for a share of the clips
  (train.first_frame_prob), so one model serves text-to-video and image-to-video. The first frame
  of an image-to-video result is then the given frame, exactly (engine/video.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ditkit.core.config import DiTConfig
from ditkit.core.model import DiT, DiTBlock, SelfAttention, modulate, rope_2d, timestep_embedding, unpatchify

Rope = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------
# 3D patchify and 3D RoPE
# ----------------------------------------------------------------------------

def patchify_3d(x: torch.Tensor, pt: int, p: int) -> torch.Tensor:
    """(B, F, C, H, W) -> (B, F/pt * H/p * W/p, pt * C * p * p), tokens ordered (frame, row, column)
    and each token's values ordered (frame in the patch, channel, row, column)."""
    b, f, c, h, w = x.shape
    x = x.reshape(b, f // pt, pt, c, h // p, p, w // p, p)
    return x.permute(0, 1, 4, 6, 2, 3, 5, 7).reshape(b, (f // pt) * (h // p) * (w // p), pt * c * p * p)


def unpatchify_3d(tokens: torch.Tensor, pt: int, p: int, f: int, h: int, w: int) -> torch.Tensor:
    """(B, F/pt * H/p * W/p, pt * C * p * p) -> (B, F, C, H, W); the inverse of patchify_3d."""
    b, _, d = tokens.shape
    c = d // (pt * p * p)
    x = tokens.reshape(b, f // pt, h // p, w // p, pt, c, p, p)
    return x.permute(0, 1, 4, 5, 2, 6, 3, 7).reshape(b, f, c, h, w)


def rope_3d(f: int, h: int, w: int, head_dim: int, time_dims: int, device: torch.device | None = None,
            theta: float = 100.0) -> Rope:
    """Rotary angles for an f x h x w token grid with a time band: `time_dims` of each head's
    dimensions rotate with the frame index, the rest half with the row and half with the column
    (the spatial bands are rope_2d's for head_dim - time_dims dimensions).

    Returns (cos, signed sin), each (f*h*w, head_dim), in the form core.model.apply_rope takes:
    the angle vector is [row band, column band, time band] over the head's first half, repeated.
    For f = 1 the time band is 0 (cos 1, sin 0: the identity) and the rest is rope_2d."""
    if time_dims % 2 or (head_dim - time_dims) % 4 or not 0 <= time_dims <= head_dim:
        raise ValueError(f"time_dims {time_dims} must be even and leave a multiple of 4 of head_dim {head_dim}")
    device = device or torch.device("cpu")
    quarter, pairs = (head_dim - time_dims) // 4, time_dims // 2

    def band(n: int) -> torch.Tensor:  # rope_2d's frequencies for a band of n pairs
        return 1.0 / theta ** (torch.arange(n, device=device, dtype=torch.float32) / max(n, 1))

    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    space = torch.cat([ys.reshape(-1, 1) * band(quarter), xs.reshape(-1, 1) * band(quarter)], dim=-1)
    time = torch.arange(f, device=device, dtype=torch.float32)[:, None] * band(pairs)  # (f, pairs)
    angles = torch.cat([space[None].expand(f, -1, -1), time[:, None].expand(-1, h * w, -1)], dim=-1)
    angles = angles.reshape(f * h * w, head_dim // 2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


# A full-attention model's time band: a quarter of each head (Wan gives time about a third).
def time_band(head_dim: int) -> int:
    return head_dim // 4


# ----------------------------------------------------------------------------
# the block
# ----------------------------------------------------------------------------

class VideoBlock(DiTBlock):
    """DiTBlock over a clip: per-frame adaLN modulation, then attention over the clip (factorized:
    spatial within frames, then temporal across frames; full: one attention over all tokens),
    cross-attention to text and the MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__(cfg)
        self.factorized = cfg.video_attention == "factorized"
        if self.factorized:
            self.norm_t = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
            self.temporal_attn = SelfAttention(cfg.width, cfg.heads, "softmax", cfg.qk_norm)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                rope: tuple[Rope, Rope] | Rope, grid: tuple[int, int, int]) -> torch.Tensor:
        """x: (B, F*n, W) tokens of F latent frames of n each; mod: (B, F, 6, W) per frame;
        rope: (spatial, temporal) for factorized attention, the 3D one for full; grid: (F, h, w)."""
        b, tokens, width = x.shape
        f = mod.shape[1]
        n = tokens // f
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table[None, None] + mod).unbind(2)

        def per_frame(y: torch.Tensor, fn) -> torch.Tensor:
            return fn(y.view(b, f, n, width)).view(b, tokens, width)

        h = per_frame(self.norm1(x), lambda y: modulate(y, shift1[:, :, None], scale1[:, :, None]))
        if self.factorized:
            spatial, temporal = rope
            a = self.attn(h.reshape(b * f, n, width), spatial).view(b, tokens, width)
            x = x + per_frame(a, lambda y: gate1[:, :, None] * y)
            # (B, F, n, W) -> (B*n, F, W): each position attends over the frames
            y = self.norm_t(x).view(b, f, n, width).transpose(1, 2).reshape(b * n, f, width)
            y = self.temporal_attn(y, temporal).view(b, n, f, width).transpose(1, 2).reshape(b, tokens, width)
            x = x + y
        else:
            x = x + per_frame(self.attn(h, rope), lambda y: gate1[:, :, None] * y)
        x = x + self.cross_attn(self.norm2(x), context, mask)
        h = per_frame(self.norm3(x), lambda y: modulate(y, shift2[:, :, None], scale2[:, :, None]))
        return x + per_frame(self.mlp(h, grid[1:]), lambda y: gate2[:, :, None] * y)


# ----------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------

class VideoDiT(DiT):
    """The DiT over clips (B, F, C, H, W); see the module docstring."""

    def __init__(self, cfg: DiTConfig):
        if cfg.frames < 1:
            raise ValueError("a VideoDiT needs model.frames >= 1 (model.frames 0 is an image model: DiT)")
        super().__init__(cfg)
        pt, p, w = cfg.temporal_patch, cfg.patch_size, cfg.width
        stem = cfg.stem_channels if cfg.stem_channels > 0 else cfg.in_channels
        self.blocks = nn.ModuleList(VideoBlock(cfg) for _ in range(cfg.depth))
        if pt > 1:  # pt frames of stem features per token in, pt frames of head features per token out
            self.patch_embed = nn.Conv2d(pt * stem, w, p, stride=p)
            head = cfg.stem_channels if cfg.stem_channels > 0 else cfg.out_channels
            self.final_linear = nn.Linear(w, pt * p * p * head)
        self._init_weights()
        if cfg.stem_channels > 0:
            self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        super()._init_weights()
        for blk in self.blocks:
            if getattr(blk, "factorized", False):
                # zero temporal output: at step 0 the model is its image model on each frame
                nn.init.zeros_(blk.temporal_attn.proj.weight)
                nn.init.zeros_(blk.temporal_attn.proj.bias)

    def check_input(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
        cfg = self.config
        if cond is not None:
            raise ValueError("a video model takes no conditioning image channels (image-to-video gives the first "
                             "frame at t = 0 instead)")
        if x.ndim != 5 or x.shape[2] != cfg.in_channels:
            raise ValueError(f"expected a clip x of shape (B, F, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[1] % cfg.temporal_patch:
            raise ValueError(f"{x.shape[1]} frames must be a multiple of the temporal patch {cfg.temporal_patch}")
        p = cfg.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"frame size {tuple(x.shape[-2:])} must be a multiple of the patch size {p}")

    def frame_times(self, t: torch.Tensor, b: int, f: int) -> torch.Tensor:
        """t as (B, F): a scalar, (B,) or (B, F) per-frame times."""
        t = t.float()
        if t.numel() == 1:
            return t.reshape(1, 1).expand(b, f)
        if t.ndim == 1 and t.shape[0] == b:
            return t[:, None].expand(b, f)
        if t.shape == (b, f):
            return t
        raise ValueError(f"t must be a scalar, ({b},) or ({b}, {f}) per-frame times, got {tuple(t.shape)}")

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[Rope, Rope] | Rope:
        f, h, w = grid
        d = self.config.width // self.config.heads
        if self.config.video_attention == "factorized":
            return rope_2d(h, w, d, device), rope_3d(f, 1, 1, d, d, device)
        return rope_3d(f, h, w, d, time_band(d), device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, block_runner=None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, F, C, H, W), t scalar / (B,) / (B, F) -> v (B, F, C_out, H, W). block_runner as DiT.forward."""
        self.check_input(x, cond)
        cfg, (b, f, c_in, hh, ww) = self.config, x.shape
        pt, p, width = cfg.temporal_patch, cfg.patch_size, cfg.width
        fl, gh, gw = f // pt, hh // p, ww // p
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = context_mask.bool()
        times = self.frame_times(t, b, f)[:, ::pt]  # a latent frame takes the time of its first frame
        frames = x.reshape(b * f, c_in, hh, ww)
        if cfg.stem_channels > 0:
            frames = frames.contiguous(memory_format=torch.channels_last)
        feats = self.stem(frames)
        feats = feats.reshape(b * fl, pt * feats.shape[1], hh, ww)
        tokens = self.patch_embed(feats).flatten(2).transpose(1, 2).reshape(b, fl * gh * gw, width).contiguous()
        cvec = self.t_embed(timestep_embedding(times.reshape(-1), 256).to(tokens.dtype)).view(b, fl, width)
        if self.pooled_proj is not None:
            m = context_mask.to(context.dtype)[..., None]
            pooled = (context * m).sum(1) / m.sum(1).clamp_min(1.0)
            cvec = cvec + self.pooled_proj(pooled)[:, None]
        mod = self.adaln_single(cvec).view(b, fl, 6, width)
        grid = (fl, gh, gw)
        block_args = (mod, self.text_proj(context), context_mask, self.rope(grid, x.device), grid)
        if block_runner is not None:
            tokens = block_runner(self.blocks, tokens, block_args)
        else:
            for blk in self.blocks:
                tokens = blk(tokens, *block_args)
        return self.final_video(tokens, cvec, frames, (b, f))

    def final_video(self, tokens: torch.Tensor, cvec: torch.Tensor, frames: torch.Tensor,
                    clip: tuple[int, int]) -> torch.Tensor:
        """tokens (B, F'*n, W), per-latent-frame conditioning (B, F', W), the input frames (B*F, C, H, W)
        -> velocity (B, F, C_out, H, W)."""
        cfg, (b, f) = self.config, clip
        fl, width, hh, ww = cvec.shape[1], cfg.width, frames.shape[-2], frames.shape[-1]
        shift, scale = (self.final_table[None, None] + cvec[:, :, None]).unbind(2)  # (B, F', W) each
        h = modulate(self.final_norm(tokens).view(b, fl, -1, width), shift[:, :, None], scale[:, :, None])
        out = self.final_linear(h).reshape(b * fl, -1, self.final_linear.out_features)
        out = unpatchify(out, cfg.patch_size, hh, ww)  # (B*F', pt*C_head, H, W): frame-major channels
        out = out.reshape(b * f, -1, hh, ww)
        if self.head is not None:
            h_in = torch.cat([out, frames.to(out.dtype)], dim=1).contiguous(memory_format=torch.channels_last)
            out = self.out_conv(self.head(h_in))
        return out.reshape(b, f, -1, hh, ww)


def build_model(cfg: DiTConfig) -> DiT:
    """The model a config describes: a VideoDiT when cfg.frames > 0, else the image DiT."""
    return VideoDiT(cfg) if cfg.frames > 0 else DiT(cfg)


def is_video_model(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "frames", 0) > 0


def inflate_image_weights(model: VideoDiT, state: dict[str, torch.Tensor]) -> list[str]:
    """Load an image DiT's weights into a video model of the same width, depth and patch size.

    Every image tensor has a tensor of the same name here; the new temporal layers keep their
    (zero-output) init, so at step 0 the video model is the image model on every frame. With
    temporal_patch pt > 1 the patch embedding is inflated (I3D, Carreira & Zisserman 2017): the
    image kernel divided by pt over each of the pt frames, so a still clip embeds as the image does;
    the final linear layer's output is repeated for each frame of the patch.
    Returns the names of the tensors left at their init (the temporal layers)."""
    own = model.state_dict()
    pt = model.config.temporal_patch
    for name, value in state.items():
        if name not in own:
            raise ValueError(f"image weights have {name!r}, which the video model lacks (same width, depth, "
                             "heads, patch size and stem are needed)")
        target = own[name]
        if value.shape != target.shape and pt > 1 and name == "patch_embed.weight":
            value = value.repeat(1, pt, 1, 1) / pt
        elif value.shape != target.shape and pt > 1 and name in ("final_linear.weight", "final_linear.bias"):
            value = value.repeat(pt, *([1] * (value.ndim - 1)))
        if value.shape != target.shape:
            raise ValueError(f"image weight {name!r} has shape {tuple(value.shape)}, the video model needs "
                             f"{tuple(target.shape)}")
        target.copy_(value)
    fresh = sorted(set(own) - set(state))
    if any(".temporal_attn." not in k for k in fresh):
        raise ValueError(f"image weights lack {[k for k in fresh if '.temporal_attn.' not in k]}")
    return fresh
