"""`ditkit generate`: text-to-image, one prompt (-o OUT.png) or a prompts file (--out-dir)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

from ditkit.cli.common import (PromptsFile, UserError, add_debug, add_sampling_args, check_output_file,
                               check_sampling_args, clean_out_dir, generation_kwargs, load_pipeline, positive_int,
                               save_image_atomic, save_numbered)
from ditkit.core.progress import progress_bar, progress_callback

# Images per forward batch of a --prompts-file run (Pipeline.generate's default). The run
# streams: each slice of whole batches is written before the next is sampled.
BATCH_SIZE = 16
NUMBERED_IMAGE = re.compile(r"^[0-9]{4,}\.png$")  # the names a --prompts-file run writes


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="text-to-image")
    g.add_argument("prompt", nargs="?", help="the prompt ('' = unconditional)")
    g.add_argument("-o", "--output", help="output image path (.png, .jpg, ...)")
    g.add_argument("--prompts-file", help="one prompt per line; writes OUT_DIR/0000.png, 0001.png, ...")
    g.add_argument("--out-dir", help="output folder for --prompts-file (images are written as each batch finishes)")
    g.add_argument("--overwrite", action="store_true",
                   help="let --out-dir hold numbered images (NNNN.png) of an earlier run: they are removed first")
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
    prompts = PromptsFile(args.prompts_file)
    stale = numbered_images(out_dir)
    if stale and not args.overwrite:
        raise UserError(f"--out-dir {args.out_dir!r} already holds {len(stale)} numbered images ({stale[0].name} ...) "
                        "from an earlier run; give --overwrite to remove them first, or choose another folder")
    pipe = load_pipeline(args)
    kwargs = generation_kwargs(args, pipe)
    # every check has passed: only now touch the folder
    out_dir.mkdir(exist_ok=True)
    clean_out_dir(out_dir)
    for path in numbered_images(out_dir):  # empty unless --overwrite (checked above)
        path.unlink()
    total = len(prompts) * args.num_images
    terminal = sys.stderr.isatty()

    def written(done: int) -> None:  # a plain line per batch where a bar would not show (a log, a pipe)
        if not terminal:
            print(f"generate: {done}/{total} images written to {out_dir}", file=sys.stderr, flush=True)

    # the bar counts sampled images (best-of candidates included), not image-steps
    with progress_bar("generate", total * args.best_of, enabled=terminal) as bar:
        count = generate_to_folder(pipe, prompts, out_dir, args.num_images, kwargs,
                                   lambda sampled: bar(sampled, total * args.best_of), written)
    print(f"wrote {count} images to {out_dir}")
    return 0


def numbered_images(folder: Path) -> list[Path]:
    """The images a batch run writes (0000.png, 0001.png, ...), sorted; nothing else in the folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if NUMBERED_IMAGE.match(p.name) and p.is_file())


def generate_to_folder(pipe, prompts: Iterable[str], out_dir: Path, num_images: int, kwargs: dict,
                       sampled: Callable[[int], None] = lambda n: None,
                       written: Callable[[int], None] = lambda n: None) -> int:
    """Generate num_images images per prompt into out_dir/0000.png, 0001.png, ... a batch at a
    time, writing each batch's images (atomically, one file at a time) as soon as it finishes;
    prompts are consumed lazily. sampled(n) follows the images sampled so far (best-of candidates
    included), written(n) is called after each batch with the images written so far. Returns the
    number of images written.

    The images are those of one pipe.generate(all prompts, num_images, seed, batch_size=BATCH_SIZE)
    call: image i keeps seed + i (best-of: candidate k of image i keeps seed + i + k * CANDIDATE_STRIDE),
    and each slice holds a whole number of the engine's batches, so every forward batch holds the
    same images as in that one call."""
    best_of = kwargs.get("best_of", 1)
    per_slice = BATCH_SIZE // math.gcd(BATCH_SIZE, best_of)  # images; times best_of is a multiple of BATCH_SIZE
    seed = kwargs.get("seed", 0)
    flat = (p for p in prompts for _ in range(num_images))  # image i's prompt, in output order
    start = 0
    while chunk := list(islice(flat, per_slice)):
        offset = start * best_of

        def report(info: dict, offset: int = offset) -> None:
            sampled(offset + info["done"] // info["steps"])

        images = pipe.generate(chunk, **{**kwargs, "seed": seed + start, "num_images": 1,
                                         "batch_size": BATCH_SIZE, "callback": report})
        for k, image in enumerate(images):
            save_image_atomic(image, out_dir / f"{start + k:04d}.png")
        start += len(images)
        written(start)
    return start
