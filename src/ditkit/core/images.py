"""Reading user images and masks for the editing tasks, and pasting results back.

Every editing task accepts what a user has on disk: RGB, grayscale, palette, RGBA
(composited on white, the shapes world's background) and 16-bit images are converted,
never refused. Sizes: the model works at a size it was trained for, so inputs are resized
to it (with a warning) and results are brought back to the input's size, where the kept
pixels are pasted back from the original so they stay byte-identical. Inputs larger than
limits.MAX_IMAGE_PIXELS are refused, files before they are decoded (a small PNG can
decompress to gigabytes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ditkit.core.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, check_number

ImageLike = Union[str, Path, Image.Image, np.ndarray]


def load_image(image: ImageLike, what: str = "image") -> Image.Image:
    """Any supported input -> an RGB PIL image (8 bits per channel)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{what} {str(path)!r} does not exist")
        try:
            with warnings.catch_warnings():  # PIL warns on its bomb threshold; ours is lower and an error
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:  # reads the header only: the size is known before decoding
                    check_pixels(im.size, f"{what} {str(path)!r}")
                    im.load()
                    image = im.copy()
        except Image.DecompressionBombError:  # PIL's own, higher limit, hit while opening
            raise ValueError(f"{what} {str(path)!r} is too large: more than {MAX_IMAGE_PIXELS:,} pixels "
                             f"({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}) are refused") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{what} {str(path)!r} is not an image PIL can read ({e.__class__.__name__})") from None
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_pixels((image.shape[1], image.shape[0]), f"{what} array")
        image = _from_array(image, what)
    if not isinstance(image, Image.Image):
        raise ValueError(f"{what} must be a path, a PIL image or a numpy array, got {type(image).__name__}")
    check_pixels(image.size, what)
    return to_rgb(image)


def check_pixels(size: tuple[int, int], what: str = "image") -> None:
    """Refuse an image of PIL size (W, H) over limits.MAX_IMAGE_PIXELS (or with an empty side)."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {w}x{h} = {w * h / 1e6:.1f} MP, too large: at most {MAX_IMAGE_PIXELS:,} pixels "
                         f"({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}) are accepted; downscale it first")
    if w < 1 or h < 1:
        raise ValueError(f"{what} is {w}x{h}: it has no pixels")


def _from_array(arr: np.ndarray, what: str) -> Image.Image:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{what} array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, np.float64), 0, 1) * 255 if np.issubdtype(arr.dtype, np.floating) else arr
        arr = np.asarray(arr).round().clip(0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def to_rgb(im: Image.Image) -> Image.Image:
    """Grayscale, palette, 16-bit and RGBA images -> RGB (alpha composited on white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray((arr / peak * 255).round().clip(0, 255).astype(np.uint8))
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8) if arr.max() <= 1 else arr.clip(0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_mask(mask: ImageLike, size: tuple[int, int]) -> np.ndarray:
    """A mask (white = fill) -> bool array (H, W) for an image of PIL size (W, H).

    A mask of another size is resized (nearest) with a warning. An all-black mask
    (nothing to fill) is an error."""
    im = load_image(mask, what="mask").convert("L")
    if im.size != tuple(size):
        warnings.warn(f"mask size {im.size[0]}x{im.size[1]} differs from the image's {size[0]}x{size[1]}; "
                      "resizing the mask (nearest)")
        im = im.resize(tuple(size), Image.NEAREST)
    m = np.asarray(im) >= 128
    if not m.any():
        raise ValueError("the mask is all black: there is nothing to fill (white marks the region to fill)")
    return m


def check_strength(strength: float) -> float:
    return check_number("strength", strength, 0.0, 1.0)


def working_size(size: tuple[int, int], side: int, what: str = "image") -> tuple[int, int]:
    """The model works on side x side canvases: warn when an input is resized to it."""
    if tuple(size) != (side, side):
        warnings.warn(f"{what} of {size[0]}x{size[1]} resized to the model's {side}x{side}")
    return side, side


def to_tensor(im: Image.Image, size: tuple[int, int] | None = None, resample=Image.BICUBIC) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) in [-1, 1], resized to PIL size (W, H) if given."""
    if size is not None and im.size != tuple(size):
        im = im.resize(tuple(size), resample)
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> list of RGB PIL images (the inverse of to_tensor)."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def mask_tensor(mask: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """bool (H, W) -> (1, 1, H', W') float {0, 1}, resized to PIL size (W', H') so that any
    partly-masked pixel counts as masked (the hole only grows)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    if size is not None and (t.shape[-1], t.shape[-2]) != tuple(size):
        t = torch.nn.functional.adaptive_max_pool2d(t, (size[1], size[0])) if size[0] <= mask.shape[1] \
            else torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="nearest")
    return t


def paste_kept(generated: Image.Image, original: Image.Image, fill: np.ndarray) -> Image.Image:
    """The output at the original's size: generated pixels where `fill`, the original's
    pixels (byte-identical) everywhere else."""
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.BICUBIC)
    out = np.where(fill[..., None], np.asarray(generated.convert("RGB")), np.asarray(original.convert("RGB")))
    return Image.fromarray(out.astype(np.uint8))
