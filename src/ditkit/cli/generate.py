"""`ditkit generate`: text-to-image, one prompt (-o OUT.png) or a prompts file (--out-dir).

Under torchrun (`torchrun --nproc_per_node=N -m ditkit generate --prompts-file F --out-dir D`)
the prompts file is split over the N processes: slice k of the run (a whole number of forward
batches, see generate_to_folder) is sampled by rank k % N, so every image is sampled in the same
batch as in one process and the folder ends up byte-identical to a one-process run (same
threads per process; torchrun sets OMP_NUM_THREADS=1)."""

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
from ditkit.cli.ranks import barriers, rank_device, torchrun_ranks
from ditkit.core.lora import check_scale
from ditkit.core.progress import progress_bar, progress_callback
from ditkit.engine.control import parse_control_spec

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
    g.add_argument("--lora", action="append", type=lora_spec, metavar="DIR[:SCALE]",
                   help="a LoRA adapter folder or embedded adapter name (shapes-64-lora-pink), with an optional "
                        "scale (default 1; 0 = off); repeat to add several (docs/lora.md)")
    g.add_argument("--control", action="append", type=control_spec, metavar="KIND:IMAGE[:SCALE]",
                   help="a ControlNet-Transformer control: KIND edges, boxes or seg (the embedded <model>-control-KIND) "
                        "or a control model folder, a condition map (make one with `ditkit control-map`) and an "
                        "optional scale (default 1; 0 = off); repeat to add several (docs/control.md)")
    add_sampling_args(g)
    add_debug(g)
    g.set_defaults(handler=cmd_generate)


def control_spec(text: str) -> tuple[str, str, float]:
    """--control KIND:IMAGE[:SCALE] -> (KIND or control model, IMAGE, SCALE)."""
    try:
        return parse_control_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_generate(args: argparse.Namespace) -> int:
    check_sampling_args(args)
    if args.prompts_file:
        return _generate_prompts_file(args)
    if args.prompt is None:
        raise UserError("give a PROMPT (use '' for unconditional) or --prompts-file")
    if torchrun_ranks().world > 1:
        raise UserError("torchrun splits a --prompts-file run over its processes; run one prompt (-o) without torchrun")
    if not args.output:
        raise UserError("give an output path with -o OUT.png")
    out = check_output_file(args.output)
    pipe = load_with_loras(args)
    kwargs = with_controls(generation_kwargs(args, pipe), args)
    steps = pipe.sample_config(args.steps).steps
    with progress_bar("generate", steps * args.num_images * args.best_of) as cb:
        images = pipe.generate(args.prompt, num_images=args.num_images, callback=progress_callback(cb), **kwargs)
    paths = save_numbered(images, out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def lora_spec(text: str) -> tuple[str, float]:
    """--lora DIR[:SCALE] -> (DIR, SCALE); a folder whose name ends in ':<number>' needs an explicit ':1'."""
    folder, sep, scale = text.rpartition(":")
    if not (sep and folder):
        return text, 1.0
    try:
        value = float(scale)
    except ValueError:
        return text, 1.0
    try:
        return folder, check_scale(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--lora {text!r}: {e}") from None


def with_controls(kwargs: dict, args: argparse.Namespace) -> dict:
    """generate's keyword arguments with the --control list (one condition map for every image)."""
    return {**kwargs, "control": list(args.control)} if args.control else kwargs


def load_with_loras(args: argparse.Namespace):
    """The pipeline of the sampling flags with the --lora adapters loaded (each checked against the model)."""
    pipe = load_pipeline(args)
    for folder, scale in args.lora or []:
        pipe.load_lora(folder, scale)
    return pipe


def _generate_prompts_file(args: argparse.Namespace) -> int:
    if args.prompt is not None:
        raise UserError("give either a PROMPT or --prompts-file, not both")
    if not args.out_dir:
        raise UserError("--prompts-file needs --out-dir")
    ranks = torchrun_ranks()
    args.device = rank_device(args.device, ranks)
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
    pipe = load_with_loras(args)
    kwargs = with_controls(generation_kwargs(args, pipe), args)
    with barriers(ranks) as barrier:
        barrier()  # every rank has checked the folder before rank 0 changes it
        if ranks.main:  # every check has passed: only now touch the folder
            out_dir.mkdir(exist_ok=True)
            clean_out_dir(out_dir)
            for path in numbered_images(out_dir):  # empty unless --overwrite (checked above)
                path.unlink()
        barrier()
        run_total = len(prompts) * args.num_images
        total = images_of_rank(run_total, args.best_of, ranks.rank, ranks.world)
        terminal = sys.stderr.isatty() and ranks.world == 1  # N bars on one terminal would overwrite each other
        who = f"generate (rank {ranks.rank} of {ranks.world})" if ranks.world > 1 else "generate"

        def written(done: int) -> None:  # a plain line per batch where a bar would not show (a log, a pipe)
            if not terminal:
                print(f"{who}: {done}/{total} images written to {out_dir}", file=sys.stderr, flush=True)

        # the bar counts sampled images (best-of candidates included), not image-steps
        with progress_bar("generate", total * args.best_of, enabled=terminal) as bar:
            count = generate_to_folder(pipe, prompts, out_dir, args.num_images, kwargs,
                                       lambda sampled: bar(sampled, total * args.best_of), written,
                                       ranks.rank, ranks.world)
        barrier()  # every rank's images are on disk
    if ranks.world == 1:
        print(f"wrote {count} images to {out_dir}")
    elif ranks.main:
        print(f"wrote {run_total} images to {out_dir} ({ranks.world} processes)")
    return 0


def numbered_images(folder: Path) -> list[Path]:
    """The images a batch run writes (0000.png, 0001.png, ...), sorted; nothing else in the folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if NUMBERED_IMAGE.match(p.name) and p.is_file())


def slice_images(best_of: int) -> int:
    """Images per slice of a --prompts-file run: slice x best_of is a multiple of BATCH_SIZE."""
    return BATCH_SIZE // math.gcd(BATCH_SIZE, best_of)


def images_of_rank(total: int, best_of: int, rank: int = 0, world: int = 1) -> int:
    """How many of a run's `total` images rank `rank` of `world` writes (slice k: rank k % world)."""
    per = slice_images(best_of)
    return sum(min(per, total - start) for start in range(rank * per, total, world * per))


def generate_to_folder(pipe, prompts: Iterable[str], out_dir: Path, num_images: int, kwargs: dict,
                       sampled: Callable[[int], None] = lambda n: None,
                       written: Callable[[int], None] = lambda n: None, rank: int = 0, world: int = 1) -> int:
    """Generate num_images images per prompt into out_dir/0000.png, 0001.png, ... a batch at a
    time, writing each batch's images (atomically, one file at a time) as soon as it finishes;
    prompts are consumed lazily. sampled(n) follows the images sampled so far (best-of candidates
    included), written(n) is called after each batch with the images written so far. Returns the
    number of images written.
    rank, world: a torchrun process samples and writes only slices k with k % world == rank
    (sampled and written then count its own images).

    The images are those of one pipe.generate(all prompts, num_images, seed, batch_size=BATCH_SIZE)
    call: image i keeps seed + i (best-of: candidate k of image i keeps seed + i + k * CANDIDATE_STRIDE),
    and each slice holds a whole number of the engine's batches, so every forward batch holds the
    same images as in that one call."""
    best_of = kwargs.get("best_of", 1)
    per_slice = slice_images(best_of)
    seed = kwargs.get("seed", 0)
    flat = (p for p in prompts for _ in range(num_images))  # image i's prompt, in output order
    start, mine, k = 0, 0, 0  # first image of slice k, images this process has written
    while chunk := list(islice(flat, per_slice)):
        if k % world == rank:
            offset = mine * best_of

            def report(info: dict, offset: int = offset) -> None:
                sampled(offset + info["done"] // info["steps"])

            images = pipe.generate(chunk, **{**kwargs, "seed": seed + start, "num_images": 1,
                                             "batch_size": BATCH_SIZE, "callback": report})
            for i, image in enumerate(images):
                save_image_atomic(image, out_dir / f"{start + i:04d}.png")
            mine += len(images)
            written(mine)
        start += len(chunk)
        k += 1
    return mine
