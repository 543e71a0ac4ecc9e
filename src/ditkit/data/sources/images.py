"""Decoding and preprocessing shared by every data kind: bytes -> RGB -> square crop -> [-1, 1].

The same bytes give the same array whichever kind (folder, webdataset, hf) read them, so a
data set converted from one form to another trains the same model.

Preprocessing (the crop-and-resize of Stable Diffusion's and diffusers' training scripts):
1. EXIF orientation applied (a phone photo stands the way it was taken);
2. RGB; an image with transparency is composited on white, not on the black its RGB
   channels would show under a dropped alpha;
3. the largest centred square is cut and resized to size x size with Pillow's bicubic filter
   (Pillow's resize filters antialias when shrinking); this is "resize the short side to
   size, then centre-crop", done as one resize by ImageOps.fit.
Aspect-ratio buckets (PixArt-alpha, SANA: batches of one aspect ratio, no crop) are not done:
the model trains on squares only.

Arrays are numpy, not torch, so `import ditkit.data` stays free of torch (training_batch
converts the finished batch).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WHITE = (255, 255, 255)


class UnreadableSample(ValueError):
    """A sample whose image or caption cannot be read: it is skipped and counted, never fatal."""


def to_rgb_on_white(im: Image.Image) -> Image.Image:
    """RGB; transparent pixels (RGBA, LA, palette transparency) composited over white."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def preprocess(im: Image.Image, size: int) -> np.ndarray:
    """A PIL image -> (3, size, size) float32 in [-1, 1] (see the module docstring)."""
    im = to_rgb_on_white(ImageOps.exif_transpose(im))
    im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    pixels = np.asarray(im, dtype=np.uint8)  # (S, S, 3)
    return pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def decode_image(data: bytes | str | Path, size: int, name: str = "") -> np.ndarray:
    """Encoded image bytes (or a file path) -> (3, size, size) float32 in [-1, 1].
    Raises UnreadableSample for anything Pillow cannot decode fully."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        with warnings.catch_warnings():
            # Pillow warns before it refuses (DecompressionBombWarning); the refusal is what counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()  # decode now: a truncated file fails here, not later in a worker
                return preprocess(im, size)
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise UnreadableSample(f"cannot decode image {name or source}: {type(e).__name__}: {e}") from None


def decode_caption(data: bytes, name: str = "") -> str:
    """A UTF-8 caption (a .txt file or a tar member), surrounding whitespace removed."""
    try:
        return data.decode("utf-8-sig").strip()  # -sig: a leading byte-order mark is not caption text
    except UnicodeDecodeError as e:
        raise UnreadableSample(f"caption {name} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
