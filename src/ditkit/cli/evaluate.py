"""`ditkit eval shapes|digits|fwd|edit|emoji|video|control`: the benchmarks (ditkit.evaluation; best-of-N curves
from ditkit.accel.scaling). The verbs check arguments, call the evaluation and print JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ditkit.accel.scaling import digits_best_of_eval, get_verifier, save_best_of_outputs, shapes_best_of_eval
from ditkit.api import Pipeline, load
from ditkit.cli.common import (CliParser, UserError, add_debug, add_engine_arg, add_sampling_args, add_video_sampling_args,
                               check_out_dir, check_sampling_args, clean_out_dir, generation_kwargs, int_list,
                               load_pipeline, positive_int, read_prompts_file)
from ditkit.core.config import SampleConfig
from ditkit.core.control import check_scale
from ditkit.core.control_maps import CONDITIONS, check_condition
from ditkit.core.guidance import APG
from ditkit.core.limits import check_seed
from ditkit.core.progress import progress_bar, progress_callback
from ditkit.data import digits, emoji
from ditkit.engine.cache import parse_cache_spec
from ditkit.evaluation.control_eval import FOLDERS as CONTROL_FOLDERS, control_eval, resolve_eval_control
from ditkit.evaluation.control_eval import summary_table as control_summary_table
from ditkit.evaluation.emoji_eval import emoji_eval, save_emoji_outputs
from ditkit.evaluation.edit_eval import EDIT_TASKS, edit_eval, save_edit_outputs
from ditkit.evaluation.evaluate import benchmark_prompts_for, digits_eval, digits_fwd, shapes_eval
from ditkit.evaluation.fwd import fwd_from_statistics, fwd_statistics, statistics_of
from ditkit.evaluation.outputs import save_digits_outputs, save_eval_outputs, save_fwd_outputs
from ditkit.evaluation.video_eval import (MODES, VIDEO_CATEGORIES, check_video_model, save_video_outputs,
                                         summary_table, video_eval)
from ditkit.evaluation.video_scoring import json_safe

UPSCALER = "shapes-upscale"  # the upscaling model `eval edit` measures


def add_parsers(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model")
    e.set_defaults(handler=_no_benchmark)
    esub = e.add_subparsers(dest="benchmark", parser_class=CliParser)
    es = esub.add_parser("shapes", help="ShapesEval: GenEval's rules on the shapes world")
    es.add_argument("--per-category", type=positive_int("--per-category"), default=50)
    es.add_argument("--out-dir", help="save images, grid.png, scores.png, results.json and report.md here")
    es.add_argument("--best-of", type=int_list("--best-of"),
                    help="inference-time scaling: comma-separated N values, e.g. 1,2,4,8,16")
    es.add_argument("--verifier", default="shapes", help="with --best-of: shapes, digits or module:function")
    add_sampling_args(es)
    add_debug(es)
    es.set_defaults(handler=cmd_eval_shapes)

    ed = esub.add_parser("digits", help="the real-data digits benchmark: judge accuracy and FWD")
    ed.add_argument("--per-digit", type=positive_int("--per-digit"), default=50)
    ed.add_argument("--out-dir", help="save images, plots, results.json and report.md here")
    ed.add_argument("--best-of", type=int_list("--best-of"), help="comma-separated N values, e.g. 1,2,4,8")
    ed.add_argument("--verifier", default="digits", help="with --best-of: digits or module:function")
    ed.add_argument("--no-fwd", action="store_true", help="skip FWD against the real test split")
    add_sampling_args(ed)
    ed.set_defaults(model="digits-32")
    add_debug(ed)
    ed.set_defaults(handler=cmd_eval_digits)

    ef = esub.add_parser("fwd", help="Frechet Wavelet Distance between two image folders, or a model and a folder")
    ef.add_argument("dirs", nargs="*", help="DIR_A DIR_B (image folders or saved .npz statistics)")
    ef.add_argument("--reference", help="with --model: reference image folder or .npz statistics")
    ef.add_argument("--num", type=positive_int("--num"), default=500, help="with --model: images to generate")
    ef.add_argument("--prompts-file", help="with --model: prompts to cycle through (default: the model's benchmark)")
    ef.add_argument("--level", type=positive_int("--level"), default=4, help="wavelet packet level (4: 256 packets)")
    ef.add_argument("--save-stats", help="save the statistics of the first set (DIR_A or the model's images) to .npz")
    ef.add_argument("--out-dir", help="save results.json and report.md here")
    add_sampling_args(ef)
    ef.set_defaults(model=None)
    add_debug(ef)
    ef.set_defaults(handler=cmd_eval_fwd)

    ee = esub.add_parser("edit", help="measure the editing tasks on the shapes world (JSON + report)")
    ee.add_argument("--tasks", default="inpaint,outpaint,vary,fuse,upscale",
                    help="comma-separated: inpaint, outpaint, vary, fuse, upscale")
    ee.add_argument("--num", type=positive_int("--num"), default=50, help="cases per task (default 50)")
    ee.add_argument("--out-dir", help="save results.json, report.md and example grids here")
    ee.add_argument("--model", default="shapes-64")
    ee.add_argument("--seed", type=int, default=0)
    ee.add_argument("--device", default="cpu")
    add_engine_arg(ee)
    add_debug(ee)
    ee.set_defaults(handler=cmd_eval_edit)

    em = esub.add_parser("emoji", help="emoji model: prompt fidelity (nearest real emoji) and FWD, training vs held-out names")
    em.add_argument("--data", help="the folder `ditkit data emoji -o DIR` wrote (default: the one the model trained on)")
    em.add_argument("--out-dir", help="save results.json, grid_train.png, grid_heldout.png and report.md here")
    em.add_argument("--train-limit", type=positive_int("--train-limit"),
                    help="generate for this many evenly spaced training names (default: all); held-out names: all")
    em.add_argument("--level", type=positive_int("--level"), default=4, help="FWD wavelet packet level (default 4)")
    add_sampling_args(em)
    em.set_defaults(model=None)
    add_debug(em)
    em.set_defaults(handler=cmd_eval_emoji)

    ev = esub.add_parser("video", help="video model: per-frame objects, motion, temporal consistency, first-frame "
                                       "PSNR (text-to-video and image-to-video)")
    add_video_sampling_args(ev, "video model: embedded name or model folder (default shapes-video)")
    ev.add_argument("--per-category", type=positive_int("--per-category"), default=25,
                    help="prompts per category (single_move, single_still, single_growing, two_object; default 25)")
    ev.add_argument("--mode", choices=MODES, default="both",
                    help="t2v (text-to-video), i2v (image-to-video from ground-truth first frames) or both (default)")
    ev.add_argument("--batch-size", type=positive_int("--batch-size"), default=8, help="videos per forward batch")
    ev.add_argument("--out-dir", help="save results.json, report.md, frame grids (PNG) and one GIF per video here")
    ev.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    add_debug(ev)
    ev.set_defaults(handler=cmd_eval_video)

    ec = esub.add_parser("control", help="control models: fidelity to the condition (mask or box IoU, edge F1), "
                                         "object correctness and ShapesEval, with the control against text alone")
    ec.add_argument("--condition", required=True, metavar="KIND", help=f"the condition: {', '.join(CONDITIONS)}")
    ec.add_argument("--control-model", metavar="NAME_OR_DIR",
                    help="the control model: embedded name or folder (default: the embedded <model>-control-KIND)")
    ec.add_argument("--scale", type=float, default=1.0, help="control scale >= 0 (default 1; 0 = the base alone)")
    ec.add_argument("--per-category", type=positive_int("--per-category"), default=6,
                    help="ShapesEval prompts per category (default 6)")
    ec.add_argument("--out-dir", help="save control/, text_only/, condition/ images, grid.png, results.json and "
                                      "report.md here")
    ec.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    add_sampling_args(ec)
    add_debug(ec)
    ec.set_defaults(handler=cmd_eval_control)


def _no_benchmark(args: argparse.Namespace) -> int:
    raise UserError("choose a benchmark: ditkit eval shapes|digits|fwd|edit|emoji|video|control")


def _prepare_out_dir(path: str | None) -> None:
    """Check --out-dir; clear the temporary files a killed earlier eval left there."""
    check_out_dir(path)
    if path:
        clean_out_dir(path, subfolders=("images",))


def _eval_setup(args: argparse.Namespace) -> tuple[Pipeline, SampleConfig]:
    """Check an eval command's arguments, load its model: (pipeline, sampling settings)."""
    check_sampling_args(args)
    _prepare_out_dir(args.out_dir)
    pipe = load_pipeline(args)
    return pipe, pipe.sample_config(args.steps, args.guidance, args.sampler, args.size, args.shift,
                                    args.apg or None, args.guidance_interval, args.prior_until, args.prior_model)


def cmd_eval_shapes(args: argparse.Namespace) -> int:
    pipe, sample = _eval_setup(args)
    if args.best_of:
        get_verifier(args.verifier)
        n = 4 * args.per_category * sample.steps * max(args.best_of)
        with progress_bar("eval shapes best-of-N", n) as cb:
            result = shapes_best_of_eval(pipe.model, pipe.text_encoder, sample, args.best_of, args.per_category,
                                         args.seed, args.verifier, precision=args.precision, callback=progress_callback(cb))
        if args.out_dir:
            save_best_of_outputs(result, args.out_dir, "ShapesEval against best-of-N", args.command_line)
        print(json.dumps({"model": pipe.source, "seconds_per_image": result["seconds_per_image"],
                          "rows": [{"best_of": r["best_of"], **r["result"]} for r in result["rows"]]}, indent=2))
        return 0
    n = 4 * args.per_category * sample.steps
    with progress_bar("eval shapes", n) as cb:
        result = shapes_eval(pipe.model, pipe.text_encoder, sample, args.per_category, args.seed,
                             APG() if sample.apg else None, args.precision, callback=progress_callback(cb),
                             return_images=bool(args.out_dir), cache=parse_cache_spec(args.cache, pipe.source))
    if args.out_dir:
        save_eval_outputs(result, args.out_dir, args.command_line)
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts")}
    summary["model"] = pipe.source
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval_digits(args: argparse.Namespace) -> int:
    pipe, sample = _eval_setup(args)
    if sample.size != digits.SIZE:
        raise UserError(f"the digits benchmark is at {digits.SIZE}x{digits.SIZE}; got size {sample.size}")
    if args.best_of:
        result = digits_best_of_eval(pipe.model, pipe.text_encoder, sample, args.best_of, args.per_digit, args.seed,
                                     args.verifier, precision=args.precision)
        if args.out_dir:
            save_best_of_outputs(result, args.out_dir, "Digit accuracy against best-of-N", args.command_line)
        print(json.dumps({"model": pipe.source, "seconds_per_image": result["seconds_per_image"],
                          "rows": [{"best_of": r["best_of"], "accuracy": r["result"]["accuracy"]} for r in result["rows"]]},
                         indent=2))
        return 0
    result = digits_eval(pipe.model, pipe.text_encoder, sample, args.per_digit, args.seed, args.precision,
                         return_images=True)
    if not args.no_fwd:
        result["fwd"] = digits_fwd(result["images"])
    if args.out_dir:
        save_digits_outputs(result, args.out_dir, args.command_line)
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts", "predicted")}
    summary["model"] = pipe.source
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval_fwd(args: argparse.Namespace) -> int:
    _prepare_out_dir(args.out_dir)
    if args.save_stats and not args.save_stats.endswith(".npz"):
        raise UserError(f"--save-stats needs a .npz path, got {args.save_stats!r}")
    if args.model:
        if args.dirs:
            raise UserError("with --model give --reference DIR, not positional folders")
        if not args.reference:
            raise UserError("--model needs --reference DIR (image folder or .npz statistics)")
        check_sampling_args(args)
        ref = statistics_of(args.reference, args.level)
        pipe = load_pipeline(args)
        if args.prompts_file:
            prompts = read_prompts_file(args.prompts_file)
        else:
            prompts = benchmark_prompts_for((pipe.config.get("data") or {}).get("dataset"))
            if prompts is None:
                raise UserError("this model has no built-in benchmark prompts; give --prompts-file")
        prompts = [prompts[i % len(prompts)] for i in range(args.num)]
        steps = pipe.sample_config(args.steps).steps
        with progress_bar("generate", args.num * steps) as cb:
            images = pipe.generate(prompts, callback=progress_callback(cb), **generation_kwargs(args, pipe))
        first = fwd_statistics(np.stack([np.asarray(im.convert("RGB")) for im in images]), level=args.level)
        names = (f"{pipe.source} ({args.num} generated)", args.reference)
    else:
        if len(args.dirs) != 2:
            raise UserError("give two image folders (or .npz statistics): ditkit eval fwd DIR_A DIR_B, "
                            "or --model M --reference DIR")
        first, ref = statistics_of(args.dirs[0], args.level), statistics_of(args.dirs[1], args.level)
        names = tuple(args.dirs)
    distance = fwd_from_statistics(first, ref)
    if args.save_stats:
        first.save(args.save_stats)
    result = {"fwd": distance, "a": names[0], "b": names[1], "level": args.level, "n_a": first.n, "n_b": ref.n}
    if args.out_dir:
        save_fwd_outputs(result, args.out_dir, args.command_line)
    print(json.dumps(result, indent=2))
    return 0


def cmd_eval_edit(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in EDIT_TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown edit tasks {bad or tasks}; allowed: {', '.join(EDIT_TASKS)}")
    _prepare_out_dir(args.out_dir)
    pipe = load(args.model, device=args.device, engine=args.engine)
    upscaler = load(UPSCALER, device=args.device, engine=args.engine).engine if "upscale" in tasks else None
    # the tasks take a companion lookup that returns engines (suffix -> engine or None)
    companion = lambda suffix: getattr(pipe.companion(suffix), "engine", None)  # noqa: E731
    results, examples = edit_eval(pipe.engine, tasks, n=args.num, seed=args.seed, companion=companion,
                                  upscaler=upscaler)
    if args.out_dir:
        save_edit_outputs(results, examples, Path(args.out_dir), command=getattr(args, "command_line", ""))
    print(json.dumps(results, indent=2))
    return 0


def cmd_eval_emoji(args: argparse.Namespace) -> int:
    if not args.model:
        raise UserError("give --model: the trained emoji model (a model folder, e.g. runs/emoji-64/model)")
    if args.data and not (Path(args.data) / emoji.TRAIN_DIR).is_dir():  # fail before loading the model
        raise UserError(f"--data {args.data!r} holds no {emoji.TRAIN_DIR}/ folder; give the folder "
                        "`ditkit data emoji -o DIR` wrote")
    pipe, sample = _eval_setup(args)
    root = Path(args.data) if args.data else _trained_on(pipe.config)
    train_split = emoji.read_split(root / emoji.TRAIN_DIR)
    held_dir = root / emoji.HELDOUT_DIR
    heldout = emoji.read_split(held_dir) if held_dir.is_dir() and any(held_dir.glob("*.png")) else None
    n = (min(args.train_limit or len(train_split.names), len(train_split.names))
         + (len(heldout.names) if heldout else 0))
    with progress_bar("eval emoji", n * sample.steps) as cb:
        result = emoji_eval(pipe.model, pipe.text_encoder, sample, train_split, heldout, args.seed, args.train_limit,
                            args.precision, level=args.level, callback=progress_callback(cb),
                            return_images=bool(args.out_dir))
    if args.out_dir:
        save_emoji_outputs(result, args.out_dir, args.command_line)
    summary = {k: v for k, v in result.items() if k not in ("images", "prompts", "real", "per_prompt")}
    print(json.dumps({"model": pipe.source, "data": str(root), **summary}, indent=2))
    return 0


def _trained_on(config: dict) -> Path:
    """The emoji folder a model was trained on: the parent of its data.path (DIR/train) when it
    holds the manifest `ditkit data emoji` writes."""
    path = (config.get("data") or {}).get("path")
    if path and (Path(path).parent / emoji.MANIFEST).is_file():
        return Path(path).parent
    raise UserError("give --data DIR: the folder `ditkit data emoji -o DIR` wrote (this model's config names no "
                    "emoji folder that exists here)")


def cmd_eval_video(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    check_seed(args.seed)
    check_out_dir(args.out_dir)
    if args.out_dir:
        clean_out_dir(args.out_dir, subfolders=("t2v", "i2v"))
    pipe = load_pipeline(args)
    check_video_model(pipe.model)  # an image model fails before the progress bar opens
    steps = pipe.sample_config(args.steps).steps
    modes = 2 if args.mode == "both" else 1
    with progress_bar("eval video", modes * len(VIDEO_CATEGORIES) * args.per_category * steps) as cb:
        result = video_eval(pipe.engine, args.per_category, args.seed, args.mode, args.steps, args.guidance,
                            args.sampler, args.shift, args.size, args.precision, args.batch_size,
                            callback=progress_callback(cb), return_videos=bool(args.out_dir))
    if args.out_dir:
        save_video_outputs(result, args.out_dir, args.command_line)
    summary = {"model": pipe.source,
               **{k: v for k, v in result.items() if k not in ("videos", "prompts", "reference", "per_video")}}
    if args.json:
        print(json.dumps(json_safe(summary), indent=2))
    else:
        s = result["settings"]
        print(f"{pipe.source}: {len(VIDEO_CATEGORIES) * args.per_category} videos per mode of {s['frames']} frames at "
              f"{s['size']}x{s['size']}, {s['steps']} steps, guidance {s['guidance']:g}"
              + (f"; wrote {args.out_dir}" if args.out_dir else ""))
        print(summary_table(result))
    return 0


def cmd_eval_control(args: argparse.Namespace) -> int:
    kind = check_condition(args.condition)
    scale = check_scale(args.scale)
    check_sampling_args(args)
    check_seed(args.seed)
    check_out_dir(args.out_dir)
    if args.out_dir:
        clean_out_dir(args.out_dir, subfolders=CONTROL_FOLDERS)
    pipe = load_pipeline(args)
    resolve_eval_control(pipe.engine, kind, args.control_model)  # a missing control fails before the bar opens
    kwargs = {k: v for k, v in generation_kwargs(args, pipe).items() if k != "seed"}
    steps = pipe.sample_config(args.steps).steps
    with progress_bar("eval control", 2 * 4 * args.per_category * steps) as cb:
        result = control_eval(pipe, kind, args.per_category, args.seed, args.control_model, scale, args.out_dir,
                              callback=progress_callback(cb), command=args.command_line, **kwargs)
    summary = {k: v for k, v in result.items() if k not in ("images", "per_image")}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        s = result["settings"]
        print(f"{pipe.source}: {kind} control {s['control_model']} at scale {s['scale']:g}, "
              f"{result['counts']['prompts']} prompts ({result['counts']['objects']} objects), {s['steps']} steps, "
              f"guidance {s['guidance']:g}, {s['size']}x{s['size']}")
        print(control_summary_table(result))
    if args.out_dir:
        print(f"wrote {Path(args.out_dir) / 'results.json'}")
    return 0
