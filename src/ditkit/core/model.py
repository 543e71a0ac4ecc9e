"""The DiT: one file, top to bottom.

Over 500 lines because the whole network stays in one file a reader can follow top to bottom
(docs/architecture.md, principle 1): embeddings, attention, blocks and the model together.

Contract with the rest of ditkit (docs/architecture.md: the engine and every task call only this):

    DiT.forward(x, t, context, context_mask) -> v
        x:            (B, C_in, H, W)   noisy image (or latent) at time t
        t:            (B,)              flow time in [0, 1]; 0 = data, 1 = noise
        context:      (B, L, text_dim)  per-token text states
        context_mask: (B, L) bool       True where a token is real (not padding)
        v:            (B, C_out, H, W)  predicted velocity eps - x0

Design choices (and why):
- Text enters by cross-attention to per-token states with a padding mask
  (PixArt-alpha, Chen et al. 2023, Sec. 2.3), so word order ("left of" vs
  "right of") reaches the image tokens. A masked mean of the same states is
  also added to the timestep embedding (as SD3 adds pooled text): a cheap
  global signal for colors and counts.
- Timestep modulation is adaLN-single (PixArt-alpha Sec. 2.3): one shared MLP
  maps the conditioning vector to 6 * width and each block adds its own
  learned table. Per-block adaLN costs 6 * width^2 parameters per block
  (about 40% of a block at our widths) for no measured gain in PixArt; here the
  parameter budget (40 MB per shipped model) is better spent on depth.
- Positions: 2D axial rotary embeddings (RoPE, Su et al. 2021; as in FLUX and Lumina)
  on self-attention queries and keys. RoPE is relative, so the model runs at sizes
  other than its training size without interpolation. `positions="sincos"` instead adds
  PixArt-alpha's fixed 2-D sin-cos table to the patch tokens (with its base-size /
  interpolation-scale convention). `positions="rope+abs"` keeps RoPE and also adds a
  learned, zero-initialised linear map of that table to the patch tokens. RoPE alone
  gives the residual stream no absolute position, so a cross-attention query cannot
  tell "I am on the left" and relations must be built by coordinating tokens through
  relative attention; the shipped RoPE-only shapes-64 placed the two objects of a
  position prompt in random relative positions (docs/models.md). The zero init lets
  a RoPE model be fine-tuned into this kind unchanged at step 0 (train.init_from).
- Query/key RMS normalisation (SD3, Esser et al. 2024) keeps attention logits
  bounded under bf16 autocast.
- Optional ReLU linear attention (SANA, Xie et al. 2024, Sec. 2.2) with
  SANA's Mix-FFN (a depthwise 3x3 convolution inside the MLP) for positions,
  since RoPE does not combine with the ReLU kernel.
- Optional small convolutional stem and head around the patch tokens (`stem_channels > 0`).
  Measured on the shapes world with patch 8, it turned blocky patch-wise samples into
  coherent shapes much earlier in training (docs/models.md). The head also sees the noisy
  input x, so per-pixel noise need not travel through the token stream. `stem_channels = 0`
  gives a plain PixArt-style patch embedding and linear head (diffusers-mappable).
- The last layer is zero-initialised (DiT, Peebles & Xie 2023, Sec. 3.2), so an untrained
  model predicts v = 0 exactly.
- PixArt-alpha compatibility: `DiTConfig(**PIXART, ...)` (stem_channels=0, qk_norm=False,
  softmax attention, positions="sincos", cross_norm=False, pooled_text=False) is exactly
  diffusers' PixArtTransformer2DModel without the resolution/aspect micro-conditions;
  ditkit.interop.diffusers converts the weights both ways. The timestep embedding, the
  caption projection, the GELU(tanh) MLP and the final layer already follow PixArt-alpha
  (see timestep_embedding), so they need no options; ditkit's fused qkv / kv projections
  and its (C, p, p) output-patch order are mapped by the converter.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

# DiTConfig lives in core.config (which imports nothing of the model); re-exported for callers.
from ditkit.core.config import ATTENTION_KINDS, PIXART, POSITION_KINDS, DiTConfig  # noqa: F401

T = TypeVar("T")


# ----------------------------------------------------------------------------
# patchify / unpatchify
# ----------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p), tokens in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """(B, H/p * W/p, C * p * p) -> (B, C, H, W); the inverse of patchify."""
    b, n, d = tokens.shape
    c = d // (p * p)
    x = tokens.reshape(b, h // p, w // p, c, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# ----------------------------------------------------------------------------
# embeddings
# ----------------------------------------------------------------------------

def tracing() -> bool:
    """True while torch.jit.trace or the TorchScript ONNX exporter records the forward. Tables
    cached in Python dicts are bypassed then: a cached tensor would enter the graph as a constant
    of one size, and the exported graph is dynamic in batch, text length and (RoPE) image size.
    torch.onnx is only asked once something imported it: an export needs it, and importing it here
    would add ~0.1 s to every process's first forward."""
    if torch.jit.is_tracing():
        return True
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def cached_table(cache: dict, key: tuple, make: Callable[[], T]) -> T:
    """cache[key], made by make() on a miss; while tracing, make() every call (see tracing()).

    Made outside inference mode, so a table first built under torch.inference_mode() can still
    be saved for backward by a later training step (autograd refuses inference tensors)."""
    if tracing():
        return make()
    table = cache.get(key)
    if table is None:
        with torch.inference_mode(False):
            table = cache[key] = make()
    return table


_TIMESTEP_FREQS: dict[tuple, torch.Tensor] = {}  # timestep_embedding's frequencies by (dim, max_period, device)


def timestep_frequencies(dim: int, max_period: float, device: torch.device) -> torch.Tensor:
    """(dim // 2,) float32: exp(-log(max_period) * i / half), cached per device (a per-call constant:
    computing it cost 4 small ops of each forward)."""
    half = dim // 2
    return cached_table(_TIMESTEP_FREQS, (dim, max_period, str(device)), lambda: torch.exp(
        -math.log(max_period) * torch.arange(half, device=device, dtype=torch.float32) / half))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as in DiT). (B,) -> (B, dim).

    This is PixArt-alpha's convention as diffusers writes it, Timesteps(256,
    flip_sin_to_cos=True, downscale_freq_shift=0) applied to the timestep t * 1000:
    frequencies exp(-log(max_period) * i / half), cosines first."""
    freqs = timestep_frequencies(dim, max_period, t.device)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_2d(h: int, w: int, head_dim: int, device: torch.device, theta: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2D rotary angles for an h x w token grid.

    Half of each head's dimensions rotate with the row index, half with the
    column index. theta is small because grids are small (8 x 8 at 64 px).
    Returns (cos, signed sin), each (h*w, head_dim): [cos, cos] and [-sin, sin] over
    the two halves, the form apply_rope multiplies with directly.
    """
    quarter = head_dim // 4
    freqs = 1.0 / theta ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    angles = torch.cat([ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def sincos_2d(h: int, w: int, dim: int, base_size: int, interpolation: float,
              device: torch.device | None = None) -> torch.Tensor:
    """PixArt-alpha's fixed 2-D sin-cos position table for an h x w token grid, (h*w, dim) float32.

    As diffusers' get_2d_sincos_pos_embed: the grid is stretched to base_size
    positions whatever its size (row r sits at r / (h / base_size) / interpolation),
    the first dim/2 channels encode the column and the last dim/2 the row, each as
    [sin, cos] at frequencies 1 / 10000^(k / (dim/4)). Positions in float32 and angles
    in float64, as diffusers computes them, so the tables are bit-identical."""
    rows = torch.arange(h, device=device, dtype=torch.float32) / (h / base_size) / interpolation
    cols = torch.arange(w, device=device, dtype=torch.float32) / (w / base_size) / interpolation
    ys, xs = (g.double() for g in torch.meshgrid(rows, cols, indexing="ij"))
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float64) / (dim / 4))

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_axis(xs), one_axis(ys)], dim=1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of (..., N, d) by the angles of rope_2d.

    x * [cos, cos] + [x2, x1] * [-sin, sin] is x1 cos - x2 sin, x2 cos + x1 sin bit for bit
    (IEEE a + (-b) == a - b), in 2 multiplies and 1 add over the whole tensor instead of
    4 and 2 over halves."""
    # In the compute dtype: under bf16 autocast the fp32 round trip cost ~2x here,
    # and the angles of our small grids are exact enough in bf16.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, x1], dim=-1) * sin


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMS normalisation computed in fp32 and returned in the input dtype
    (torch's fused kernel falls back to a slow path on bf16 inputs with fp32 weights)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)

    def paired(self, qk: torch.Tensor, other: "RMSNorm") -> torch.Tensor:
        """This norm on qk[0] and `other` on qk[1] (a stacked query/key pair), in one pass."""
        xf = qk.float()
        weight = torch.stack([self.weight, other.weight]).reshape(2, *([1] * (qk.ndim - 2)), -1)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * weight).to(qk.dtype)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, kind: str, qk_norm: bool):
        super().__init__()
        self.heads, self.kind = heads, kind
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        head_dim = width // heads
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """rope: (cos, sin) from rope_2d, or None (positions="sincos": already in the tokens)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Queries and keys go through the norm and the rotation together, as one (2, B, heads, N, d)
        # tensor: half the elementwise kernel launches, which are a visible share at our sizes.
        qk, v = qkv[:2], qkv[2]
        if isinstance(self.q_norm, RMSNorm):
            qk = self.q_norm.paired(qk, self.k_norm)
        if self.kind == "softmax":
            if rope is not None:
                qk = apply_rope(qk, *rope)
            q, k = qk.unbind(0)
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = relu_linear_attention(*qk.unbind(0), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SANA's linear attention (Xie et al. 2024, Eq. 2): O_i = phi(q_i) (sum_j phi(k_j)^T v_j) / (phi(q_i) sum_j phi(k_j)),
    phi = ReLU. Cost O(N d^2) instead of O(N^2 d). Computed in fp32: the
    normaliser is a sum over all tokens and loses precision in bf16."""
    dtype = v.dtype
    q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
    kv = torch.einsum("bhnd,bhne->bhde", k, v)
    num = torch.einsum("bhnd,bhde->bhne", q, kv)
    den = torch.einsum("bhnd,bhd->bhn", q, k.sum(dim=2)).unsqueeze(-1)
    return (num / (den + eps)).to(dtype)


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """GELU MLP; with `conv_grid` set it becomes SANA's Mix-FFN (depthwise 3x3 conv between the two linears)."""

    def __init__(self, width: int, hidden: int, mix_ffn: bool):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if mix_ffn else None
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        if self.dwconv is not None:
            b, n, c = x.shape
            x = self.dwconv(x.transpose(1, 2).reshape(b, c, *grid)).reshape(b, c, n).transpose(1, 2)
        return self.fc2(F.gelu(x, approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-single block: self-attention, cross-attention to text, MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        w = cfg.width
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(w, cfg.heads, cfg.attention, cfg.qk_norm)
        # PixArt-alpha feeds the un-normalised stream to cross-attention (cross_norm=False).
        self.norm2 = nn.LayerNorm(w, eps=1e-6) if cfg.cross_norm else nn.Identity()
        self.cross_attn = CrossAttention(w, cfg.heads)
        self.norm3 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(w, int(w * cfg.mlp_ratio), mix_ffn=cfg.attention == "linear")
        # PixArt-alpha's per-block table added to the shared adaLN-single output.
        self.scale_shift_table = nn.Parameter(torch.randn(6, w) / w**0.5)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, N, W); mod: (B, 6, W) from adaLN-single."""
        # (6, 1, W) + (B, 6, 1, W): each of the six comes out (B, 1, W), ready to broadcast over tokens
        # (one unsqueeze instead of six; the sums are the same elementwise adds).
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table[:, None] + mod[:, :, None]).unbind(1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        x = x + self.cross_attn(self.norm2(x), context, mask)
        x = x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2), grid)
        return x


class LinearBlock(nn.Module):
    """A token-wise affine map x -> x A + b standing in for a pruned block: the paper's
    observation that blocks are close to linear between consecutive embeddings
    (Razzhigaev et al., ACL 2024). Same call signature as DiTBlock; ignores t and text."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.reset_identity()

    def reset_identity(self) -> None:
        """Identity until fitted: a block that passes its input through."""
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(self.linear.in_features))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None, grid: tuple[int, int]) -> torch.Tensor:
        return self.linear(x)


# ----------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------

class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        self._sincos: dict[tuple, torch.Tensor] = {}  # positions="sincos" tables by (rows, cols, device)
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # rope_2d (cos, sin) by (rows, cols, device)
        w, p, c = cfg.width, cfg.patch_size, cfg.stem_channels
        c_in = cfg.in_channels + cfg.cond_channels
        if c > 0:
            self.stem = nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), nn.GELU(approximate="tanh"))
            self.patch_embed = nn.Conv2d(c, w, p, stride=p)
        else:
            self.stem = nn.Identity()
            self.patch_embed = nn.Conv2d(c_in, w, p, stride=p)
        # positions="rope+abs": absolute position enters through a learned map of the fixed table.
        self.abs_pos = nn.Linear(w, w, bias=False) if cfg.positions == "rope+abs" else None
        self.t_embed = nn.Sequential(nn.Linear(256, w), nn.SiLU(), nn.Linear(w, w))
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, w), nn.GELU(approximate="tanh"), nn.Linear(w, w))
        self.pooled_proj = nn.Linear(cfg.text_dim, w) if cfg.pooled_text else None
        self.adaln_single = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        self.blocks = nn.ModuleList(LinearBlock(w) if i in cfg.linear_blocks else DiTBlock(cfg)
                                    for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.randn(2, w) / w**0.5)
        head_channels = c if c > 0 else cfg.out_channels
        self.final_linear = nn.Linear(w, p * p * head_channels)
        if c > 0:
            # The head refines unpatchified features together with the noisy input.
            self.head = nn.Sequential(nn.Conv2d(c + c_in, c, 3, padding=1), nn.GELU(approximate="tanh"))
            self.out_conv = nn.Conv2d(c, cfg.out_channels, 3, padding=1)
        else:
            self.head = None
            self.out_conv = None
        self._init_weights()
        if c > 0:
            # Full-resolution 3x3 convolutions run ~2x faster channels-last on CPU (oneDNN).
            self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        # adaLN-single starts at zero so every block starts as identity plus its table (DiT's adaLN-Zero idea).
        nn.init.zeros_(self.adaln_single[1].weight)
        nn.init.zeros_(self.adaln_single[1].bias)
        for blk in self.blocks:
            if isinstance(blk, LinearBlock):
                blk.reset_identity()  # undo the xavier pass above
                continue
            # Zero cross-attention output: text enters gradually, blocks start as in an unconditional DiT.
            nn.init.zeros_(blk.cross_attn.proj.weight)
            nn.init.zeros_(blk.cross_attn.proj.bias)
        if self.abs_pos is not None:
            nn.init.zeros_(self.abs_pos.weight)  # starts as the RoPE-only model (see the module docstring)
        last = self.out_conv if self.out_conv is not None else self.final_linear
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def embed(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor):
        """Everything before the blocks. Returns tokens (B, N, W), mod (B, 6, W), c (B, W), text (B, L, W)."""
        if self.config.stem_channels > 0:
            x = x.contiguous(memory_format=torch.channels_last)
        # contiguous(): without the stem the patch embedding is NCHW, and its transposed view would
        # keep the whole residual stream transposed (each LayerNorm and Linear then copies it).
        tokens = self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2).contiguous()
        if self.config.positions == "sincos":
            # Added in fp32 and cast back, as diffusers' PatchEmbed does.
            tokens = (tokens + self.sincos_table(x.shape[-2:], x.device)).to(tokens.dtype)
        elif self.abs_pos is not None:
            table = self.sincos_table(x.shape[-2:], x.device).to(self.abs_pos.weight.dtype)
            tokens = tokens + self.abs_pos(table).to(tokens.dtype)
        c = self.t_embed(timestep_embedding(t, 256).to(tokens.dtype))
        if self.pooled_proj is not None:
            m = mask.to(context.dtype)[..., None]
            pooled = (context * m).sum(1) / m.sum(1).clamp_min(1.0)
            c = c + self.pooled_proj(pooled)
        mod = self.adaln_single(c).reshape(-1, 6, self.config.width)
        return tokens, mod, c, self.text_proj(context)

    def sincos_table(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The (N, W) sin-cos table for an image of `size` pixels, cached per grid and device
        (a plain dict, not a buffer: it is a fixed function of the config, not a weight)."""
        p, cfg = self.config.patch_size, self.config
        key = (size[0] // p, size[1] // p, str(device))
        table = self._sincos.get(key)
        if table is None:
            # Built on the CPU (float64 angles; MPS has no float64), then moved. Outside inference
            # mode for the reason cached_table gives (abs_pos's Linear saves the table for backward).
            with torch.inference_mode(False):
                table = sincos_2d(key[0], key[1], cfg.width, cfg.sample_size // p, cfg.pos_interpolation).to(device)
            self._sincos[key] = table
        return table

    def rope_table(self, grid: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """rope_2d's (cos, sin), each (N, head_dim), for a token grid, cached per grid and device
        (about 15 small ops a forward otherwise). Computed in the graph while tracing, so an
        exported graph keeps a dynamic image size (see tracing())."""
        head_dim = self.config.width // self.config.heads
        return cached_table(self._rope, (grid[0], grid[1], str(device)), lambda: rope_2d(*grid, head_dim, device))

    def final(self, tokens: torch.Tensor, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Everything after the blocks: tokens (B, N, W) -> velocity (B, C_out, H, W)."""
        shift, scale = (self.final_table[None] + c[:, None]).unbind(1)
        out = self.final_linear(modulate(self.final_norm(tokens), shift[:, None], scale[:, None]))
        h, w = x.shape[-2:]
        out = unpatchify(out, self.config.patch_size, h, w)
        if self.head is not None:
            h_in = torch.cat([out, x.to(out.dtype)], dim=1).contiguous(memory_format=torch.channels_last)
            out = self.out_conv(self.head(h_in))
        return out

    def check_input(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
        p, cfg = self.config.patch_size, self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be a multiple of the patch size {p}")
        if cfg.cond_channels == 0 and cond is not None:
            raise ValueError("this model takes no conditioning image (model.cond_channels is 0)")
        if cfg.cond_channels > 0:
            if cond is None:
                raise ValueError(f"this model needs a conditioning image of {cfg.cond_channels} channels (cond=...)")
            if cond.ndim != 4 or cond.shape[1] != cfg.cond_channels or cond.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"expected cond of shape (B, {cfg.cond_channels}, {x.shape[-2]}, {x.shape[-1]}), "
                                 f"got {tuple(cond.shape)}")

    @staticmethod
    def match_batch(cond: torch.Tensor, batch: int) -> torch.Tensor:
        """Repeat a (B, C, H, W) condition to a batch of k*B (guidance runs cond and uncond as one batch)."""
        if cond.shape[0] == batch:
            return cond
        if batch % cond.shape[0]:
            raise ValueError(f"cond batch {cond.shape[0]} does not divide the input batch {batch}")
        return cond.repeat(batch // cond.shape[0], 1, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, block_runner=None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """block_runner(blocks, tokens, block_args) -> tokens, if given, runs the blocks
        instead of the plain loop (feature caching, ditkit.engine.cache, hooks in there).
        cond: the conditioning image of a model with cond_channels > 0, concatenated to x."""
        if cond is not None:
            cond = self.match_batch(cond, x.shape[0])
        self.check_input(x, cond)
        if cond is not None:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        elif context_mask.dtype != torch.bool:
            context_mask = context_mask.bool()
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        p = self.config.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        rope = self.rope_table(grid, x.device) if self.config.positions in ("rope", "rope+abs") else None
        tokens, mod, c, text = self.embed(x, t, context, context_mask)
        block_args = (mod, text, context_mask, rope, grid)
        if block_runner is not None:
            tokens = block_runner(self.blocks, tokens, block_args)
        else:
            for blk in self.blocks:
                tokens = blk(tokens, *block_args)
        return self.final(tokens, c, x)  # x: the noisy input and any condition, for the head


def load_base_weights(model: DiT, state: dict[str, torch.Tensor], new: tuple[str, ...] = ()) -> list[str]:
    """Load a text-to-image DiT's weights into a model that adds conditioning channels.

    The input convolutions (stem / patch embedding, and the head, which also sees the input)
    gain zero-initialized input channels, so the new model starts as exactly the base model
    and learns to use the condition (Kandinsky 3's inpainting model is initialized the same
    way). `new` names tensors the base may lack: they keep this model's (zero) init.
    Returns the names of the widened tensors.
    """
    own = model.state_dict()
    widened = []
    for name, value in state.items():
        if name not in own:
            raise ValueError(f"base weights have {name!r}, which this model lacks")
        target = own[name]
        if value.shape == target.shape:
            target.copy_(value)
        elif value.ndim == 4 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:] \
                and value.shape[1] < target.shape[1]:
            target.zero_()
            target[:, : value.shape[1]].copy_(value)
            widened.append(name)
        else:
            raise ValueError(f"base weight {name!r} has shape {tuple(value.shape)}, this model needs {tuple(target.shape)}")
    missing = set(own) - set(state) - set(new)
    if missing:
        raise ValueError(f"base weights lack {sorted(missing)}")
    return widened


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
