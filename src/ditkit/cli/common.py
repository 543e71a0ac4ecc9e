"""What every `ditkit` verb shares: the parser class, argument types, the sampling flags,
output checks, atomic image saving, model loading and the error rule.

Every user error becomes one line on stderr and exit code 2 (a traceback only with
--debug); nothing is written unless the whole command succeeds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ditkit.accel.scaling import default_verifier, get_verifier
from ditkit.api import Pipeline, load
from ditkit.core.files import atomic_save_image, remove_orphan_temps
from ditkit.core.precision import check_precision
from ditkit.core.sampling import SAMPLER_NAMES
from ditkit.engine.cache import parse_cache_spec
from ditkit.interop.engines import ENGINES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UserError(ValueError):
    """A problem with what the user asked for."""


class CliParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"ditkit: error: {message}\n")


# ----------------------------------------------------------------------------
# argument types
# ----------------------------------------------------------------------------

def positive_int(name: str) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def nonneg_float(name: str) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}") from None
        if not math.isfinite(v) or v < 0:  # nan and inf parse as floats but sample black images
            raise argparse.ArgumentTypeError(f"{name} must be >= 0 (a finite number), got {s!r}")
        return v
    return parse


def int_list(name: str) -> Callable[[str], list[int]]:
    def parse(s: str) -> list[int]:
        try:
            values = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers >= 1, got {s!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers >= 1, got {s!r}")
        return values
    return parse


def interval(s: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1, got {s!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1, got {s!r}")
    return lo, hi


def prior_until(s: str) -> float:
    try:
        value = float(s)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--prior-until must be a number in (0, 1], got {s!r}")
    return value


def add_debug(p: argparse.ArgumentParser) -> None:
    """--debug after the verb too (the top-level flag stays unless given here)."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


ENGINE_HELP = ("what runs the model: torch (default for model folders), onnxruntime or openvino (CPU; a model "
               "folder is exported on load; an exported folder from `ditkit export` uses its own engine by default)")


def add_engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, help=ENGINE_HELP)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    p.add_argument("--steps", type=positive_int("--steps"), help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=nonneg_float("--guidance"), help="guidance scale (default: the model's)")
    p.add_argument("--apg", action="store_true", help="adaptive projected guidance instead of plain CFG")
    p.add_argument("--guidance-interval", type=interval, metavar="LO,HI",
                   help="apply guidance only for t in [LO, HI] (t = 1 is noise; default: the model's)")
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLER_NAMES)} (default: the model's)")
    p.add_argument("--shift", type=float, help="timestep shift (default: the model's)")
    p.add_argument("--prior-until", type=prior_until, metavar="T",
                   help="steps with t >= T take the model's pure-noise (t = 1) prediction: the caption's "
                        "mean layout first (default: the model's; 1 = off)")
    p.add_argument("--prior-model", metavar="NAME_OR_DIR",
                   help="the model that makes that prediction: a layout prior trained at t = 1 "
                        "(default: the model's; '' = the model itself)")
    p.add_argument("--size", type=positive_int("--size"), help="image side in pixels (default: the model's)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, int8 (CPU) or fp16 (GPU)")
    p.add_argument("--cache", help="feature caching: first-block:THRESHOLD, smooth:calibrated or smooth:PATH.json")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (about 40 s to compile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_engine_arg(p)


def add_video_sampling_args(p: argparse.ArgumentParser, model_help: str) -> None:
    """The sampling flags of the video verbs (`ditkit video`, `ditkit eval video`): a video model
    takes none of the image-only ones (APG, guidance interval, prior, cache, compile)."""
    p.add_argument("--model", default="shapes-video", help=model_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int("--steps"), help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=nonneg_float("--guidance"), help="guidance scale (default: the model's)")
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLER_NAMES)} (default: the model's)")
    p.add_argument("--shift", type=float, help="timestep shift (default: the model's)")
    p.add_argument("--size", type=positive_int("--size"), help="frame side in pixels (default: the model's)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, int8 (CPU) or fp16 (GPU)")
    p.add_argument("--device", default="cpu")


# ----------------------------------------------------------------------------
# checks and files
# ----------------------------------------------------------------------------

def check_output_file(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"output {path!r} needs an image extension: {', '.join(IMAGE_SUFFIXES)}")
    if not out.parent.exists() if str(out.parent) else False:
        raise UserError(f"output folder {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise UserError(f"output {path!r} is a folder, expected a file path")
    return out


def check_out_dir(path: str | None, flag: str = "--out-dir") -> None:
    """An output folder (created later if missing) given with `flag`: not a file, its parent there."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path!r} is a file; it must be a folder")
    if not p.parent.exists():
        raise UserError(f"parent folder of {flag} {str(p.parent)!r} does not exist")


def check_sampler(name: str | None) -> None:
    if name is not None and name not in SAMPLER_NAMES:
        raise UserError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLER_NAMES)}")


def check_sampling_args(args) -> None:
    check_sampler(args.sampler)
    check_precision(args.precision, args.device)
    if args.shift is not None and args.shift <= 0:
        raise UserError(f"--shift must be > 0, got {args.shift}")


def save_image_atomic(image, path: Path) -> None:
    """Save next to the target then rename, so a failure never leaves a partial file."""
    atomic_save_image(path, image)


def clean_out_dir(path: str | Path, subfolders: Sequence[str] = ()) -> None:
    """On start: remove the temporary files a killed earlier run left in an output folder
    (only ditkit's own, see core.files.remove_orphan_temps), there and in `subfolders`."""
    for folder in (Path(path), *(Path(path) / s for s in subfolders)):
        remove_orphan_temps(folder)


def save_numbered(images: list, out: Path) -> list[Path]:
    """Save images at OUT (one image) or OUT_0, OUT_1, ... (several); returns the paths."""
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(len(images))]
    for im, path in zip(images, paths):
        save_image_atomic(im, path)
    return paths


class PromptsFile:
    """A prompts file read lazily: one prompt per non-blank line, stripped. Opening it reads the
    file once, a line at a time, to check it (UTF-8, at least one prompt) and count the prompts,
    so a bad file fails before any work and a long one never sits in memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"prompts file {str(path)!r} is a folder; give a text file with one prompt per line")
        if not self.path.is_file():
            raise UserError(f"prompts file {str(path)!r} does not exist")
        try:
            self.count = sum(1 for _ in self)
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"prompts file {str(path)!r} is unreadable: {e}") from None
        if not self.count:
            raise UserError(f"prompts file {str(path)!r} has no prompts (blank lines are skipped)")

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                # str.splitlines also breaks at \v, \f, \x1c-\x1e, \x85, \u2028, \u2029: split each
                # line again so the prompts are exactly those of read_text().splitlines()
                for part in line.splitlines():
                    if part.strip():
                        yield part.strip()


def read_prompts_file(path: str) -> list[str]:
    return list(PromptsFile(path))


# ----------------------------------------------------------------------------
# the model and its settings
# ----------------------------------------------------------------------------

def load_pipeline(args) -> Pipeline:
    pipe = load(args.model, device=args.device, engine=getattr(args, "engine", None))
    if getattr(args, "cache", None):
        parse_cache_spec(args.cache, pipe.source)  # a bad spec or missing schedule fails before any work
    if getattr(args, "compile", False):
        pipe.compile()
    size = args.size if args.size is not None else pipe.defaults.size
    p = pipe.model.config.patch_size
    if size % p or not p <= size <= 1024:
        raise UserError(f"--size {size} must be a multiple of the model's patch size {p}, between {p} and 1024")
    return pipe


def generation_kwargs(args, pipe: Pipeline | None = None) -> dict:
    """Pipeline.generate's keyword arguments from the sampling flags (and --best-of, --verifier)."""
    kw = dict(steps=args.steps, guidance=args.guidance, apg=args.apg or None, sampler=args.sampler,
              size=args.size, shift=args.shift, precision=args.precision, seed=args.seed,
              cache=getattr(args, "cache", None), guidance_interval=getattr(args, "guidance_interval", None),
              prior_until=getattr(args, "prior_until", None), prior_model=getattr(args, "prior_model", None))
    if getattr(args, "best_of", 1) != 1 or getattr(args, "verifier", None):
        kw["best_of"] = args.best_of
        kw["verifier"] = args.verifier or default_verifier(pipe.config)
        get_verifier(kw["verifier"])
    return kw


# ----------------------------------------------------------------------------
# running a verb
# ----------------------------------------------------------------------------

def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace, debug: bool) -> int:
    """Run a verb under the CLI's error rule: a user error is one line on stderr and exit 2
    (the traceback with --debug); Ctrl-C is exit 130."""
    warnings.formatwarning = lambda msg, cat, *a, **k: f"ditkit: warning: {msg}\n"
    quiet_libraries()
    try:
        return handler(args)
    except (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, OSError) as e:
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ditkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ditkit: interrupted", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    """transformers prints a weight-loading bar and hub hints, diffusers config and deprecation
    notes (through `analyze` and `convert`); ditkit has its own progress and errors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when diffusers is first imported
    if "diffusers" in sys.modules:  # already imported (a Python caller of main): set it directly
        sys.modules["diffusers"].utils.logging.set_verbosity_error()
    try:
        from transformers.utils import logging as hf_logging  # optional heavy dependency: only quieted if present

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass
