"""Video files: a clip (a list of PIL frames) to an animated GIF, an MP4 or a folder of PNGs, and back.

GIF through Pillow (always there). MP4 through imageio-ffmpeg, which ships its own ffmpeg binary
(`pip install ditkit[video]`), imported only when an MP4 is written or read; H.264 in yuv420p, the
format every browser and player decodes. yuv420p needs even sides and H.264 encoders want
multiples of 16, so small frames are scaled up by a whole factor with nearest-neighbour pixels
(a 32x32 clip becomes 256x256) and mp4_frames can scale them back. Every file is written
atomically (core.files): a failure never leaves a partial video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ditkit.core.files import atomic_save_image, atomic_write, remove_orphan_temps

VIDEO_SUFFIXES = (".gif", ".mp4")
DEFAULT_FPS = 8
GIF_COMMENT = "ditkit frames="  # + the clip's frame count (see write_video)
MP4_MIN_SIDE = 256  # frames are scaled up by a whole factor to at least this side for MP4


def check_video_output(path: str | Path) -> str:
    """The kind of output a path asks for: "gif", "mp4" or "folder" (an existing folder, or a
    path ending in "/" or without a suffix). Anything else is a ValueError naming what is allowed."""
    text = str(path)
    p = Path(text)
    if p.is_dir() or text.endswith(("/", "\\")):
        return "folder"
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return suffix[1:]
    if suffix == "":
        return "folder"
    raise ValueError(f"video output {text!r}: the suffix must be .gif or .mp4, or the path a folder "
                     f"(for numbered PNG frames), got {suffix!r}")


def check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0.5 <= fps <= 60:
        raise ValueError(f"fps must be a number from 0.5 to 60, got {fps!r}")
    return float(fps)


def write_video(frames: Sequence[Image.Image], path: str | Path, fps: float = DEFAULT_FPS) -> Path:
    """Write a clip to `path`: .gif, .mp4, or a folder (frame_000.png, ...). Returns the path."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    fps = check_fps(fps)
    kind = check_video_output(path)
    path = Path(path)
    if kind == "folder":
        if not path.parent.is_dir():
            raise ValueError(f"cannot write frames into {str(path)!r}: folder {str(path.parent)!r} does not exist")
        path.mkdir(exist_ok=True)
        remove_orphan_temps(path)
        for i, frame in enumerate(frames):
            atomic_save_image(path / f"frame_{i:03d}.png", frame)
        for stale in path.glob("frame_*.png"):  # a longer clip written here before: its extra frames go
            index = stale.stem[len("frame_"):]
            if index.isdigit() and int(index) >= len(frames):
                stale.unlink()
    elif kind == "gif":
        # Pillow stores a run of identical frames once, with the run's summed duration (a still clip
        # becomes one GIF frame); the comment records the frame count so read_video gives them all back
        duration = int(round(1000 / fps))
        comment = f"{GIF_COMMENT}{len(frames)}"
        atomic_write(path, lambda tmp: frames[0].save(tmp, save_all=True, append_images=list(frames[1:]),
                                                       duration=duration, loop=0, optimize=False, disposal=1,
                                                       comment=comment))
    else:
        atomic_write(path, lambda tmp: _write_mp4(frames, tmp, fps))
    return path


def mp4_scale(size: tuple[int, int]) -> int:
    """The whole factor an MP4 scales frames of PIL size (W, H) by (1 when already large enough)."""
    return max(1, -(-MP4_MIN_SIDE // min(size)))


def _write_mp4(frames: Sequence[Image.Image], path: str, fps: float) -> None:
    try:
        import imageio_ffmpeg  # optional: `pip install ditkit[video]`; GIF needs nothing more
    except ImportError:
        raise ValueError("writing MP4 needs imageio-ffmpeg (pip install 'ditkit[video]'); .gif works without it") from None
    k = mp4_scale(frames[0].size)
    w, h = frames[0].size[0] * k, frames[0].size[1] * k
    w, h = w + w % 2, h + h % 2
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=None, output_params=["-crf", "18", "-format", "mp4"],
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)  # start the generator (it then takes frames)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB").resize((w, h), Image.NEAREST))))
    finally:
        writer.close()


def read_video(path: str | Path) -> list[Image.Image]:
    """The frames of a GIF, an MP4 (imageio-ffmpeg) or a folder of frame_NNN.png written by
    write_video, as RGB PIL images (an MP4's frames at their stored, scaled-up size)."""
    path = Path(path)
    if path.is_dir():
        return [Image.open(p).convert("RGB") for p in sorted(path.glob("frame_*.png"))]
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            out, durations = [], []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                out.append(im.convert("RGB"))
                durations.append(im.info.get("duration", 0))
            comment = im.info.get("comment", b"").decode("latin-1")
        return _expand_runs(out, durations, comment)
    if path.suffix.lower() == ".mp4":
        import imageio_ffmpeg  # optional, as in _write_mp4

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        return [Image.frombytes("RGB", (w, h), bytes(buf)) for buf in reader]
    raise ValueError(f"cannot read {str(path)!r}: a video is a .gif, an .mp4 or a folder of frames")


def _expand_runs(frames: list[Image.Image], durations: list[int], comment: str) -> list[Image.Image]:
    """A ditkit GIF's frames with each merged run of identical frames repeated back to its length
    (one frame lasts the total duration over the recorded count; a run, a whole number of them);
    a GIF without ditkit's comment, or whose runs do not add up to the count, comes back as stored."""
    if not comment.startswith(GIF_COMMENT) or not frames or min(durations) <= 0:
        return frames
    count = int(comment[len(GIF_COMMENT):]) if comment[len(GIF_COMMENT):].isdigit() else 0
    if count == len(frames):
        return frames
    # one frame's duration: the total over the count (every run lasts a whole number of frames)
    unit = sum(durations) / count
    runs = [max(1, round(d / unit)) for d in durations]
    if sum(runs) != count:
        return frames
    return [f for f, n in zip(frames, runs) for _ in range(n)]


def mp4_frames(path: str | Path, size: tuple[int, int]) -> list[Image.Image]:
    """An MP4 written by write_video, scaled back to its frames' PIL size (W, H)."""
    return [f.resize(size, Image.BOX) for f in read_video(path)]
