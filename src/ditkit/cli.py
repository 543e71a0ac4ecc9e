"""The `ditkit` command line.

Every user error becomes one line on stderr and exit code 2 (a traceback
only with --debug); nothing is written unless the whole command succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UserError(ValueError):
    """A problem with what the user asked for."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"ditkit: error: {message}\n")


def _positive_int(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _nonneg_float(name: str):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {v}")
        return v
    return parse


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    from .sampling import SAMPLERS

    p.add_argument("--model", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    p.add_argument("--steps", type=_positive_int("--steps"), help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=_nonneg_float("--guidance"), help="guidance scale (default: the model's)")
    p.add_argument("--apg", action="store_true", help="adaptive projected guidance instead of plain CFG")
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default: the model's)")
    p.add_argument("--shift", type=float, help="timestep shift (default: the model's)")
    p.add_argument("--size", type=_positive_int("--size"), help="image side in pixels (default: the model's)")
    p.add_argument("--precision", default="fp32", help="fp32 or bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ditkit", description="Train, sample and evaluate diffusion transformers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    g = sub.add_parser("generate", help="text-to-image")
    g.add_argument("prompt", nargs="?", help="the prompt ('' = unconditional)")
    g.add_argument("-o", "--output", help="output image path (.png, .jpg, ...)")
    g.add_argument("--prompts-file", help="one prompt per line; writes OUT_DIR/0000.png, 0001.png, ...")
    g.add_argument("--out-dir", help="output folder for --prompts-file")
    g.add_argument("--num-images", type=_positive_int("--num-images"), default=1,
                   help="images per prompt; with -o, files get _0, _1, ... suffixes")
    _add_sampling_args(g)
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    e = sub.add_parser("eval", help="evaluate a model")
    esub = e.add_subparsers(dest="benchmark", parser_class=_Parser)
    es = esub.add_parser("shapes", help="ShapesEval: GenEval's rules on the shapes world")
    es.add_argument("--per-category", type=_positive_int("--per-category"), default=50)
    es.add_argument("--out-dir", help="save images, grid.png and results.json here")
    _add_sampling_args(es)
    es.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    i = sub.add_parser("info", help="describe a model")
    i.add_argument("model", nargs="?", default="shapes-64")
    i.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4")
    t.add_argument("--resume", action="store_true", help="continue the run in train.output_dir")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _check_output_file(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"output {path!r} needs an image extension: {', '.join(IMAGE_SUFFIXES)}")
    if not out.parent.exists() if str(out.parent) else False:
        raise UserError(f"output folder {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise UserError(f"output {path!r} is a folder, expected a file path")
    return out


def save_image_atomic(image, path: Path) -> None:
    """Save next to the target then rename, so a failure never leaves a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_prompts_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompts file {path!r} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"prompts file {path!r} is unreadable: {e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {path!r} has no prompts (blank lines are skipped)")
    return prompts


def _check_sampling_args(args) -> None:
    from .config import PRECISIONS
    from .sampling import SAMPLERS

    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if args.precision not in PRECISIONS:
        raise UserError(f"unknown precision {args.precision!r}; allowed: {', '.join(PRECISIONS)}")
    if args.shift is not None and args.shift <= 0:
        raise UserError(f"--shift must be > 0, got {args.shift}")


def _load_pipeline(args):
    from .pipeline import load

    pipe = load(args.model, device=args.device)
    size = args.size if args.size is not None else pipe.defaults.size
    p = pipe.model.config.patch_size
    if size % p or not p <= size <= 1024:
        raise UserError(f"--size {size} must be a multiple of the model's patch size {p}, between {p} and 1024")
    return pipe


def _generation_kwargs(args) -> dict:
    return dict(steps=args.steps, guidance=args.guidance, apg=args.apg or None, sampler=args.sampler,
                size=args.size, shift=args.shift, precision=args.precision, seed=args.seed)


# ----------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from .progress import progress_bar

    _check_sampling_args(args)
    if args.prompts_file:
        if args.prompt is not None:
            raise UserError("give either a PROMPT or --prompts-file, not both")
        if not args.out_dir:
            raise UserError("--prompts-file needs --out-dir")
        out_dir = Path(args.out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--out-dir {args.out_dir!r} is a file")
        if not out_dir.parent.exists():
            raise UserError(f"parent folder of --out-dir {str(out_dir.parent)!r} does not exist")
        prompts = _read_prompts_file(args.prompts_file)
        pipe = _load_pipeline(args)
        with progress_bar("generate", len(prompts) * args.num_images) as cb:
            images = pipe.generate(prompts, num_images=args.num_images,
                                   callback=lambda d, n: cb(d // max(1, pipe.sample_config(args.steps).steps), n),
                                   **_generation_kwargs(args))
        out_dir.mkdir(exist_ok=True)
        for k, im in enumerate(images):
            save_image_atomic(im, out_dir / f"{k:04d}.png")
        print(f"wrote {len(images)} images to {out_dir}")
        return 0
    if args.prompt is None:
        raise UserError("give a PROMPT (use '' for unconditional) or --prompts-file")
    if not args.output:
        raise UserError("give an output path with -o OUT.png")
    out = _check_output_file(args.output)
    pipe = _load_pipeline(args)
    steps = pipe.sample_config(args.steps).steps
    with progress_bar("generate", steps * args.num_images) as cb:
        images = pipe.generate(args.prompt, num_images=args.num_images, callback=lambda d, n: cb(d, n),
                               **_generation_kwargs(args))
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(len(images))]
    for im, path in zip(images, paths):
        save_image_atomic(im, path)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_eval_shapes(args) -> int:
    from .evaluate import save_eval_outputs, shapes_eval
    from .guidance import APG
    from .progress import progress_bar

    _check_sampling_args(args)
    if args.out_dir and not Path(args.out_dir).parent.exists():
        raise UserError(f"parent folder of --out-dir {str(Path(args.out_dir).parent)!r} does not exist")
    pipe = _load_pipeline(args)
    sample = pipe.sample_config(args.steps, args.guidance, args.sampler, args.size, args.shift, args.apg or None)
    n = 4 * args.per_category * sample.steps
    with progress_bar("eval shapes", n) as cb:
        result = shapes_eval(pipe.model, pipe.text_encoder, sample, args.per_category, args.seed,
                             APG() if sample.apg else None, args.precision, callback=cb,
                             return_images=bool(args.out_dir))
    if args.out_dir:
        save_eval_outputs(result, args.out_dir)
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts")}
    summary["model"] = pipe.source
    print(json.dumps(summary, indent=2))
    return 0


def cmd_info(args) -> int:
    from .checkpoint import read_model_config
    from .pipeline import load, resolve_model

    folder = resolve_model(args.model)
    pipe = load(folder)
    cfg = read_model_config(folder)
    n = sum(p.numel() for p in pipe.model.parameters())
    print(json.dumps({"source": str(folder), "parameters": n, "config": cfg}, indent=2))
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.set)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({**result, "output_dir": cfg.train.output_dir, "model": str(Path(cfg.train.output_dir) / "model")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own errors (exit 2) and --help (exit 0)
        return int(e.code or 0)
    debug = getattr(args, "debug", False)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    warnings.formatwarning = lambda msg, cat, *a, **k: f"ditkit: warning: {msg}\n"
    _quiet_libraries()
    handlers = {"generate": cmd_generate, "info": cmd_info, "train": cmd_train}
    try:
        if args.command == "eval":
            if args.benchmark != "shapes":
                raise UserError("choose a benchmark: ditkit eval shapes")
            return cmd_eval_shapes(args)
        return handlers[args.command](args)
    except (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, OSError) as e:
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ditkit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ditkit: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """transformers prints a weight-loading bar and hub hints; ditkit has its own progress."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
