"""The video benchmark (`ditkit eval video`, issue 29 "Evaluation"): moving-shapes captions in
four categories, text-to-video and image-to-video through the engine, scored clip by clip
(ditkit.evaluation.video_scoring), and what a run leaves in its --out-dir.

    result = video_eval(pipe.engine, per_category=25, seed=0, mode="both")
    save_video_outputs(result, "runs/eval-video")

Categories (``VIDEO_CATEGORIES``): "single_move" (one object, the four directions in turn),
"single_still", "single_growing" (one object each) and "two_object" (two objects, any motions,
at most one growing). Text-to-video video j samples from seed + j. Image-to-video animates the
first frame of a ground-truth clip of the same caption (data.video.clip_for_caption with
numpy.random.default_rng([seed, j]), rendered at the model's frame size and length), with the
same seeds; the rendered ground-truth clips are scored too ("ground_truth": the scorer's
ceiling, 1.0 on every measure).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ditkit.core.files import atomic_save_image
from ditkit.core.images import to_pil, to_tensor
from ditkit.core.limits import MAX_BATCH_SIZE, check_int, check_seed
from ditkit.core.reports import markdown_table, write_json, write_report
from ditkit.core.video_io import DEFAULT_FPS, write_video
from ditkit.core.video_model import is_video_model
from ditkit.data.shapes import PALETTE, SHAPE_NAMES
from ditkit.data.video import DIRECTIONS, GROWING, MOTIONS, STILL, clip_for_caption, format_video_caption, render_clip
from ditkit.engine import Engine, ProgressCallback, GenerationRequest
from ditkit.evaluation.outputs import image_grid
from ditkit.evaluation.video_scoring import MotionThresholds, aggregate, json_safe, score_clip

VIDEO_CATEGORIES: tuple[str, ...] = ("single_move", "single_still", "single_growing", "two_object")
MODES: tuple[str, ...] = ("t2v", "i2v", "both")
MODE_KEYS = {"t2v": "text_to_video", "i2v": "image_to_video"}  # the result's section of each mode
GRID_PER_CATEGORY = 4  # videos of each category in a mode's frame grid
_GIF_NAME = re.compile(r"^[0-9]{4,}\.gif$")  # the GIFs save_video_outputs numbers


def _category_captions(category: str) -> list[str]:
    """Every caption of a category, in a fixed order (before the draw shuffles them)."""
    pairs = [(c, s) for c in PALETTE for s in SHAPE_NAMES]
    if category == "single_move":
        # Direction-major per pair, so the draw (which cycles directions) covers all four early.
        return [format_video_caption([(c, s, m)]) for c, s in pairs for m in DIRECTIONS]
    if category == "single_still":
        return [format_video_caption([(c, s, STILL)]) for c, s in pairs]
    if category == "single_growing":
        return [format_video_caption([(c, s, GROWING)]) for c, s in pairs]
    if category == "two_object":
        return [format_video_caption([(*a, ma), (*b, mb)]) for a in pairs for b in pairs if a != b
                for ma in MOTIONS for mb in MOTIONS if not ma == mb == GROWING]
    raise ValueError(f"unknown video category {category!r}; allowed: {VIDEO_CATEGORIES}")


def video_benchmark_prompts(per_category: int, seed: int = 0) -> list[tuple[str, str]]:
    """(category, caption) pairs: per_category of each of VIDEO_CATEGORIES, in that order.

    Captions are distinct until a category runs out (72 single_move, 18 single_still, 18
    single_growing, 10,710 two_object), then a fresh permutation follows. single_move cycles
    the four directions (left, right, up, down), each with a shuffled color and shape, so any
    four consecutive prompts cover every direction. The k-th category draws from
    numpy.random.default_rng([seed, k]): deterministic given seed."""
    per_category = check_int("per_category", per_category, 1)
    seed = check_seed(seed)
    prompts: list[tuple[str, str]] = []
    for k, category in enumerate(VIDEO_CATEGORIES):
        rng = np.random.default_rng([seed, k])
        captions = _category_captions(category)
        if category == "single_move":
            n_dirs = len(DIRECTIONS)
            n_pairs = len(captions) // n_dirs
            for i in range(per_category):
                if i % len(captions) == 0:
                    order = rng.permutation(n_pairs)
                r = i % len(captions)
                prompts.append((category, captions[int(order[r // n_dirs]) * n_dirs + r % n_dirs]))
            continue
        for i in range(per_category):
            if i % len(captions) == 0:
                order = rng.permutation(len(captions))
            prompts.append((category, captions[int(order[i % len(captions)])]))
    return prompts


def reference_clips(captions: Sequence[str], seed: int, size: int, frames: int) -> list[list[Image.Image]]:
    """The ground-truth clip of each caption, rendered: clip j from clip_for_caption(caption j,
    numpy.random.default_rng([seed, j]), size, frames); each clip is F PIL frames (S x S)."""
    return [render_clip(clip_for_caption(c, np.random.default_rng([seed, j]), size, frames))
            for j, c in enumerate(captions)]


def check_video_model(model: torch.nn.Module) -> int:
    """The clip length of a video model; a ValueError naming what to use for anything else."""
    if not is_video_model(model):
        raise ValueError("the video benchmark needs a video model (model.frames > 0), e.g. the embedded "
                         "shapes-video; this is an image model")
    return int(model.config.frames)


def video_eval(engine: Engine, per_category: int = 25, seed: int = 0, mode: str = "both", steps: int | None = None,
               guidance: float | None = None, sampler: str | None = None, shift: float | None = None,
               size: int | None = None, precision: str = "fp32", batch_size: int = 8,
               callback: ProgressCallback | None = None, return_videos: bool = False) -> dict:
    """Generate and score the video benchmark with a video model's engine.

    mode: "t2v" (text-to-video), "i2v" (image-to-video from ground-truth first frames) or "both".
    Sampling settings left None are the model's defaults; clips are the model's length
    (model.config.frames) at the sampling size. batch_size: videos per forward batch (a video
    does not depend on its batch).

    Returns {"settings", "thresholds" (MotionThresholds), "ground_truth" (the scorer on the
    rendered ground-truth clips of the same captions), "text_to_video" and/or "image_to_video"
    (video_scoring.aggregate with "categories", plus "seconds_per_video"), "per_video": one row per
    video (mode, index, category, prompt, seed and its score_clip fields)} (+ "videos": {mode:
    list of clips, each F PIL frames}, "prompts": [(category, caption)], "reference": the
    ground-truth clips, with return_videos). First-frame PSNRs are math.inf where frame 0 is
    exact; video_scoring.json_safe writes them as null.
    """
    frames = check_video_model(engine.model)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    batch_size = check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    pairs = video_benchmark_prompts(per_category, seed)
    categories, prompts = [c for c, _ in pairs], [p for _, p in pairs]
    sample = engine.sample_config(steps, guidance, sampler, size, shift)
    base = replace(GenerationRequest.from_sample(prompts, sample, seed, precision=precision, batch_size=batch_size),
                   frames=frames)
    reference = reference_clips(prompts, seed, sample.size, frames)
    modes = ["t2v", "i2v"] if mode == "both" else [mode]
    requests = {"t2v": base,
                "i2v": replace(base, first_frames=torch.cat([to_tensor(clip[0]) for clip in reference]))}
    for m in modes:  # a bad setting fails before any clip is sampled
        requests[m].check_for(engine.model)
    total = len(modes) * len(prompts) * sample.steps
    result: dict = {
        "settings": {"mode": mode, "per_category": per_category, "seed": seed, "frames": frames,
                     "size": sample.size, "sampler": sample.sampler, "steps": sample.steps,
                     "guidance": sample.guidance, "shift": sample.shift, "precision": precision,
                     "batch_size": batch_size},
        "thresholds": MotionThresholds.for_clip(sample.size, frames).as_dict(),
        "ground_truth": aggregate([score_clip(clip, p) for clip, p in zip(reference, prompts)], categories),
    }
    rows, videos = [], {}
    model = engine.model
    was_training = model.training
    model.eval()
    try:
        for k, m in enumerate(modes):
            offset = k * len(prompts) * sample.steps
            start = time.perf_counter()
            clips = [to_pil(clip) for clip in engine.generate(requests[m], _shifted(callback, offset, total))]
            seconds = time.perf_counter() - start
            firsts = [ref[0] for ref in reference] if m == "i2v" else [None] * len(clips)
            scores = [score_clip(clip, p, first) for clip, p, first in zip(clips, prompts, firsts)]
            result[MODE_KEYS[m]] = {**aggregate(scores, categories), "seconds_per_video": seconds / len(clips)}
            rows += [{"mode": m, "index": j, "category": c, "prompt": p, "seed": seed + j, **s}
                     for j, (c, p, s) in enumerate(zip(categories, prompts, scores))]
            videos[m] = clips
    finally:
        model.train(was_training)
    result["per_video"] = rows
    if return_videos:
        result.update(videos=videos, prompts=pairs, reference=reference)
    return result


def _shifted(callback: ProgressCallback | None, offset: int, total: int) -> ProgressCallback | None:
    """A request's progress reported as part of the whole run (both modes): done + offset of total."""
    if callback is None:
        return None
    return lambda info: callback({**info, "done": info["done"] + offset, "total": total})


def _grid_rows(categories: Sequence[str], per_category: int) -> list[int]:
    """The indices of the first per_category videos of each category."""
    seen: dict[str, int] = {}
    keep = []
    for j, c in enumerate(categories):
        if seen.get(c, 0) < per_category:
            keep.append(j)
            seen[c] = seen.get(c, 0) + 1
    return keep


def frame_grid(clips: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """Clips as one image: a row per clip, a column per frame (gray 2 px gutters)."""
    if not clips:
        raise ValueError("no clips to tile")
    return image_grid([frame for clip in clips for frame in clip], columns=len(clips[0]))


def save_video_outputs(result: dict, out_dir: str | Path, command: str = "", fps: float = DEFAULT_FPS,
                       grid_per_category: int = GRID_PER_CATEGORY) -> None:
    """What a video benchmark run leaves in out_dir (a result of video_eval with return_videos):
    results.json (scores and per-video rows; a first-frame PSNR of null is infinite, frame 0
    exact), {mode}/NNNN.gif (video j of each mode), {mode}_grid.png (the first grid_per_category
    videos of each category, a row per video, a column per frame), ground_truth_grid.png (the
    same captions' ground-truth clips) and report.md. Numbered GIFs an earlier, longer run left in
    {mode}/ are removed, so the folder holds exactly this run's videos. Every file is written
    atomically."""
    if "videos" not in result:
        raise ValueError("save_video_outputs needs video_eval(..., return_videos=True)")
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    categories = [c for c, _ in result["prompts"]]
    keep = _grid_rows(categories, grid_per_category)
    rows = []
    for m, clips in result["videos"].items():
        folder = out / m
        folder.mkdir(exist_ok=True)
        for j, clip in enumerate(clips):
            write_video(clip, folder / f"{j:04d}.gif", fps)
        for stale in folder.iterdir():
            if _GIF_NAME.match(stale.name) and int(stale.stem) >= len(clips) and stale.is_file():
                stale.unlink()
        atomic_save_image(out / f"{m}_grid.png", frame_grid([clips[j] for j in keep]))
    atomic_save_image(out / "ground_truth_grid.png", frame_grid([result["reference"][j] for j in keep]))
    for row in result["per_video"]:
        rows.append({**row, "gif": f"{row['mode']}/{row['index']:04d}.gif"})
    summary = {k: v for k, v in result.items() if k not in ("videos", "prompts", "reference", "per_video")}
    write_json(out / "results.json", json_safe({**summary, "per_video": rows}))
    write_report(out / "report.md", "Video benchmark", command or "ditkit eval video", [
        ("Scores", summary_table(result, markdown=True)),
        ("Frames", "\n\n".join(f"{MODE_KEYS[m]} (a row per video, the first {grid_per_category} of each category; "
                               f"GIFs in {m}/): ![{m}]({m}_grid.png)" for m in result["videos"])
         + "\n\nGround truth of the same captions: ![ground truth](ground_truth_grid.png)"),
        ("Thresholds", "```json\n" + _json_block(result["thresholds"]) + "\n```"),
        ("Settings", "```json\n" + _json_block(result["settings"]) + "\n```"),
    ])


def _json_block(data: dict) -> str:
    return json.dumps(data, indent=2)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else f"{value:.{digits}f}"


def summary_table(result: dict, markdown: bool = False) -> str:
    """A short table of a video_eval result: a row per mode and category (and the ground truth's overall row),
    columns per-frame correctness, motion accuracy, temporal consistency and first-frame PSNR
    (min, dB; "inf" when every frame 0 is exact)."""
    header = ["mode", "category", "n", "per-frame", "motion", "consistency", "frame-0 PSNR min"]
    table = []
    for key in ("text_to_video", "image_to_video", "ground_truth"):
        if key not in result:
            continue
        section = result[key]
        parts = [("all", section)] + ([] if key == "ground_truth" else list(section.get("categories", {}).items()))
        for name, part in parts:
            psnr = part.get("first_frame_psnr", {}).get("min")
            table.append([key, name, str(part["n"]), _fmt(part["per_frame_correct"]), _fmt(part["motion_accuracy"]),
                          _fmt(part["temporal_consistency"]), _fmt(psnr, 1)])
    if markdown:
        return markdown_table(header, table)
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *table])
