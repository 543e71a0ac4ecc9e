"""ShapesEval's detector: the flat colored shapes of an image (docs/shapes-world.md).

Pixels -> nearest palette line (or background) -> 4-connected components per
color -> shape by mass distribution and template IoU. The vocabulary is the base palette
unless a caller adds extra colors (data.shapes.EXTRA_COLORS; the scorer adds those its
caption names). The templates are the
renderer's own masks (ditkit.data.shapes.shape_mask), so an undistorted drawn
shape matches its template exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ditkit.data.shapes import COLORS, MIN_SIZE, PALETTE, shape_mask


@dataclass(frozen=True)
class Detection:
    """One detected object; the box is [x0, x1) x [y0, y1) in pixels."""

    color: str
    shape: str
    x0: float
    y0: float
    x1: float
    y1: float
    area: int

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


# The detector's default vocabulary: the base palette. Extra colors (data.shapes.EXTRA_COLORS)
# join only when a caller names them (the scorer: the extra colors its caption names), so a
# base-world image is judged against exactly the six lines it always was.
BASE_COLORS: tuple[str, ...] = tuple(PALETTE)


@lru_cache(maxsize=None)
def _color_lines(colors: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Each color as a direction away from white, (K, 3), and its squared norm (K,): a pixel on
    the segment white -> color is that color at "coverage" alpha (an anti-aliased or blurred
    edge), so classification is along these lines, not by plain nearest color."""
    u = 255.0 - np.array([COLORS[c] for c in colors], dtype=np.float32)
    return u, (u * u).sum(axis=1)

_ALPHA_MIN = 0.5  # at least half covered: blurred edges split where the true edge was
_ALPHA_MAX = 1.6  # somewhat darker than the palette color is still that color
# Max distance (RGB units) from a palette line. Tolerates slight color shifts
# but rejects grays (every gray dark enough to pass _ALPHA_MIN lies >= 50
# from all six lines) and dark blur.
_RESIDUAL_MAX = 45.0


def _as_rgb_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"image must be a PIL image or a uint8 array of shape (H, W, 3), "
                f"got dtype {arr.dtype} and shape {arr.shape}"
            )
    if min(arr.shape[:2]) < MIN_SIZE:
        raise ValueError(
            f"image must be at least {MIN_SIZE}x{MIN_SIZE} pixels, got {arr.shape[1]}x{arr.shape[0]}"
        )
    return arr


def _classify_pixels(arr: np.ndarray, colors: tuple[str, ...] = BASE_COLORS) -> np.ndarray:
    """Per-pixel index into `colors` (H, W) int8, -1 for background or unrecognized pixels."""
    h, w, _ = arr.shape
    u, u_norm2 = _color_lines(colors)
    d = 255.0 - arr.reshape(-1, 3).astype(np.float32)  # (N, 3) offset from white
    alpha = (d @ u.T) / u_norm2  # (N, K) position along each white -> color line
    # Squared distance to each line (Pythagoras); clip float round-off below 0.
    resid2 = np.maximum((d * d).sum(axis=1, keepdims=True) - alpha * alpha * u_norm2, 0.0)
    best = resid2.argmin(axis=1)
    rows = np.arange(best.size)
    a, r2 = alpha[rows, best], resid2[rows, best]
    keep = (a >= _ALPHA_MIN) & (a <= _ALPHA_MAX) & (r2 <= _RESIDUAL_MAX**2)
    return np.where(keep, best, -1).astype(np.int8).reshape(h, w)


def _min_area(size: int) -> int:
    # A fifth of the smallest allowed box area: drops speckle noise, keeps
    # the smallest triangle (about half its box) even after blur.
    return max(4, int(0.2 * (0.14 * size) ** 2))


def _bottom_heaviness(mask: np.ndarray) -> float:
    """(bottom - top) / total mass of a mask split at its bbox's middle row.

    An upright triangle is ~0.5 (a quarter of its mass lies in the top half),
    and still >= 0.2 when blur eats its thin apex; a disc or a square is 0.
    """
    h = mask.shape[0]
    rows = mask.sum(axis=1).astype(np.float64)
    top_weight = np.clip(h / 2 - np.arange(h), 0.0, 1.0)  # splits an odd middle row in half
    top = float((rows * top_weight).sum())
    total = float(rows.sum())
    return (total - 2 * top) / total if total else 0.0


# Triangles measure >= 0.2 even blurred at the smallest sizes; discs and
# squares stay within +-0.08 under noise (measured on the generator's images).
_TRIANGLE_HEAVINESS = 0.14


def _classify_shape(mask: np.ndarray) -> str:
    """Shape of one component mask (its bbox crop).

    A triangle is told by where its mass sits (at the bottom), which survives
    blur better than its fill ratio: blur removes the apex, and the truncated
    triangle fills its shorter bbox more. Disc and square are told apart by
    the IoU with their templates stretched over the bbox, i.e. by the fill
    ratio (square ~1, disc ~pi/4) and by where the missing pixels are (the
    corners).
    """
    if _bottom_heaviness(mask) >= _TRIANGLE_HEAVINESS:
        return "triangle"
    h, w = mask.shape
    best, best_iou = "circle", -1.0
    for shape in ("circle", "square"):
        tmpl = shape_mask(shape, w, h)
        union = np.count_nonzero(mask | tmpl)
        iou = np.count_nonzero(mask & tmpl) / union if union else 0.0
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def check_colors(colors: Sequence[str] | None) -> tuple[str, ...]:
    """A detector vocabulary: BASE_COLORS for None, else the named colors (each in data.shapes.COLORS)."""
    if colors is None:
        return BASE_COLORS
    colors = tuple(colors)
    unknown = [c for c in colors if c not in COLORS]
    if unknown or not colors:
        raise ValueError(f"detector colors must be a non-empty list of {tuple(COLORS)}, got {list(colors)}")
    return colors


def detect(image: Any, colors: Sequence[str] | None = None) -> list[Detection]:
    """Detect the flat colored shapes of an image (PIL image or uint8 (H, W, 3) array, sides >= 32).

    Pixels -> nearest color line (or background) -> 4-connected components
    per color (holes filled, specks dropped) -> shape (see _classify_shape).
    colors: the vocabulary, the base palette by default; extra colors (e.g. "pink") are
    recognised only when listed. Deterministic; sorted top to bottom, then left to right.
    """
    return [d for d, _, _ in _components(image, colors)]


def detect_with_masks(image: Any, colors: Sequence[str] | None = None) -> list[tuple[Detection, np.ndarray]]:
    """detect's detections, each with its pixels as a bool (H, W) mask: the component it was
    found as (its color's pixels, holes filled, 4-connected). Same order as detect."""
    return [(d, comp == idx) for d, comp, idx in _components(image, colors)]


def _components(image: Any, colors: Sequence[str] | None) -> list[tuple[Detection, np.ndarray, int]]:
    """The detections, each with its color's label image and its index there, sorted as detect sorts."""
    from scipy import ndimage  # lazy: scipy.ndimage costs ~0.3 s to import, and `ditkit --help` loads this module

    colors = check_colors(colors)
    arr = _as_rgb_array(image)
    labels = _classify_pixels(arr, colors)
    min_area = _min_area(min(arr.shape[:2]))
    found: list[tuple[Detection, np.ndarray, int]] = []
    for k in np.unique(labels):
        if k < 0:
            continue
        # Filling holes repairs specks of noise inside a shape; it never joins
        # two objects, since the shapes are convex and kept apart.
        mask = ndimage.binary_fill_holes(labels == k)
        comp, _ = ndimage.label(mask)
        for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            sub = comp[sl] == idx
            area = int(np.count_nonzero(sub))
            if area < min_area:
                continue
            ys, xs = sl
            found.append((Detection(colors[int(k)], _classify_shape(sub),
                                    float(xs.start), float(ys.start), float(xs.stop), float(ys.stop), area), comp, idx))
    found.sort(key=lambda f: (f[0].y0, f[0].x0, f[0].color, f[0].shape))
    return found
