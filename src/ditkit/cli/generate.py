"""`ditkit generate`: text-to-image, one prompt (-o OUT.png) or a prompts file (--out-dir)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ditkit.cli.common import (UserError, add_debug, add_sampling_args, check_output_file, check_sampling_args,
                               generation_kwargs, load_pipeline, positive_int, read_prompts_file, save_image_atomic,
                               save_numbered)
from ditkit.core.progress import progress_bar, progress_callback


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="text-to-image")
    g.add_argument("prompt", nargs="?", help="the prompt ('' = unconditional)")
    g.add_argument("-o", "--output", help="output image path (.png, .jpg, ...)")
    g.add_argument("--prompts-file", help="one prompt per line; writes OUT_DIR/0000.png, 0001.png, ...")
    g.add_argument("--out-dir", help="output folder for --prompts-file")
    g.add_argument("--num-images", type=positive_int("--num-images"), default=1,
                   help="images per prompt; with -o, files get _0, _1, ... suffixes")
    g.add_argument("--best-of", type=positive_int("--best-of"), default=1,
                   help="generate N candidates per image and keep the verifier's best (N times the cost)")
    g.add_argument("--verifier", help="shapes, digits or module:function (default: the model's dataset)")
    add_sampling_args(g)
    add_debug(g)
    g.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    if args.prompts_file:
        return _generate_prompts_file(args)
    if args.prompt is None:
        raise UserError("give a PROMPT (use '' for unconditional) or --prompts-file")
    if not args.output:
        raise UserError("give an output path with -o OUT.png")
    out = check_output_file(args.output)
    pipe = load_pipeline(args)
    kwargs = generation_kwargs(args, pipe)
    steps = pipe.sample_config(args.steps).steps
    with progress_bar("generate", steps * args.num_images * args.best_of) as cb:
        images = pipe.generate(args.prompt, num_images=args.num_images, callback=progress_callback(cb), **kwargs)
    paths = save_numbered(images, out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _generate_prompts_file(args: argparse.Namespace) -> int:
    if args.prompt is not None:
        raise UserError("give either a PROMPT or --prompts-file, not both")
    if not args.out_dir:
        raise UserError("--prompts-file needs --out-dir")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {args.out_dir!r} is a file")
    if not out_dir.parent.exists():
        raise UserError(f"parent folder of --out-dir {str(out_dir.parent)!r} does not exist")
    prompts = read_prompts_file(args.prompts_file)
    pipe = load_pipeline(args)
    kwargs = generation_kwargs(args, pipe)
    # this bar counts images, not image-steps
    with progress_bar("generate", len(prompts) * args.num_images * args.best_of) as cb:
        images = pipe.generate(prompts, num_images=args.num_images,
                               callback=lambda info: cb(info["done"] // max(1, pipe.sample_config(args.steps).steps),
                                                        info["total"]),
                               **kwargs)
    out_dir.mkdir(exist_ok=True)
    for k, im in enumerate(images):
        save_image_atomic(im, out_dir / f"{k:04d}.png")
    print(f"wrote {len(images)} images to {out_dir}")
    return 0
