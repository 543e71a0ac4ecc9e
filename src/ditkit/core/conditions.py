"""Conditioning images for DiTs with extra input channels (model.cond_channels).

Two tasks use them, after Kandinsky 3's multifunctional framework:
- inpainting: mask (1 channel, 1 = fill) + masked image (3 channels, hole set to 0,
  the mid-grey of [-1, 1]); the model sees what to keep and where to fill;
- 2x super-resolution: the low-resolution image upsampled bilinearly to the output
  size (3 channels), the SR3 / DiT4SR "concatenate the low-res image" recipe.

The training masks mix what users ask for (Kandinsky 3 trains on object and random
masks; LaMa adds wide borders for outpainting): an object's box plus a margin (half the
time captioned with that object alone, so "inpaint a red circle here" is learned), random
boxes, and border bands of up to half the canvas.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ditkit.data.shapes import object_caption

TASKS = ("generate", "inpaint", "upscale")
COND_CHANNELS = {"generate": 0, "inpaint": 4, "upscale": 3}


def check_task(task: str, cond_channels: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown train.task {task!r}; allowed: {', '.join(TASKS)}")
    if COND_CHANNELS[task] != cond_channels:
        raise ValueError(f"train.task {task!r} needs model.cond_channels = {COND_CHANNELS[task]}, got {cond_channels}")


def inpaint_condition(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) image in [-1, 1], (B, 1, H, W) mask (1 = fill) -> (B, 4, H, W)."""
    mask = mask.to(image.dtype)
    return torch.cat([mask, image * (1 - mask)], dim=1)


def downsample(image: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Area downsampling: the low-resolution input an upscaler is trained on."""
    return F.avg_pool2d(image, factor)


def upscale_condition(low: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """The low-resolution image, bilinearly upsampled to the output size."""
    return F.interpolate(low, scale_factor=factor, mode="bilinear", align_corners=False)


def _box(mask: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    s = mask.shape[0]
    mask[max(0, y0):min(s, y1), max(0, x0):min(s, x1)] = 1.0


def random_mask(rng: np.random.Generator, size: int, scene=None) -> tuple[np.ndarray, object | None]:
    """One training mask (S, S) float32 (1 = fill) and, for an object mask, the object.

    object box + margin 0.45 (only with a scene), random box 0.25, border bands 0.3."""
    mask = np.zeros((size, size), np.float32)
    kind = rng.choice(3, p=[0.45, 0.25, 0.30]) if scene is not None and scene.objects else rng.choice([1, 2])
    if kind == 0:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        m = int(rng.integers(1, max(2, size // 12) + 1))
        _box(mask, obj.x0 - m, obj.y0 - m, obj.x1 + m, obj.y1 + m)
        return mask, obj
    if kind == 1:
        w, h = (int(v) for v in rng.integers(size // 5, int(size * 0.6) + 1, size=2))
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        _box(mask, x0, y0, x0 + w, y0 + h)
        return mask, None
    sides = rng.permutation(4)[: int(rng.choice([1, 2, 4], p=[0.5, 0.3, 0.2]))]
    for side in sides.tolist():
        band = int(rng.integers(size // 10, size // 2 + 1))
        if side == 0:
            _box(mask, 0, 0, band, size)           # left
        elif side == 1:
            _box(mask, size - band, 0, size, size)  # right
        elif side == 2:
            _box(mask, 0, 0, size, band)           # top
        else:
            _box(mask, 0, size - band, size, size)  # bottom
    if mask.all():  # four bands can cover everything: keep a centre
        mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0
    return mask, None


def inpaint_training_masks(rng: np.random.Generator, size: int, scenes, captions: list[str]
                           ) -> tuple[torch.Tensor, list[str]]:
    """Masks (B, 1, S, S) for a batch and the captions to train with (an object mask is
    captioned with its object alone half the time)."""
    masks, out = [], []
    for i, caption in enumerate(captions):
        mask, obj = random_mask(rng, size, scenes[i] if scenes is not None else None)
        masks.append(mask)
        out.append(object_caption(obj) if obj is not None and rng.random() < 0.5 else caption)
    return torch.from_numpy(np.stack(masks))[:, None], out
