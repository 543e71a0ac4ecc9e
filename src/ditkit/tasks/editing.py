"""Editing tasks on the one sampler: variations (SDEdit), flow inversion and re-generation
under an edited prompt, inpainting (training-free and with an inpainting model),
outpainting, image fusion and 2x upscaling, after Kandinsky 3's multifunctional framework.

Everything here works on tensors in [-1, 1] and goes through the sampler contract
`velocity(x, t)` (docs/architecture.md), so every sampler, CFG/APG and the guidance interval apply
unchanged. The PIL-level tasks (sizes, masks, paste-back) are in tasks.pipeline_edit.

- Variations (SDEdit, Meng et al. 2022): noise the image to t = strength on the flow path
  x_t = (1 - t) x0 + t eps and integrate back to t = 0.
- Inversion: integrate the same ODE forwards, t = 0 -> t_max, under the source prompt
  (no guidance: CFG breaks the reversibility that inversion relies on).
- Training-free inpainting: the known pixels are held exactly on their own flow path
  by giving them the path's velocity eps - x0 ("replacement" in velocity form, which
  every ODE solver integrates exactly because it is constant), while the model's velocity
  moves the hole; RePaint-style resampling (Lugmayr et al. 2022) optionally re-noises
  and repeats each step so the hole harmonizes with what is kept.
- Larger canvases than the model was trained on (outpainting) are sampled in
  overlapping windows whose velocities are averaged (MultiDiffusion, Bar-Tal et al. 2023).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ditkit.core.config import SampleConfig
from ditkit.core.flow import interpolate
from ditkit.core.guidance import APG, Velocity, pad_contexts
from ditkit.core.sampling import Callback, get_sampler, sample_euler, timesteps
from ditkit.engine.velocity import prompt_velocity


class TaskModel(torch.nn.Module):
    """A DiT seen through a conditioning image and/or overlapping windows: forward has the
    plain DiT signature, so guidance, samplers and caches use it unchanged.

    cond: (B, C, H, W) image condition of a model with cond_channels > 0 (repeated to the
    batch when guidance doubles it). window: the side of the square windows for inputs
    larger than the model's training size (stride window // 2, velocities averaged)."""

    def __init__(self, model: torch.nn.Module, cond: torch.Tensor | None = None, window: int | None = None):
        super().__init__()
        self.model, self.cond, self.window = model, cond, window
        self.config = model.config
        # an exported graph (interop.runtime) has no blocks; caches, which need them, refuse it earlier
        self.blocks = getattr(model, "blocks", None)

    def forward(self, x, t, context, context_mask=None, **kw):
        cond = self.model.match_batch(self.cond, x.shape[0]) if self.cond is not None else None
        w = self.window
        if w is None or (x.shape[-2] <= w and x.shape[-1] <= w):
            return self.model(x, t, context, context_mask, cond=cond, **kw) if cond is not None \
                else self.model(x, t, context, context_mask, **kw)
        return self._windowed(x, t, context, context_mask, cond, kw)

    def _windowed(self, x, t, context, context_mask, cond, kw):
        h, w_ = x.shape[-2:]
        wh, ww = min(self.window, h), min(self.window, w_)
        ys, xs = window_starts(h, wh), window_starts(w_, ww)
        crops = [(y, xx) for y in ys for xx in xs]
        n = len(crops)
        xb = torch.cat([x[..., y:y + wh, xx:xx + ww] for y, xx in crops])
        cb = torch.cat([cond[..., y:y + wh, xx:xx + ww] for y, xx in crops]) if cond is not None else None
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        ctx, mask = context.repeat(n, 1, 1), (context_mask.repeat(n, 1) if context_mask is not None else None)
        args = dict(kw, cond=cb) if cb is not None else kw
        v = self.model(xb, t.repeat(n), ctx, mask, **args).to(x.dtype)
        out, weight = torch.zeros_like(x), torch.zeros_like(x[:, :1])
        for k, (y, xx) in enumerate(crops):
            out[..., y:y + wh, xx:xx + ww] += v[k * x.shape[0]:(k + 1) * x.shape[0]]
            weight[..., y:y + wh, xx:xx + ww] += 1
        return out / weight


def window_starts(length: int, window: int) -> list[int]:
    """Window offsets covering [0, length) with stride window // 2 (the last one flush)."""
    if length <= window:
        return [0]
    stride = max(1, window // 2)
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def text_velocity(model: torch.nn.Module, encoder, prompts: Sequence[str], sample: SampleConfig,
                  guidance: float | None = None, apg: APG | None = None, precision: str = "fp32",
                  cond: torch.Tensor | None = None, window: int | None = None,
                  context: tuple[torch.Tensor, torch.Tensor] | None = None) -> Velocity:
    """The guided velocity (engine.velocity.prompt_velocity) for a batch of prompts (or a given
    text context) at the settings' guidance and interval, with an optional image condition
    and windowing (TaskModel)."""
    net = TaskModel(model, cond, window) if cond is not None or window is not None else model
    scale = sample.guidance if guidance is None else guidance
    return prompt_velocity(net, encoder, prompts, scale, apg, (sample.interval_lo, sample.interval_hi), precision,
                           context=context)


def partial_schedule(sample: SampleConfig, strength: float) -> torch.Tensor:
    """The sampling times from t = strength down to 0, with about steps * strength steps
    (diffusers' img2img convention: strength 1 spends all steps)."""
    n = max(1, math.ceil(sample.steps * strength - 1e-9))
    return timesteps(n, sample.shift, t_max=strength)


def phase_callbacks(callback: Callback | None, *lengths: int) -> list[Callback | None]:
    """One sampler callback per phase of a task (edit: inversion, then re-generation), numbering
    the steps across all phases: phase k's step s reaches the caller as step
    lengths[0] + ... + lengths[k-1] + s of sum(lengths), so a task reports one count from 1 to
    its total (a progress bar or a cancel between steps sees every sampler step of the task)."""
    if callback is None:
        return [None] * len(lengths)
    total, out, offset = sum(lengths), [], 0
    for length in lengths:
        out.append(lambda info, offset=offset: callback({**info, "step": offset + info["step"], "steps": total}))
        offset += length
    return out


def sdedit(velocity: Velocity, x0: torch.Tensor, eps: torch.Tensor, strength: float, sample: SampleConfig,
           callback: Callback | None = None) -> torch.Tensor:
    """Variation of x0: noise to t = strength, integrate back to 0. strength 0 returns x0 (no step).
    callback: the sampler's, after every step (core.sampling.StepInfo)."""
    if strength <= 0:
        return x0.clone()
    ts = partial_schedule(sample, strength)
    return get_sampler(sample.sampler)(velocity, interpolate(x0, eps, float(ts[0])), ts, callback)


@torch.no_grad()
def invert(velocity: Velocity, x0: torch.Tensor, steps: int, t_max: float = 1.0,
           callback: Callback | None = None) -> torch.Tensor:
    """Integrate dx/dt = v from the image at t = 0 up to t_max (Euler): the noise that the
    sampler would carry back to (approximately) this image. callback: after every step (its x0,
    x - t v, is the image the inversion is carrying)."""
    # sample_euler only steps x + (t_next - t) v: an increasing grid integrates forwards.
    return sample_euler(velocity, x0, torch.linspace(0.0, t_max, steps + 1, dtype=torch.float64), callback)


def masked_velocity(velocity: Velocity, x0: torch.Tensor, eps: torch.Tensor, fill: torch.Tensor) -> Velocity:
    """The model's velocity in the hole (fill = 1), the known pixels' own path velocity
    eps - x0 elsewhere: started on the path, the known pixels stay exactly on it."""
    keep_v = (eps - x0) * (1 - fill)

    def v(x: torch.Tensor, t: float) -> torch.Tensor:
        return fill * velocity(x, t) + keep_v

    return v


def blend_inpaint(velocity: Velocity, x0: torch.Tensor, eps: torch.Tensor, fill: torch.Tensor,
                  sample: SampleConfig, resample: int = 0, generator: torch.Generator | None = None,
                  callback: Callback | None = None) -> torch.Tensor:
    """Training-free inpainting of x0 where fill = 1. resample > 0: RePaint's resampling
    (Euler only): after each step, re-noise back to the step's start and repeat, `resample`
    extra times, so the hole is re-generated with the kept region's information.
    callback: after every step (with resampling, once per step, from its last round)."""
    v = masked_velocity(velocity, x0, eps, fill)
    ts = timesteps(sample.steps, sample.shift)
    x = interpolate(x0, eps, float(ts[0]))
    if resample <= 0:
        return get_sampler(sample.sampler)(v, x, ts, callback)
    steps = len(ts) - 1
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        for r in range(resample + 1):
            x_start, v_start = x, v(x, t)
            x = x + (t_next - t) * v_start
            if r == resample or t_next <= 0:
                if callback:  # the step's StepInfo, as core.sampling reports it
                    callback({"step": i + 1, "steps": steps, "t": t, "x": x_start, "x0": x_start - t * v_start})
                break
            # Forward flow kernel from t_next back to t: x_t = a x_{t_next} + s z with
            # a = (1 - t) / (1 - t_next), s^2 = t^2 - (a t_next)^2 (marginals stay on the path).
            a = (1 - t) / (1 - t_next)
            s = math.sqrt(max(t * t - (a * t_next) ** 2, 0.0))
            z = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            renoised = a * x + s * z
            x = fill * renoised + (1 - fill) * interpolate(x0, eps, t)
    return x


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation per sample (noise keeps its norm, unlike a straight mix)."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]
    so = torch.sin(omega)
    out = (torch.sin((1 - alpha) * omega) / so) * fa + (torch.sin(alpha * omega) / so) * fb
    return out.view_as(a)


def join_contexts(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Both text conditions at once: their token sequences side by side, so cross-attention
    reads both prompts (an interpolation of the two embeddings means neither on the shapes
    world: docs/editing.md)."""
    return torch.cat([a[0], b[0]], dim=1), torch.cat([a[1], b[1]], dim=1)


def mix_contexts(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear interpolation of two text conditions (padded to one length, masks joined)."""
    states, mask = pad_contexts(a, b)
    n = a[0].shape[0]
    return (1 - alpha) * states[:n] + alpha * states[n:], mask[:n] | mask[n:]


def multiply_blend(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """The "multiply" blend of two images in [-1, 1], weighted: in [0, 1] it is
    a^min(1, 2(1 - alpha)) * b^min(1, 2 alpha), so alpha 0 gives a, 1 gives b and 0.5 the
    plain product, which keeps dark content of both on a light background."""
    ua, ub = ((a + 1) / 2).clamp(0, 1), ((b + 1) / 2).clamp(0, 1)
    out = ua ** min(1.0, 2 * (1 - alpha)) * ub ** min(1.0, 2 * alpha)
    return out * 2 - 1
