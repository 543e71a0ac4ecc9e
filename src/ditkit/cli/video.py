"""`ditkit video`: text-to-video and image-to-video with a video model (docs/video.md).

    ditkit video "a red circle moving to the right" -o clip.gif
    ditkit video "a red circle moving to the right" -o clip.mp4 --image first.png
    ditkit video "a red circle moving to the right" -o frames/ --image-model shapes-64

Everything goes through the Python API (`ditkit.load`, `Pipeline.generate_video`); the clip is
written by core.video_io.write_video: an animated GIF (Pillow), an MP4 (imageio-ffmpeg) or a
folder of frame_000.png, frame_001.png, ... Every check that needs no model (the output path,
the flags, the conditioning image) runs before the model is loaded, so bad input fails at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

from ditkit.api import resolve_model
from ditkit.cli.common import (UserError, add_debug, add_video_sampling_args, check_out_dir, check_sampling_args,
                               load_pipeline)
from ditkit.core.images import load_image
from ditkit.core.limits import MAX_FRAMES, check_int, check_seed
from ditkit.core.progress import progress_bar, progress_callback
from ditkit.core.video_io import DEFAULT_FPS, check_fps, check_video_output, mp4_scale, write_video

DEFAULT_MODEL = "shapes-video"
FRAME_FILE = re.compile(r"^frame_[0-9]{3,}\.png$")  # the names write_video gives a folder's frames


def add_parsers(sub) -> None:
    v = sub.add_parser("video", help="text-to-video or image-to-video (GIF, MP4 or a folder of PNG frames)")
    v.add_argument("prompt", help="what happens, e.g. 'a red circle moving to the right' ('' = unconditional)")
    v.add_argument("-o", "--output", required=True,
                   help="OUT.gif, OUT.mp4 (needs imageio-ffmpeg: pip install 'ditkit[video]') or a folder "
                        "(OUT/ or a path without a suffix: frame_000.png, frame_001.png, ...)")
    add_video_sampling_args(v, f"video model: embedded name or model folder (default {DEFAULT_MODEL})")
    v.add_argument("--frames", type=frames_arg, help=f"frames of the clip, 1 to {MAX_FRAMES} (default: the model's)")
    first = v.add_mutually_exclusive_group()
    first.add_argument("--image", metavar="FIRST.png",
                       help="image-to-video: this image (resized to the frame size) is frame 0, exactly")
    first.add_argument("--image-model", metavar="NAME_OR_DIR",
                       help="text -> image -> video: this image model (e.g. shapes-64) draws frame 0 from the "
                            "prompt with its motions left out, then the video model animates it")
    v.add_argument("--fps", type=fps_arg, default=float(DEFAULT_FPS),
                   help=f"frames per second of a GIF or MP4, 0.5 to 60 (default {DEFAULT_FPS})")
    v.add_argument("--overwrite", action="store_true",
                   help="let a folder output hold the frames (frame_NNN.png) of an earlier clip: they are removed "
                        "once the new clip is sampled")
    add_debug(v)
    v.set_defaults(handler=cmd_video)


def frames_arg(text: str) -> int:
    try:
        return check_int("--frames", int(text), 1, MAX_FRAMES)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames must be an integer from 1 to {MAX_FRAMES}, got {text!r}") from None


def fps_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fps must be a number, got {text!r}") from None
    try:
        return check_fps(value)  # the range is video_io's (it refuses nan and inf too)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--{e}") from None


def cmd_video(args: argparse.Namespace) -> int:
    out, kind = check_video_path(args.output, args.overwrite)
    check_sampling_args(args)
    check_seed(args.seed)
    # the conditioning image is decoded now, not after the model has loaded: a missing or broken
    # file fails at once (and is read once)
    image = load_image(args.image, "--image") if args.image else None
    if args.image_model:
        resolve_model(args.image_model)  # an unknown name fails before any model is loaded
    pipe = load_pipeline(args)  # also checks --size against the model's patch size
    steps = pipe.sample_config(args.steps).steps
    with progress_bar("video", steps) as bar:
        clip = pipe.generate_video(args.prompt, frames=args.frames, image=image, image_model=args.image_model,
                                   steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=args.seed,
                                   size=args.size, shift=args.shift, precision=args.precision,
                                   callback=progress_callback(bar))[0]
    if kind == "folder":
        for old in frame_files(out):  # only with --overwrite (check_video_path): an earlier clip's frames
            old.unlink()
    write_video(clip, out, args.fps)
    w, h = clip[0].size
    if kind == "folder":
        print(f"wrote {len(clip)} frames to {out}, {w}x{h}")
    else:  # an MP4 stores small frames scaled up by a whole factor (video_io.mp4_scale)
        k = mp4_scale((w, h)) if kind == "mp4" else 1
        stored = f" (stored at {w * k}x{h * k})" if k > 1 else ""
        print(f"wrote {out} ({len(clip)} frames at {args.fps:g} fps), {w}x{h}{stored}")
    return 0


def check_video_path(path: str, overwrite: bool = False) -> tuple[Path, str]:
    """The output path and its kind ("gif", "mp4" or "folder"), checked before any work: a known
    suffix, an existing parent folder, an MP4 writer installed, and a folder that holds no
    earlier clip's frames (a shorter clip would leave them mixed in) unless overwrite."""
    try:
        kind = check_video_output(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = Path(path)
    if kind == "folder":
        check_out_dir(path, "-o")
        old = frame_files(out)
        if old and not overwrite:
            raise UserError(f"-o {path!r} already holds {len(old)} frames ({old[0].name} ...) of an earlier clip; "
                            "give --overwrite to replace them, or choose another folder")
        return out, kind
    if not out.parent.exists():
        raise UserError(f"output folder {str(out.parent)!r} does not exist")
    if kind == "mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise UserError("writing MP4 needs imageio-ffmpeg (pip install 'ditkit[video]'); .gif works without it")
    return out, kind


def frame_files(folder: Path) -> list[Path]:
    """The frames write_video writes into a folder (frame_000.png, ...), sorted; nothing else."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if FRAME_FILE.match(p.name) and p.is_file())
