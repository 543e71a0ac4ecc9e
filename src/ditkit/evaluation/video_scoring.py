"""The video evaluation's per-clip measurements (issue 29, "Evaluation"; docs/shapes-world.md,
"Moving shapes (video)"): ShapesEval's detector on every frame of a clip, then

- per-frame object correctness: the frame holds exactly the caption's objects (color and
  shape, one each, nothing else);
- motion: each named object's track (its one detection of that color and shape on each frame)
  classified as a direction, standing still or growing, against thresholds derived from the
  world's least speed and growth (``MotionThresholds``);
- temporal consistency: the clip's own objects persist from frame to frame (same colors and
  shapes, no object vanishing, appearing or jumping), whatever the caption says;
- image-to-video's first-frame fidelity: PSNR of frame 0 against the given frame.

``score_clip`` measures one clip, ``aggregate`` averages a list of those; the benchmark that
generates the clips is ditkit.evaluation.video_eval.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ditkit.core.images import to_pil
from ditkit.data.video import DIRECTIONS, GROWING, STILL, min_growth, min_speed, parse_video_caption
from ditkit.evaluation.shapes_detector import Detection, detect

Frames = Any  # a list of PIL images / uint8 (S, S, 3) arrays, or a tensor (F, 3, S, S); see clip_arrays


@dataclass(frozen=True)
class MotionThresholds:
    """What counts as moving, still and growing on an S x S clip of F frames, in pixels over the
    whole clip, derived from the world's least motion (data.video.min_speed / min_growth) so that
    ground truth sits a whole threshold away from every boundary:

    - move: half the least travel of a moving object, (F - 1) * min_speed / 2 (S = 32, F = 8:
      7 px). A net centroid displacement of at least this is moving, below it staying in place.
      Ground truth moves >= 2 * move or exactly 0.
    - grow: half the least side growth of a growing object, (F - 1) * min_growth / 2 (S = 32,
      F = 8: 7 px). A side change (mean of box width and height) of at least this is growing;
      below it in size (either way) is keeping its size. Ground truth grows >= 2 * grow or 0.
    - cross_ratio: a moving object's displacement across its direction may be at most this
      fraction of its displacement along it (0.5: within about 27 degrees of the axis; ground
      truth moves exactly along it).
    - jump: temporal consistency's largest centroid step between two consecutive frames, twice
      the world's fastest step (2 * min_speed px per frame), so 4 * min_speed (S = 32: 8 px).
    """

    move: float
    grow: float
    cross_ratio: float
    jump: float

    @classmethod
    def for_clip(cls, size: int, frames: int) -> "MotionThresholds":
        if frames < 2:
            raise ValueError(f"motion needs at least 2 frames, got {frames}")
        return cls(move=(frames - 1) * min_speed(size, frames) / 2, grow=(frames - 1) * min_growth(size, frames) / 2,
                   cross_ratio=0.5, jump=4.0 * min_speed(size, frames))

    def as_dict(self) -> dict:
        return asdict(self)


def clip_arrays(frames: Frames) -> list[np.ndarray]:
    """A clip as F uint8 RGB arrays (S, S, 3), square and all of one size.

    frames: a list of PIL images or uint8 (S, S, 3) arrays, or a tensor (F, 3, S, S): uint8, or
    float in [-1, 1] (the engine's convention; clamped and rounded as core.images.to_pil does)."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"a clip tensor must be (F, 3, S, S), got shape {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:
            arrays = list(frames.permute(0, 2, 3, 1).cpu().numpy())
        elif frames.is_floating_point():
            arrays = [np.asarray(im) for im in to_pil(frames)]
        else:
            raise ValueError(f"a clip tensor must be uint8 or float in [-1, 1], got {frames.dtype}")
    else:
        if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
            raise ValueError(f"a clip must be a list of frames or a tensor (F, 3, S, S), got {type(frames).__name__}")
        arrays = []
        for i, f in enumerate(frames):
            a = np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"frame {i} must be a PIL image or a uint8 (S, S, 3) array, "
                                 f"got dtype {a.dtype} and shape {a.shape}")
            arrays.append(a)
    if not arrays:
        raise ValueError("a clip needs at least one frame")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].shape[0] != arrays[0].shape[1]:
        raise ValueError(f"a clip's frames must be square and all of one size, got sizes {sorted(shapes)}")
    return arrays


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 RGB images (PIL or (H, W, 3) arrays) of one
    size, 10 log10(255^2 / MSE); math.inf for identical images (JSON writers store it as null)."""
    x = np.asarray(a.convert("RGB") if isinstance(a, Image.Image) else a)
    y = np.asarray(b.convert("RGB") if isinstance(b, Image.Image) else b)
    if x.shape != y.shape:
        raise ValueError(f"PSNR needs two images of one size, got {x.shape} and {y.shape}")
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _robust_change(values: Sequence[float]) -> float:
    """The change over the clip of a per-frame value: the Theil-Sen slope (median of the slopes
    of every pair of frames) times F - 1. Exact on a straight line; one bad frame cannot flip it."""
    n = len(values)
    slopes = [(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    return float(np.median(slopes)) * (n - 1)


def classify_motion(track: Sequence[Detection], thresholds: MotionThresholds) -> str | None:
    """The motion a complete track (one detection per frame, F >= 2) shows: a direction of
    data.video.DIRECTIONS, "standing still", "growing", or None when it is none of these
    (drifting diagonally, moving while growing, shrinking ...). See MotionThresholds."""
    dx = _robust_change([d.cx for d in track])
    dy = _robust_change([d.cy for d in track])
    grown = _robust_change([(d.w + d.h) / 2 for d in track])
    moved = math.hypot(dx, dy) >= thresholds.move
    if grown >= thresholds.grow:
        return None if moved else GROWING
    if grown <= -thresholds.grow:
        return None  # shrinking: no motion of the world
    if not moved:
        return STILL
    along, across = (dx, dy) if abs(dx) >= abs(dy) else (dy, dx)
    if abs(along) < thresholds.move or abs(across) > thresholds.cross_ratio * abs(along):
        return None
    unit = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
    return next(name for name, d in DIRECTIONS.items() if d == unit)


def _consistent_step(a: list[Detection], b: list[Detection], jump: float) -> bool:
    """Whether frame b keeps frame a's objects: both non-empty, the same multiset of (color,
    shape), and each object's nearest namesake on b within `jump` px of it."""
    if not a or not b or Counter((d.color, d.shape) for d in a) != Counter((d.color, d.shape) for d in b):
        return False
    for d in a:
        near = min(math.hypot(e.cx - d.cx, e.cy - d.cy) for e in b if (e.color, e.shape) == (d.color, d.shape))
        if near > jump:
            return False
    return True


def temporal_consistency(detections: Sequence[list[Detection]], thresholds: MotionThresholds) -> float:
    """The fraction of the F - 1 consecutive frame pairs over which the clip keeps its objects
    (see _consistent_step): 1.0 for a clip whose objects persist with the same color and shape and
    move smoothly; an object that vanishes, appears or changes color or shape, or a blank frame,
    breaks the pairs around it. It judges the clip against itself, not the caption; a clip with
    nothing on a frame has nothing to keep there (a blank clip scores 0). A one-frame clip scores 1."""
    steps = len(detections) - 1
    if steps < 1:
        return 1.0
    ok = sum(_consistent_step(detections[t], detections[t + 1], thresholds.jump) for t in range(steps))
    return ok / steps


def score_clip(frames: Frames, caption: str, first_frame: Any = None) -> dict:
    """Score one clip against its moving-shapes caption (data.video.parse_video_caption).

    frames: F >= 2 frames, a list of PIL images / uint8 (S, S, 3) arrays or a tensor (F, 3, S, S)
    (uint8, or float in [-1, 1]). first_frame: image-to-video's given first frame (PIL or uint8
    array), for first_frame_psnr.

    Returns {"frames_correct": [bool] * F, "per_frame_correct": fraction of frames correct,
    "all_frames_correct", "objects": [{"color", "shape", "motion", "found": frames holding it once,
    "predicted": classify_motion's answer or None when it is missing or doubled on some frame,
    "correct"}], "motion_correct": every named object's motion right, "temporal_consistency",
    "first_frame_psnr" (with first_frame; math.inf when identical)}.
    """
    items = parse_video_caption(caption)
    arrays = clip_arrays(frames)
    if len(arrays) < 2:
        raise ValueError(f"a clip needs at least 2 frames to show motion, got {len(arrays)}")
    size, count = arrays[0].shape[0], len(arrays)
    thresholds = MotionThresholds.for_clip(size, count)
    # The world's captions use only the base palette, which is detect's default vocabulary.
    found = [detect(a) for a in arrays]
    wanted = Counter((c, s) for c, s, _ in items)
    frames_correct = [Counter((d.color, d.shape) for d in dets) == wanted for dets in found]
    objects, motion_ok = [], True
    for color, shape, motion in items:
        track = [[d for d in dets if (d.color, d.shape) == (color, shape)] for dets in found]
        present = sum(len(hits) == 1 for hits in track)
        # Missing (or doubled) on any frame: there is no one track to read a motion from.
        predicted = classify_motion([hits[0] for hits in track], thresholds) if present == count else None
        correct = predicted == motion
        motion_ok &= correct
        objects.append({"color": color, "shape": shape, "motion": motion, "found": present,
                        "predicted": predicted, "correct": correct})
    result = {"frames_correct": frames_correct, "per_frame_correct": sum(frames_correct) / count,
              "all_frames_correct": all(frames_correct), "objects": objects, "motion_correct": motion_ok,
              "temporal_consistency": temporal_consistency(found, thresholds)}
    if first_frame is not None:
        result["first_frame_psnr"] = psnr(arrays[0], first_frame)
    return result


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _summary(scores: Sequence[dict]) -> dict:
    summary = {
        "n": len(scores),
        "per_frame_correct": _mean([s["per_frame_correct"] for s in scores]),
        "all_frames_correct": _mean([s["all_frames_correct"] for s in scores]),
        "motion_accuracy": _mean([s["motion_correct"] for s in scores]),
        "object_motion_accuracy": _mean([o["correct"] for s in scores for o in s["objects"]]),
        "temporal_consistency": _mean([s["temporal_consistency"] for s in scores]),
    }
    if scores and all("first_frame_psnr" in s for s in scores):
        values = [s["first_frame_psnr"] for s in scores]
        # The mean and min are math.inf when frame 0 is exact (always, in this engine's
        # image-to-video): "exact" says how many; json_safe writes inf as null.
        summary["first_frame_psnr"] = {"mean": _mean(values), "min": float(min(values))}
        summary["first_frame_exact"] = _mean([v == math.inf for v in values])
    return summary


def aggregate(scores: Sequence[dict], categories: Sequence[str] | None = None) -> dict:
    """Means over clips scored by score_clip: {"n", "per_frame_correct" (mean fraction of frames
    correct), "all_frames_correct", "motion_accuracy" (fraction of clips with every named motion
    right), "object_motion_accuracy" (fraction of named objects), "temporal_consistency",
    ["first_frame_psnr": {"mean", "min"}, "first_frame_exact"], "categories": {category: the
    same}} (categories in first-seen order; omitted without categories)."""
    if not scores:
        raise ValueError("aggregate needs at least one scored clip")
    result = _summary(scores)
    if categories is not None:
        if len(categories) != len(scores):
            raise ValueError(f"{len(scores)} scores but {len(categories)} categories")
        order = list(dict.fromkeys(categories))
        result["categories"] = {c: _summary([s for s, k in zip(scores, categories) if k == c]) for c in order}
    return result


def json_safe(value: Any) -> Any:
    """A result with every inf or nan float as None (JSON has no infinity): a first-frame PSNR
    of null means infinite, i.e. frame 0 is exactly the given frame."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
