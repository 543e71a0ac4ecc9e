"""Condition maps for controllable generation (core/control.py): edges, layout boxes and
silhouettes, made from any image or drawn from a shapes scene's ground truth.

Every map is a grayscale image of the output's size, black (0) where there is nothing:

- edges: Canny edges (scikit-image's `feature.canny`, Canny 1986) of each RGB channel,
  OR-ed together, white on black. Per channel, because a yellow shape on white differs from
  its background mostly in the blue channel: the luminance step is small and a grayscale
  Canny drops some of its edges.
- seg: object silhouettes, white on black. From an image: every pixel whose color is
  farther than SEG_THRESHOLD (RGB distance) from the background, the median color of the
  image's border; holes filled. From a scene: the renderer's own masks.
- boxes: a layout as a label map: the k-th box filled with BOX_LEVELS[k] (255, 191, 127,
  63), so "where" comes from the boxes and "what" from the text. Box k holds the k-th object
  the prompt names (the shapes world's caption order: the objects of the first clause, then
  the second's). From an image, the boxes are the bounding boxes of seg's connected
  components in reading order (top to bottom, then left to right, as the shapes detector
  sorts); reorder them to the prompt's order when it differs.

The training conditions come from the same makers (edges from the rendered image; boxes and
seg from the scene, which the image-based makers reproduce on the generator's images), so a
map the user makes with `ditkit control-map` is what the control models were trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ditkit.data.shapes import Scene, render, shape_mask

CONDITIONS = ("edges", "boxes", "seg")
BOX_LEVELS = (255, 191, 127, 63)  # label k of a layout: the k-th object the prompt names
MAX_BOXES = len(BOX_LEVELS)
SEG_THRESHOLD = 60.0  # RGB distance from the background color above which a pixel is an object's
CANNY_SIGMA = 1.0


def check_condition(kind: str) -> str:
    """A condition kind, or a ValueError listing the allowed ones."""
    if kind not in CONDITIONS:
        raise ValueError(f"unknown control condition {kind!r}; allowed: {', '.join(CONDITIONS)}")
    return kind


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or a uint8 (H, W, 3) array -> uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected a PIL image or a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
    return arr


def edges_map(image: Image.Image | np.ndarray) -> np.ndarray:
    """Canny edges of an image, bool (H, W): the OR of each RGB channel's edges."""
    try:
        from skimage.feature import canny  # why here: scikit-image takes ~1 s to import; only edge maps need it
    except ImportError:
        raise ValueError("edge maps need scikit-image: pip install scikit-image (or 'ditkit[control]')") from None

    arr = _rgb(image).astype(np.float32) / 255.0
    out = np.zeros(arr.shape[:2], bool)
    for c in range(3):
        out |= canny(arr[..., c], sigma=CANNY_SIGMA, low_threshold=0.05, high_threshold=0.1)
    return out


def background_color(arr: np.ndarray) -> np.ndarray:
    """The median color of the image's one-pixel border, float (3,)."""
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def seg_map(image: Image.Image | np.ndarray) -> np.ndarray:
    """Object silhouettes of an image, bool (H, W): pixels away from the background color, holes filled."""
    from scipy import ndimage  # why here: ~0.3 s to import, and `ditkit --help` imports this module

    arr = _rgb(image).astype(np.float32)
    far = np.linalg.norm(arr - background_color(arr), axis=-1) > SEG_THRESHOLD
    return ndimage.binary_fill_holes(far)


def boxes_from_image(image: Image.Image | np.ndarray, min_area: int = 4) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1), end-exclusive, of the image's objects (seg's connected
    components of at least `min_area` pixels) in reading order, at most MAX_BOXES (the largest)."""
    from scipy import ndimage  # why here: see seg_map

    labels, _ = ndimage.label(seg_map(image))
    boxes = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or int(np.count_nonzero(labels[sl] == idx)) < min_area:
            continue
        ys, xs = sl
        boxes.append((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)))
    if len(boxes) > MAX_BOXES:
        boxes = sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)[:MAX_BOXES]
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def draw_boxes(boxes: Sequence[Sequence[float]], width: int, height: int | None = None) -> np.ndarray:
    """A layout label map, uint8 (H, W): box k = (x0, y0, x1, y1) in pixels, end-exclusive, filled
    with BOX_LEVELS[k]; later boxes are drawn over earlier ones. At most MAX_BOXES boxes."""
    height = width if height is None else height
    if len(boxes) > MAX_BOXES:
        raise ValueError(f"a layout holds at most {MAX_BOXES} boxes (one per object the prompt names), got {len(boxes)}")
    out = np.zeros((height, width), np.uint8)
    for k, box in enumerate(boxes):
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"box {k} must be four numbers (x0, y0, x1, y1), got {box!r}") from None
        if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {k} must have finite x0 < x1 and y0 < y1, got {box!r}")
        xa, xb = max(0, int(round(x0))), min(width, int(round(x1)))
        ya, yb = max(0, int(round(y0))), min(height, int(round(y1)))
        out[ya:yb, xa:xb] = BOX_LEVELS[k]
    return out


def scene_masks(scene: Scene, size: int) -> list[np.ndarray]:
    """Each object's silhouette as the renderer draws it, bool (S, S), in caption order."""
    masks = []
    for obj in scene.objects:
        m = np.zeros((size, size), bool)
        m[obj.y0:obj.y1, obj.x0:obj.x1] = shape_mask(obj.shape, obj.w, obj.h)
        masks.append(m)
    return masks


def scene_map(kind: str, scene: Scene, size: int, image: Image.Image | np.ndarray | None = None) -> np.ndarray:
    """The ground-truth condition of a scene, uint8 (S, S): `image` is its rendering (edges are
    taken from it; rendered here when not given)."""
    check_condition(kind)
    if kind == "boxes":
        return draw_boxes([(o.x0, o.y0, o.x1, o.y1) for o in scene.objects], size)
    if kind == "seg":
        masks = scene_masks(scene, size)
        union = np.logical_or.reduce(masks) if masks else np.zeros((size, size), bool)
        return union.astype(np.uint8) * 255
    if image is None:
        image = render(scene.objects, size)
    return edges_map(image).astype(np.uint8) * 255


def condition_map(kind: str, image: Image.Image | np.ndarray) -> np.ndarray:
    """The condition of any image, uint8 (H, W): what `ditkit control-map KIND IMAGE` writes."""
    check_condition(kind)
    if kind == "edges":
        return edges_map(image).astype(np.uint8) * 255
    if kind == "seg":
        return seg_map(image).astype(np.uint8) * 255
    arr = _rgb(image)
    return draw_boxes(boxes_from_image(arr), arr.shape[1], arr.shape[0])


def map_image(arr: np.ndarray) -> Image.Image:
    """A uint8 (H, W) map as an RGB PIL image (the file format of a condition)."""
    return Image.fromarray(arr, mode="L").convert("RGB")


def maps_tensor(maps: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W) maps -> (B, 3, H, W) float32 in [-1, 1], the gray level on all three channels."""
    arr = np.stack([np.asarray(m, dtype=np.float32) for m in maps]) / 127.5 - 1.0
    return torch.from_numpy(arr)[:, None].repeat(1, 3, 1, 1).contiguous()
