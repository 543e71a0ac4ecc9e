"""Model surgery and inspection verbs: `ditkit analyze` (per-block linearity, influence and
ablation truth), `prune`, `convert` (ditkit <-> diffusers) and `cache-calibrate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditkit.accel.prune import PRUNE_SELECTORS, prune_diffusers, prune_model
from ditkit.analysis.report import analyze_model
from ditkit.api import load, resolve_model
from ditkit.cli.common import (UserError, add_debug, check_out_dir, check_sampler, nonneg_float, positive_int,
                               read_prompts_file)
from ditkit.core.files import atomic_folder
from ditkit.core.progress import progress_bar
from ditkit.engine.cache import SmoothSchedule
from ditkit.interop.diffusers import convert_folder
from ditkit.interop.diffusers_folder import is_diffusers_folder


def add_parsers(sub) -> None:
    cc = sub.add_parser("cache-calibrate", help="calibrate a SmoothCache schedule for a model and step count")
    cc.add_argument("model", nargs="?", default="shapes-64")
    cc.add_argument("--steps", type=positive_int("--steps"), help="sampling steps (default: the model's)")
    cc.add_argument("--sampler", help="sampler (default: the model's)")
    cc.add_argument("--alpha", type=nonneg_float("--alpha"), default=0.15,
                    help="reuse a block's residual where it moved less than this (relative L1) at calibration")
    cc.add_argument("--prompts", help="calibration prompts file (default: 8 of the model's benchmark prompts)")
    cc.add_argument("-o", "--output", help="schedule path (default: cache_schedule.json in the model folder)")
    add_debug(cc)
    cc.set_defaults(handler=cmd_cache_calibrate)

    an = sub.add_parser("analyze", help="per-block linearity, influence and ablation truth of a DiT")
    an.add_argument("model", help="embedded model name, model folder, or a diffusers transformer folder")
    an.add_argument("--prompts", help="calibration prompts file, one per line (default: the model's benchmark)")
    an.add_argument("--timesteps", type=int, default=8, help="time bins (sampling steps), default 8")
    an.add_argument("--ablation-eval", type=int, default=0, metavar="PER_CATEGORY",
                    help="also measure each block's ShapesEval drop when removed (slow; shapes models)")
    an.add_argument("--no-ablation", action="store_true", help="skip the ablation truth")
    an.add_argument("-o", "--output", required=True, help="output folder")
    an.add_argument("--device", default="cpu")
    add_debug(an)
    an.set_defaults(handler=cmd_analyze)

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
    add_debug(pr)
    pr.set_defaults(handler=cmd_prune)

    cv = sub.add_parser("convert", help="convert a model between ditkit and diffusers (PixArtTransformer2DModel)")
    cv.add_argument("src", help="a ditkit model folder or embedded model name (--to diffusers), "
                               "or a diffusers transformer folder (--to ditkit)")
    cv.add_argument("--to", required=True, choices=("diffusers", "ditkit"), help="the output format")
    cv.add_argument("-o", "--output", required=True, help="output folder (must not exist)")
    add_debug(cv)
    cv.set_defaults(handler=cmd_convert)


def cmd_cache_calibrate(args: argparse.Namespace) -> int:
    check_sampler(args.sampler)
    if args.output and not args.output.endswith(".json"):
        raise UserError(f"--output needs a .json path, got {args.output!r}")
    if args.output and not Path(args.output).parent.is_dir():  # before the calibration work, not after it
        raise UserError(f"parent folder of -o/--output {str(Path(args.output).parent)!r} does not exist")
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    pipe = load(args.model)
    path = pipe.calibrate_cache(args.steps, args.sampler, args.alpha, prompts, args.output)
    sched = SmoothSchedule.load(path)
    reused = sum(map(sum, sched.reuse))
    total = sum(map(len, sched.reuse))
    print(json.dumps({"schedule": str(path), "steps": sched.steps, "sampler": sched.sampler, "alpha": sched.alpha,
                      "block_calls_reused": reused, "block_calls": total}, indent=2))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.timesteps < 1:
        raise UserError(f"--timesteps must be >= 1, got {args.timesteps}")
    if args.ablation_eval < 0:
        raise UserError(f"--ablation-eval must be >= 0, got {args.ablation_eval}")
    check_out_dir(args.output, flag="-o/--output")
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    summary = analyze_model(args.model, args.output, prompts, args.timesteps, ablation=not args.no_ablation,
                            ablation_eval=args.ablation_eval, device=args.device, command=args.command_line)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
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
    prompts = read_prompts_file(args.prompts) if args.prompts else None
    # Built in a sibling temp folder and renamed, so a failure never leaves a partial model.
    with atomic_folder(out) as tmp:
        # --by benchmark first screens the blocks (one generation benchmark per candidate set):
        # the same bar then counts those evaluations, then the recovery steps.
        label = "benchmark screen, then recovery tune" if args.by == "benchmark" else "recovery tune"
        with progress_bar(label, max(1, args.tune_steps), follow_total=args.by == "benchmark") as cb:
            if is_diffusers_folder(args.model):
                if args.replace_linear or blocks is not None or args.by == "benchmark":
                    raise UserError("--replace-linear, --blocks and --by benchmark are for ditkit models; diffusers "
                                    "blocks are chosen with --remove K --by influence, linearity or ablation")

                summary = prune_diffusers(args.model, args.remove, args.by, args.tune_steps, tmp, callback=cb)
            else:
                summary = prune_model(args.model, args.remove, args.by, args.replace_linear, args.tune_steps, tmp,
                                      prompts=prompts, lr=args.lr, device=args.device, callback=cb,
                                      batch_size=args.batch_size, precision=args.precision, recovery=recovery,
                                      blocks=blocks, screen_callback=cb,
                                      screen_per_category=args.screen_per_category)
    summary.pop("model")
    summary["out_dir"] = str(out)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.to == "diffusers":
        resolve_model(args.src)  # a clear error for an unknown name or folder
    elif not Path(args.src).is_dir():
        raise UserError(f"source {args.src!r} is not a folder")
    out = convert_folder(args.src, args.to, args.output)  # temp folder + rename: no partial output
    print(json.dumps({"source": args.src, "to": args.to, "output": str(out)}))
    return 0
