"""The moving-shapes world: short captioned clips built on the shapes world (ditkit.data.shapes).

Every frame is a shapes-world image (palette, shapes, sizes, gap and border rules); each of the
1 or 2 objects of a clip moves left, right, up or down, stands still or grows. The contract is
docs/shapes-world.md, "Moving shapes (video)".

Parts:
- world.py: motions, ``MovingObject`` / ``Clip``, per-frame rules, ``render_clip``;
- captions.py: ``format_video_caption`` and its inverse ``parse_video_caption``;
- clips.py: the generator, ``sample_clip`` / ``clip_for_caption``, and ``make_video_batch``
  (depends only on (seed, step)).
"""

from __future__ import annotations

from ditkit.data.video.captions import format_video_caption, object_phrase, parse_video_caption, still_caption
from ditkit.data.video.clips import clip_for_caption, clips_tensor, make_video_batch, sample_clip
from ditkit.data.video.world import (DEFAULT_FRAMES, DEFAULT_SIZE, DIRECTIONS, GROWING, MAX_OBJECTS, MIN_CHANGE,
                                     MOTIONS, STILL, Clip, MovingObject, check_frames, frame_ok, min_growth,
                                     min_speed, render_clip, trajectory)

__all__ = [
    "MOTIONS", "DIRECTIONS", "STILL", "GROWING", "DEFAULT_SIZE", "DEFAULT_FRAMES", "MAX_OBJECTS", "MIN_CHANGE",
    "MovingObject", "Clip", "check_frames", "frame_ok", "min_speed", "min_growth", "trajectory", "render_clip",
    "object_phrase", "format_video_caption", "parse_video_caption", "still_caption",
    "sample_clip", "clip_for_caption", "make_video_batch", "clips_tensor",
]
