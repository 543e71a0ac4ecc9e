"""Image-to-video in the engine: the given first frame is frame 0 at t = 0.

Why first-frame replacement with per-frame time (Wan 2.2 TI2V, LTX-Video) and not the
conditioning frame as extra input channels with a frame mask (Kandinsky 5): the given frame comes
out exactly (no model has to learn to copy it, so its PSNR is infinite), text-to-video and
image-to-video need no second input path (a text-to-video clip is every frame at the same t), and
the image model's input layers, which the video model is initialised from, stay as they were.
The video model learns it because training gives a share of clips their first frame clean
(train.first_frame_prob; training/train.clip_times)."""

from __future__ import annotations

import torch
from torch import nn


class FirstFrameModel(nn.Module):
    """A video model with frame 0 of every clip held at the given frames (B, C, H, W), at t = 0.

    forward(x (B', F, C, H, W), t, ...) with B' a multiple of B (guidance runs the conditional
    and unconditional branches as one batch): frame 0 of x is replaced by the given frame, the
    model sees per-frame times (t for frames 1.., 0 for frame 0), and the velocity of frame 0 is 0,
    so every sampler leaves a frame that starts at the given one where it is (Euler and Heun add
    (t' - t) * 0; DPM-Solver++ gets x0 = x there)."""

    def __init__(self, model: nn.Module, first_frames: torch.Tensor):
        super().__init__()
        self.model = model
        self.first_frames = first_frames

    @property
    def config(self):
        return self.model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        b, f = x.shape[:2]
        frames = self.first_frames.to(device=x.device, dtype=x.dtype)
        if b % frames.shape[0]:
            raise ValueError(f"{frames.shape[0]} first frames for a batch of {b} clips")
        frames = frames.repeat(b // frames.shape[0], 1, 1, 1)
        x = torch.cat([frames[:, None], x[:, 1:]], dim=1)
        times = t.float().reshape(-1, 1).expand(b, f).clone() if t.numel() > 1 else t.float().reshape(1, 1).repeat(b, f)
        times[:, 0] = 0.0
        v = self.model(x, times, context, context_mask, **kwargs)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:]], dim=1)
