"""The `ditkit` command line.

Every user error becomes one line on stderr and exit code 2 (a traceback
only with --debug); nothing is written unless the whole command succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
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


def _int_list(name: str):
    def parse(s: str) -> list[int]:
        try:
            values = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers >= 1, got {s!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers >= 1, got {s!r}")
        return values
    return parse


def _interval(s: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1, got {s!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"--guidance-interval must be LO,HI with 0 <= LO <= HI <= 1, got {s!r}")
    return lo, hi


def _prior_until(s: str) -> float:
    try:
        value = float(s)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--prior-until must be a number in (0, 1], got {s!r}")
    return value


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    from ditkit.core.sampling import SAMPLERS

    p.add_argument("--model", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    p.add_argument("--steps", type=_positive_int("--steps"), help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=_nonneg_float("--guidance"), help="guidance scale (default: the model's)")
    p.add_argument("--apg", action="store_true", help="adaptive projected guidance instead of plain CFG")
    p.add_argument("--guidance-interval", type=_interval, metavar="LO,HI",
                   help="apply guidance only for t in [LO, HI] (t = 1 is noise; default: the model's)")
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default: the model's)")
    p.add_argument("--shift", type=float, help="timestep shift (default: the model's)")
    p.add_argument("--prior-until", type=_prior_until, metavar="T",
                   help="steps with t >= T take the model's pure-noise (t = 1) prediction: the caption's "
                        "mean layout first (default: the model's; 1 = off)")
    p.add_argument("--prior-model", metavar="NAME_OR_DIR",
                   help="the model that makes that prediction: a layout prior trained at t = 1 "
                        "(default: the model's; '' = the model itself)")
    p.add_argument("--size", type=_positive_int("--size"), help="image side in pixels (default: the model's)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, int8 (CPU) or fp16 (GPU)")
    p.add_argument("--cache", help="feature caching: first-block:THRESHOLD, smooth:calibrated or smooth:PATH.json")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (about 40 s to compile)")
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
    g.add_argument("--best-of", type=_positive_int("--best-of"), default=1,
                   help="generate N candidates per image and keep the verifier's best (N times the cost)")
    g.add_argument("--verifier", help="shapes, digits or module:function (default: the model's dataset)")
    _add_sampling_args(g)
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    e = sub.add_parser("eval", help="evaluate a model")
    esub = e.add_subparsers(dest="benchmark", parser_class=_Parser)
    es = esub.add_parser("shapes", help="ShapesEval: GenEval's rules on the shapes world")
    es.add_argument("--per-category", type=_positive_int("--per-category"), default=50)
    es.add_argument("--out-dir", help="save images, grid.png, scores.png, results.json and report.md here")
    es.add_argument("--best-of", type=_int_list("--best-of"),
                    help="inference-time scaling: comma-separated N values, e.g. 1,2,4,8,16")
    es.add_argument("--verifier", default="shapes", help="with --best-of: shapes, digits or module:function")
    _add_sampling_args(es)
    es.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    ed = esub.add_parser("digits", help="the real-data digits benchmark: judge accuracy and FWD")
    ed.add_argument("--per-digit", type=_positive_int("--per-digit"), default=50)
    ed.add_argument("--out-dir", help="save images, plots, results.json and report.md here")
    ed.add_argument("--best-of", type=_int_list("--best-of"), help="comma-separated N values, e.g. 1,2,4,8")
    ed.add_argument("--verifier", default="digits", help="with --best-of: digits or module:function")
    ed.add_argument("--no-fwd", action="store_true", help="skip FWD against the real test split")
    _add_sampling_args(ed)
    ed.set_defaults(model="digits-32")
    ed.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    ef = esub.add_parser("fwd", help="Frechet Wavelet Distance between two image folders, or a model and a folder")
    ef.add_argument("dirs", nargs="*", help="DIR_A DIR_B (image folders or saved .npz statistics)")
    ef.add_argument("--reference", help="with --model: reference image folder or .npz statistics")
    ef.add_argument("--num", type=_positive_int("--num"), default=500, help="with --model: images to generate")
    ef.add_argument("--prompts-file", help="with --model: prompts to cycle through (default: the model's benchmark)")
    ef.add_argument("--level", type=_positive_int("--level"), default=4, help="wavelet packet level (4: 256 packets)")
    ef.add_argument("--save-stats", help="save the statistics of the first set (DIR_A or the model's images) to .npz")
    ef.add_argument("--out-dir", help="save results.json and report.md here")
    _add_sampling_args(ef)
    ef.set_defaults(model=None)
    ef.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    from ditkit.cli.edit import add_edit_parsers, add_eval_edit_parser

    add_eval_edit_parser(esub)
    add_edit_parsers(sub)

    i = sub.add_parser("info", help="describe a model")
    i.add_argument("model", nargs="?", default="shapes-64")
    i.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    cc = sub.add_parser("cache-calibrate", help="calibrate a SmoothCache schedule for a model and step count")
    cc.add_argument("model", nargs="?", default="shapes-64")
    cc.add_argument("--steps", type=_positive_int("--steps"), help="sampling steps (default: the model's)")
    cc.add_argument("--sampler", help="sampler (default: the model's)")
    cc.add_argument("--alpha", type=_nonneg_float("--alpha"), default=0.15,
                    help="reuse a block's residual where it moved less than this (relative L1) at calibration")
    cc.add_argument("--prompts", help="calibration prompts file (default: 8 of the model's benchmark prompts)")
    cc.add_argument("-o", "--output", help="schedule path (default: cache_schedule.json in the model folder)")
    cc.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    an = sub.add_parser("analyze", help="per-block linearity, influence and ablation truth of a DiT")
    an.add_argument("model", help="embedded model name, model folder, or a diffusers transformer folder")
    an.add_argument("--prompts", help="calibration prompts file, one per line (default: the model's benchmark)")
    an.add_argument("--timesteps", type=int, default=8, help="time bins (sampling steps), default 8")
    an.add_argument("--ablation-eval", type=int, default=0, metavar="PER_CATEGORY",
                    help="also measure each block's ShapesEval drop when removed (slow; shapes models)")
    an.add_argument("--no-ablation", action="store_true", help="skip the ablation truth")
    an.add_argument("-o", "--output", required=True, help="output folder")
    an.add_argument("--device", default="cpu")
    an.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    pr = sub.add_parser("prune", help="remove whole blocks, recover with a short distillation, save")
    pr.add_argument("model", help="embedded model name or model folder")
    pr.add_argument("--remove", type=int, metavar="K", help="number of blocks to remove (0 <= K < depth)")
    pr.add_argument("--blocks", metavar="I,J,...", help="remove exactly these block indices (instead of --remove/--by)")
    pr.add_argument("--by", default="influence",
                    help="influence, linearity, ablation (one score per block), or benchmark: a greedy joint screen "
                         "by the model's own benchmark (ShapesEval / digits accuracy) on its tuning seed, before "
                         "recovery, with the stand-ins if --replace-linear (default influence)")
    pr.add_argument("--screen-per-category", type=int, default=10, metavar="N",
                    help="--by benchmark: prompts per benchmark category in each screened set (default 10)")
    pr.add_argument("--replace-linear", action="store_true", help="replace removed blocks by fitted linear maps")
    pr.add_argument("--tune-steps", type=int, default=500, help="recovery fine-tune steps (default 500)")
    pr.add_argument("--prompts", help="calibration prompts file, one per line (default: the model's benchmark)")
    pr.add_argument("--lr", type=float, default=5e-5, help="recovery learning rate (default 5e-5, decayed linearly to 0)")
    pr.add_argument("--constant-lr", action="store_true", help="keep the recovery learning rate constant (no decay)")
    pr.add_argument("--batch-size", type=int, default=16, help="recovery batch size (default 16)")
    pr.add_argument("--feature-weight", type=float, default=None,
                    help="also match each kept block's output to the original's, with this weight (default 0: velocity only)")
    pr.add_argument("--distill-guidance", action="store_true",
                    help="distil the CFG-guided velocity at the model's guidance scale (twice the cost per step)")
    pr.add_argument("--on-trajectory", type=int, default=0, metavar="IMAGES",
                    help="draw half of every recovery batch from the original model's own guided sampling paths "
                         "for this many training captions (default 0: forward-noised data only)")
    pr.add_argument("--trajectory-above", type=float, default=0.0, metavar="T",
                    help="with --on-trajectory, keep only the path states with t >= T (0.8: the layout phase, "
                         "as for the shipped shapes-64-pruned; default 0: all)")
    pr.add_argument("--precision", default="bf16",
                    help="recovery autocast (default bf16; fp32 where the CPU has no native bf16)")
    pr.add_argument("-o", "--output", required=True, help="output model folder (must not exist)")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    cv = sub.add_parser("convert", help="convert a model between ditkit and diffusers (PixArtTransformer2DModel)")
    cv.add_argument("src", help="a ditkit model folder or embedded model name (--to diffusers), "
                               "or a diffusers transformer folder (--to ditkit)")
    cv.add_argument("--to", required=True, choices=("diffusers", "ditkit"), help="the output format")
    cv.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    cv.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

    ds = sub.add_parser("distill", help="distil a model into a few-step student (latent consistency or reflow, guidance built in)")
    ds.add_argument("--teacher", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    ds.add_argument("--config", required=True, help="distillation YAML (a 'distill:' section), e.g. configs/distill-shapes.yaml")
    ds.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. distill.steps=100")
    ds.add_argument("-o", "--output", required=True, help="output model folder (must not exist or be empty)")
    ds.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)

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
    from ditkit.core.checkpoint import atomic_write

    atomic_write(path, image.save)


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
    from ditkit.core.precision import check_precision
    from ditkit.core.sampling import SAMPLERS

    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    check_precision(args.precision, args.device)
    if args.shift is not None and args.shift <= 0:
        raise UserError(f"--shift must be > 0, got {args.shift}")


def _load_pipeline(args):
    from ditkit.api import load

    pipe = load(args.model, device=args.device)
    if getattr(args, "cache", None):
        from ditkit.engine.cache import parse_cache_spec

        parse_cache_spec(args.cache, pipe.source)  # a bad spec or missing schedule fails before any work
    if getattr(args, "compile", False):
        pipe.compile()
    size = args.size if args.size is not None else pipe.defaults.size
    p = pipe.model.config.patch_size
    if size % p or not p <= size <= 1024:
        raise UserError(f"--size {size} must be a multiple of the model's patch size {p}, between {p} and 1024")
    return pipe


def _generation_kwargs(args, pipe=None) -> dict:
    kw = dict(steps=args.steps, guidance=args.guidance, apg=args.apg or None, sampler=args.sampler,
              size=args.size, shift=args.shift, precision=args.precision, seed=args.seed,
              cache=getattr(args, "cache", None), guidance_interval=getattr(args, "guidance_interval", None),
              prior_until=getattr(args, "prior_until", None), prior_model=getattr(args, "prior_model", None))
    if getattr(args, "best_of", 1) != 1 or getattr(args, "verifier", None):
        from ditkit.accel.scaling import default_verifier, get_verifier

        kw["best_of"] = args.best_of
        kw["verifier"] = args.verifier or default_verifier(pipe.config)
        get_verifier(kw["verifier"])
    return kw


# ----------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from ditkit.core.progress import progress_bar

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
        kwargs = _generation_kwargs(args, pipe)
        with progress_bar("generate", len(prompts) * args.num_images * args.best_of) as cb:
            images = pipe.generate(prompts, num_images=args.num_images,
                                   callback=lambda d, n: cb(d // max(1, pipe.sample_config(args.steps).steps), n),
                                   **kwargs)
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
    kwargs = _generation_kwargs(args, pipe)
    steps = pipe.sample_config(args.steps).steps
    with progress_bar("generate", steps * args.num_images * args.best_of) as cb:
        images = pipe.generate(args.prompt, num_images=args.num_images, callback=lambda d, n: cb(d, n), **kwargs)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(len(images))]
    for im, path in zip(images, paths):
        save_image_atomic(im, path)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _check_out_dir(path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out-dir {path!r} is a file")
    if not p.parent.exists():
        raise UserError(f"parent folder of --out-dir {str(p.parent)!r} does not exist")


def _eval_setup(args):
    """Check an eval command's arguments, load its model: (pipeline, sampling settings)."""
    _check_sampling_args(args)
    _check_out_dir(args.out_dir)
    pipe = _load_pipeline(args)
    return pipe, pipe.sample_config(args.steps, args.guidance, args.sampler, args.size, args.shift,
                                    args.apg or None, args.guidance_interval, args.prior_until, args.prior_model)


def cmd_eval_shapes(args) -> int:
    from ditkit.evaluation.evaluate import save_best_of_outputs, save_eval_outputs, shapes_best_of_eval, shapes_eval
    from ditkit.core.guidance import APG
    from ditkit.core.progress import progress_bar

    pipe, sample = _eval_setup(args)
    if args.best_of:
        from ditkit.accel.scaling import get_verifier

        get_verifier(args.verifier)
        n = 4 * args.per_category * sample.steps * max(args.best_of)
        with progress_bar("eval shapes best-of-N", n) as cb:
            result = shapes_best_of_eval(pipe.model, pipe.text_encoder, sample, args.best_of, args.per_category,
                                         args.seed, args.verifier, precision=args.precision, callback=cb)
        if args.out_dir:
            save_best_of_outputs(result, args.out_dir, "ShapesEval against best-of-N", args.command_line)
        print(json.dumps({"model": pipe.source, "seconds_per_image": result["seconds_per_image"],
                          "rows": [{"best_of": r["best_of"], **r["result"]} for r in result["rows"]]}, indent=2))
        return 0
    n = 4 * args.per_category * sample.steps
    with progress_bar("eval shapes", n) as cb:
        from ditkit.engine.cache import parse_cache_spec

        result = shapes_eval(pipe.model, pipe.text_encoder, sample, args.per_category, args.seed,
                             APG() if sample.apg else None, args.precision, callback=cb,
                             return_images=bool(args.out_dir), cache=parse_cache_spec(args.cache, pipe.source))
    if args.out_dir:
        save_eval_outputs(result, args.out_dir, args.command_line)
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts")}
    summary["model"] = pipe.source
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval_digits(args) -> int:
    from ditkit.data import digits
    from ditkit.evaluation.evaluate import best_of_sweep, digits_eval, save_best_of_outputs, save_digits_outputs

    pipe, sample = _eval_setup(args)
    if sample.size != digits.SIZE:
        raise UserError(f"the digits benchmark is at {digits.SIZE}x{digits.SIZE}; got size {sample.size}")
    if args.best_of:
        prompts = digits.benchmark_prompts(args.per_digit)
        result = best_of_sweep(pipe.model, pipe.text_encoder, sample, prompts, args.best_of, args.verifier,
                               digits.digit_accuracy, seed=args.seed, precision=args.precision)
        result["settings"] = {"sampler": sample.sampler, "steps": sample.steps, "guidance": sample.guidance,
                              "per_digit": args.per_digit, "seed": args.seed, "verifier": args.verifier}
        if args.out_dir:
            save_best_of_outputs(result, args.out_dir, "Digit accuracy against best-of-N", args.command_line)
        print(json.dumps({"model": pipe.source, "seconds_per_image": result["seconds_per_image"],
                          "rows": [{"best_of": r["best_of"], "accuracy": r["result"]["accuracy"]} for r in result["rows"]]},
                         indent=2))
        return 0
    result = digits_eval(pipe.model, pipe.text_encoder, sample, args.per_digit, args.seed, args.precision,
                         return_images=True)
    if not args.no_fwd:
        from ditkit.evaluation.fwd import fwd
        import numpy as np

        generated = np.stack([np.asarray(im.convert("RGB")) for im in result["images"]])
        test, train = digits.load_split("test").images, digits.load_split("train").images
        # FWD is biased upwards for small sets, so the real baseline uses as many training
        # images as were generated (a fixed random subset), not all 1,347.
        n = min(len(generated), len(train))
        subset = train[np.random.default_rng(0).choice(len(train), n, replace=False)]
        gen_test, train_test = fwd(generated, test), fwd(subset, test)
        result["fwd"] = {"generated_vs_test": gen_test, "train_vs_test": train_test, "images": n,
                         "ratio": gen_test / train_test if train_test > 0 else float("inf")}
    if args.out_dir:
        save_digits_outputs(result, args.out_dir, args.command_line)
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts", "predicted")}
    summary["model"] = pipe.source
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval_fwd(args) -> int:
    import numpy as np

    from ditkit.evaluation.fwd import FWDStats, fwd_from_statistics, fwd_statistics, load_image_folder

    def stats_of(path: str) -> FWDStats:
        p = Path(path)
        if p.suffix == ".npz":
            if not p.is_file():
                raise UserError(f"statistics file {path!r} does not exist")
            return FWDStats.load(p)
        images = load_image_folder(p)
        images = images[0] if isinstance(images, tuple) else images
        return fwd_statistics(images, level=args.level)

    _check_out_dir(args.out_dir)
    if args.save_stats and not args.save_stats.endswith(".npz"):
        raise UserError(f"--save-stats needs a .npz path, got {args.save_stats!r}")
    if args.model:
        if args.dirs:
            raise UserError("with --model give --reference DIR, not positional folders")
        if not args.reference:
            raise UserError("--model needs --reference DIR (image folder or .npz statistics)")
        _check_sampling_args(args)
        ref = stats_of(args.reference)
        pipe = _load_pipeline(args)
        if args.prompts_file:
            prompts = _read_prompts_file(args.prompts_file)
        else:
            prompts = _benchmark_prompts_for(pipe)
        prompts = [prompts[i % len(prompts)] for i in range(args.num)]
        from ditkit.core.progress import progress_bar

        steps = pipe.sample_config(args.steps).steps
        with progress_bar("generate", args.num * steps) as cb:
            images = pipe.generate(prompts, callback=lambda d, n: cb(d, n), **_generation_kwargs(args, pipe))
        first = fwd_statistics(np.stack([np.asarray(im.convert("RGB")) for im in images]), level=args.level)
        names = (f"{pipe.source} ({args.num} generated)", args.reference)
    else:
        if len(args.dirs) != 2:
            raise UserError("give two image folders (or .npz statistics): ditkit eval fwd DIR_A DIR_B, "
                            "or --model M --reference DIR")
        first, ref = stats_of(args.dirs[0]), stats_of(args.dirs[1])
        names = tuple(args.dirs)
    distance = fwd_from_statistics(first, ref)
    if args.save_stats:
        first.save(args.save_stats)
    result = {"fwd": distance, "a": names[0], "b": names[1], "level": args.level, "n_a": first.n, "n_b": ref.n}
    if args.out_dir:
        from ditkit.core.reports import markdown_table, write_json, write_report

        out = Path(args.out_dir)
        out.mkdir(exist_ok=True)
        write_json(out / "results.json", result)
        write_report(out / "report.md", "Frechet Wavelet Distance", args.command_line, [
            ("Result", markdown_table(["A", "B", "images A", "images B", "level", "FWD"],
                                      [[names[0], names[1], first.n, ref.n, args.level, distance]])),
        ])
    print(json.dumps(result, indent=2))
    return 0


def _benchmark_prompts_for(pipe) -> list[str]:
    dataset = (pipe.config.get("data") or {}).get("dataset")
    if dataset == "digits":
        from ditkit.data import digits

        return digits.benchmark_prompts(1)
    if dataset == "shapes":
        from ditkit.data import shapes

        return [p for _, p in shapes.benchmark_prompts(50, 0)]
    raise UserError("this model has no built-in benchmark prompts; give --prompts-file")


def cmd_info(args) -> int:
    from ditkit.core.checkpoint import read_model_config
    from ditkit.api import load, resolve_model

    folder = resolve_model(args.model)
    pipe = load(folder)
    cfg = read_model_config(folder)
    n = sum(p.numel() for p in pipe.model.parameters())
    print(json.dumps({"source": str(folder), "parameters": n, "config": cfg}, indent=2))
    return 0


def cmd_cache_calibrate(args) -> int:
    from ditkit.api import load
    from ditkit.core.sampling import SAMPLERS

    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if args.output and not args.output.endswith(".json"):
        raise UserError(f"--output needs a .json path, got {args.output!r}")
    prompts = _read_prompts_file(args.prompts) if args.prompts else None
    pipe = load(args.model)
    path = pipe.calibrate_cache(args.steps, args.sampler, args.alpha, prompts, args.output)
    from ditkit.engine.cache import SmoothSchedule

    sched = SmoothSchedule.load(path)
    reused = sum(map(sum, sched.reuse))
    total = sum(map(len, sched.reuse))
    print(json.dumps({"schedule": str(path), "steps": sched.steps, "sampler": sched.sampler, "alpha": sched.alpha,
                      "block_calls_reused": reused, "block_calls": total}, indent=2))
    return 0


def cmd_analyze(args) -> int:
    from ditkit.analysis import linearity as analysis
    from ditkit.core.reports import markdown_table, write_json, write_report

    if args.timesteps < 1:
        raise UserError(f"--timesteps must be >= 1, got {args.timesteps}")
    if args.ablation_eval < 0:
        raise UserError(f"--ablation-eval must be >= 0, got {args.ablation_eval}")
    _check_out_dir(args.output)
    prompts = _read_prompts_file(args.prompts) if args.prompts else None
    out = Path(args.output)
    sections = []
    if analysis.is_diffusers_folder(args.model):
        transformer = analysis.load_diffusers_transformer(args.model)
        result = analysis.analyze_diffusers(transformer, analysis.calibration_inputs(transformer, num_timesteps=args.timesteps))
        ablation = None
    else:
        from ditkit.accel.prune import default_calibration_prompts
        from ditkit.api import load

        pipe = load(args.model, device=args.device)
        data = pipe.config.get("data") or {}
        if prompts is None:
            if data.get("dataset") not in ("shapes", "digits"):
                raise UserError("this model records no dataset; give calibration prompts with --prompts FILE")
            prompts = default_calibration_prompts(data["dataset"])
        result = analysis.analyze_dit(pipe.model, pipe.text_encoder, prompts, args.timesteps, sample=pipe.defaults)
        ablation = None
        if not args.no_ablation:
            if data.get("dataset") not in ("shapes", "digits"):
                raise UserError("ablation truth needs the model's training data; use --no-ablation")
            from ditkit.accel.ablation import ablation_effects, plot_ablation, rank_correlations

            effects = ablation_effects(pipe.model, pipe.text_encoder, data["dataset"], int(data.get("size", 64)),
                                       args.ablation_eval, pipe.defaults)
            costs = {"loss increase": effects["loss"]["increase"]}
            if "shapes" in effects:
                costs["ShapesEval drop"] = effects["shapes"]["drop"]
            ablation = {"effects": effects, "rank_correlations": rank_correlations(result["mean"], costs)}
    out.mkdir(exist_ok=True)
    analysis.save_analysis(result, out)
    means = result["mean"]
    rows = [[i, *[means[s][i] for s in analysis.SCORES]] for i in range(result["blocks"])]
    sections.append(("Per-block scores (mean over time bins)", markdown_table(["block", *analysis.SCORES], rows)
                     + "\n\n![profile](profile.png)"
                     + ("\n\n![linearity over depth and time](heatmap_linearity.png) "
                        "![influence over depth and time](heatmap_influence.png)" if result.get("timesteps") else "")))
    if ablation:
        write_json(out / "ablation.json", ablation)
        costs_table = {"loss increase": ablation["effects"]["loss"]["increase"]}
        if "shapes" in ablation["effects"]:
            costs_table["ShapesEval drop"] = ablation["effects"]["shapes"]["drop"]
        plot_ablation(means, costs_table, out / "ablation.png")
        crow = [[s, *[f"{ablation['rank_correlations'][s][c]['spearman']:+.2f} "
                      f"(p={ablation['rank_correlations'][s][c]['p_value']:.2f})" for c in costs_table]]
                for s in analysis.SCORES]
        sections.append(("Ablation truth", markdown_table(["block", *costs_table],
                                                          [[i, *[v[i] for v in costs_table.values()]]
                                                           for i in range(result["blocks"])])
                         + "\n\nSpearman rank correlation of each score with the measured removal cost "
                           "(influence and norm ratio should correlate positively, linearity negatively):\n\n"
                         + markdown_table(["score", *costs_table], crow) + "\n\n![ablation](ablation.png)"))
    write_report(out / "report.md", f"Block analysis of {args.model}", args.command_line, sections)
    summary = {"output": str(out), "blocks": result["blocks"], "mean": means}
    if ablation:
        summary["rank_correlations"] = ablation["rank_correlations"]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_prune(args) -> int:
    from ditkit.core.progress import progress_bar
    from ditkit.accel.prune import PRUNE_SELECTORS, prune_model

    if args.by not in PRUNE_SELECTORS:
        raise UserError(f"unknown --by {args.by!r}; allowed: {', '.join(PRUNE_SELECTORS)}")
    blocks = None
    if args.blocks is not None:
        try:
            blocks = [int(b) for b in args.blocks.split(",")]
        except ValueError:
            raise UserError(f"--blocks must be comma-separated block indices, e.g. 1,7; got {args.blocks!r}") from None
        if args.remove is not None and args.remove != len(blocks):
            raise UserError(f"--remove {args.remove} does not match the {len(blocks)} blocks of --blocks {args.blocks}")
    elif args.remove is None:
        raise UserError("give --remove K (blocks chosen by --by) or --blocks I,J,...")
    elif args.remove < 0:
        raise UserError(f"--remove must be >= 0, got {args.remove}")
    if args.tune_steps < 0:
        raise UserError(f"--tune-steps must be >= 0, got {args.tune_steps}")
    if args.screen_per_category < 1:
        raise UserError(f"--screen-per-category must be >= 1, got {args.screen_per_category}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.precision not in ("fp32", "bf16"):
        raise UserError(f"unknown --precision {args.precision!r}; allowed: fp32, bf16")
    if args.feature_weight is not None and not args.feature_weight >= 0:
        raise UserError(f"--feature-weight must be >= 0, got {args.feature_weight}")
    recovery = {"lr_decay": False} if args.constant_lr else {}
    if args.feature_weight is not None:
        recovery["feature_weight"] = args.feature_weight
    if args.distill_guidance:
        recovery["guidance"] = "model"
    if args.on_trajectory < 0:
        raise UserError(f"--on-trajectory must be >= 0 (images), got {args.on_trajectory}")
    if not 0.0 <= args.trajectory_above < 1.0:
        raise UserError(f"--trajectory-above must be in [0, 1), got {args.trajectory_above}")
    if args.on_trajectory:
        recovery.update(trajectory_images=args.on_trajectory, trajectory_above=args.trajectory_above)
    out = Path(args.output)
    if out.exists():
        raise UserError(f"output {args.output!r} already exists; choose a new folder")
    if not out.parent.exists():
        raise UserError(f"parent folder of {args.output!r} does not exist")
    prompts = _read_prompts_file(args.prompts) if args.prompts else None
    # Write to a sibling temp folder and rename, so a failure never leaves a partial model.
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    try:
        from ditkit.analysis.linearity import is_diffusers_folder

        # --by benchmark first screens the blocks (one generation benchmark per candidate set):
        # the same bar then counts those evaluations, then the recovery steps.
        label = "benchmark screen, then recovery tune" if args.by == "benchmark" else "recovery tune"
        with progress_bar(label, max(1, args.tune_steps), follow_total=args.by == "benchmark") as cb:
            if is_diffusers_folder(args.model):
                if args.replace_linear or blocks is not None or args.by == "benchmark":
                    raise UserError("--replace-linear, --blocks and --by benchmark are for ditkit models; diffusers "
                                    "blocks are chosen with --remove K --by influence, linearity or ablation")
                from ditkit.accel.prune import prune_diffusers

                summary = prune_diffusers(args.model, args.remove, args.by, args.tune_steps, tmp, callback=cb)
            else:
                summary = prune_model(args.model, args.remove, args.by, args.replace_linear, args.tune_steps, tmp,
                                      prompts=prompts, lr=args.lr, device=args.device, callback=cb,
                                      batch_size=args.batch_size, precision=args.precision, recovery=recovery,
                                      blocks=blocks, screen_callback=cb,
                                      screen_per_category=args.screen_per_category)
        os.replace(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.pop("model")
    summary["out_dir"] = str(out)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_convert(args) -> int:
    from ditkit.interop.diffusers import convert_folder

    if args.to == "diffusers":
        from ditkit.api import resolve_model

        resolve_model(args.src)  # a clear error for an unknown name or folder
    elif not Path(args.src).is_dir():
        raise UserError(f"source {args.src!r} is not a folder")
    out = convert_folder(args.src, args.to, args.output)  # temp folder + rename: no partial output
    print(json.dumps({"source": args.src, "to": args.to, "output": str(out)}))
    return 0


def cmd_distill(args) -> int:
    from ditkit.accel.distill import distill, load_distill_config

    cfg = load_distill_config(args.config, args.set)
    out = Path(args.output)
    if not out.parent.exists():
        raise UserError(f"parent folder of --output {str(out.parent)!r} does not exist")
    print(json.dumps(distill(args.teacher, cfg, out)))
    return 0


def cmd_train(args) -> int:
    from ditkit.core.config import load_config
    from ditkit.training.train import train

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
    args.command_line = "ditkit " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    warnings.formatwarning = lambda msg, cat, *a, **k: f"ditkit: warning: {msg}\n"
    _quiet_libraries()
    handlers = {"generate": cmd_generate, "info": cmd_info, "train": cmd_train, "prune": cmd_prune, "distill": cmd_distill,
                "analyze": cmd_analyze, "cache-calibrate": cmd_cache_calibrate, "convert": cmd_convert}
    try:
        if args.command == "eval":
            from ditkit.cli.edit import cmd_eval_edit

            evals = {"shapes": cmd_eval_shapes, "digits": cmd_eval_digits, "fwd": cmd_eval_fwd, "edit": cmd_eval_edit}
            if args.benchmark not in evals:
                raise UserError("choose a benchmark: ditkit eval shapes|digits|fwd|edit")
            return evals[args.benchmark](args)
        if getattr(args, "edit_task", None):
            from ditkit.cli.edit import cmd_edit_task

            return cmd_edit_task(args)
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
