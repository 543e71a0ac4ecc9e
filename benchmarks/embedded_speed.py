"""Seconds per image of an embedded model at its default sampling settings.

    python benchmarks/embedded_speed.py                      # the real measurement, model "shapes-64"
    python benchmarks/embedded_speed.py --model path/to/model_folder
    python benchmarks/embedded_speed.py --quick              # smoke run: 4 steps, 1 repeat; numbers mean nothing

Each timed call is the public API, pipe.generate(prompts, batch_size=B, precision=P)
with the model's stored defaults (sampler, steps, guidance, shift, size), so
the time includes text encoding, CFG's doubled batch, the sampler and the
conversion to PIL. Each call uses prompts not seen before, so the text
encoder's cache does not hide its cost. The (batch, precision) cases are timed
in interleaved rounds and the median is reported, so background load hits all
cases alike.

Target: < 0.5 s per 64x64 image at batch 16.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time

import torch

import ditkit
from ditkit.core.model import count_parameters

from common import apply_threads

TARGET_S_PER_IMAGE = 0.5
TARGET_BATCH = 16
PRECISIONS = ("fp32", "bf16")

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
RELATIONS = ["to the left of", "to the right of", "above", "below"]


def prompt_stream():
    """Distinct shapes-world prompts (2,160 before any repeats), so cached encodings never skew a timing."""
    for (c1, s1), rel, (c2, s2) in itertools.product(itertools.product(COLORS, SHAPES), RELATIONS,
                                                     itertools.product(COLORS[::-1], SHAPES[::-1])):
        yield f"a {c1} {s1} {rel} a {c2} {s2}"
    for i in itertools.count():
        yield f"a shape number {i}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-64", help="embedded model name or model folder (default shapes-64)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 sampling steps unless --steps is given, 1 repeat, 1 warmup")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per case before timing (default 1)")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated (default 1,16)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    p.add_argument("--steps", type=int, default=None, help="override the model's default number of steps")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    if args.quick and args.steps is None:
        args.steps = 4
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.precisions = [s for s in args.precisions.split(",") if s]
    for s in args.precisions:
        if s not in PRECISIONS:
            p.error(f"unknown precision {s!r}; allowed: {', '.join(PRECISIONS)}")
    if any(b < 1 for b in args.batch_sizes):
        p.error("batch sizes must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_threads(args)
    print(f"# embedded_speed{' (QUICK: not a measurement)' if args.quick else ''}")
    print(f"torch {torch.__version__}, ditkit {ditkit.__version__}, python {platform.python_version()}, "
          f"device {args.device}, threads {torch.get_num_threads()}")

    try:
        pipe = ditkit.load(args.model, device=args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = pipe.sample_config(steps=args.steps)
    default_steps = pipe.defaults.steps
    mc = pipe.model.config
    print(f"model {pipe.source}: {count_parameters(pipe.model):,} parameters, width {mc.width}, depth {mc.depth}, "
          f"patch {mc.patch_size}, stem_channels {mc.stem_channels}, qk_norm {mc.qk_norm}, attention {mc.attention}")
    print(f"sampling: {d.sampler}, {d.steps} steps{' (overridden)' if args.steps is not None else ''}, "
          f"guidance {d.guidance}{' (CFG doubles the batch)' if d.guidance != 1.0 else ''}, apg {d.apg}, "
          f"size {d.size}x{d.size}; repeats {args.repeats}, warmup {args.warmup}")

    prompts = prompt_stream()
    _ = pipe.text_encoder  # load the text encoder outside the timings

    def run(batch: int, precision: str) -> float:
        chunk = [next(prompts) for _ in range(batch)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        images = pipe.generate(chunk, steps=args.steps, batch_size=batch, precision=precision, seed=0)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert len(images) == batch and images[0].size == (d.size, d.size)
        return dt

    cases = [(b, p) for b in args.batch_sizes for p in args.precisions]
    for case in cases:
        for _ in range(args.warmup):
            run(*case)
    samples: dict[tuple[int, str], list[float]] = {c: [] for c in cases}
    for r in range(args.repeats):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            samples[case].append(run(*case))
            print(f"  round {r + 1}: batch {case[0]:3d} {case[1]}: {samples[case][-1]:.3f} s", flush=True)

    rows = []
    for (batch, precision), s in samples.items():
        per_image = statistics.median(s) / batch
        target = batch == TARGET_BATCH
        rows.append(dict(batch=batch, precision=precision, steps=d.steps, seconds_per_call=statistics.median(s),
                         seconds_per_image=per_image, images_per_second=1 / per_image,
                         target_s_per_image=TARGET_S_PER_IMAGE if target else None,
                         met=(per_image < TARGET_S_PER_IMAGE) if target else None))

    print(f"\n| batch | precision | steps | s / image | images / s | target (batch {TARGET_BATCH}) | met |")
    print("|---:|---|---:|---:|---:|---|---|")
    for r in rows:
        tgt = f"< {TARGET_S_PER_IMAGE} s" if r["target_s_per_image"] is not None else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        if r["met"] is not None and args.steps is not None and args.steps != default_steps:
            met += f" (at {args.steps} steps, not the default {default_steps})"
        print(f"| {r['batch']} | {r['precision']} | {r['steps']} | {r['seconds_per_image']:.3f} "
              f"| {r['images_per_second']:.2f} | {tgt} | {met} |")
    if args.quick:
        print("\n(--quick: reduced steps and repeats under whatever else is running; do not quote these numbers)")

    if args.json:
        out = dict(torch=torch.__version__, ditkit=ditkit.__version__, device=args.device,
                   threads=torch.get_num_threads(), quick=args.quick, model=pipe.source,
                   parameters=count_parameters(pipe.model), sampling=dict(d.__dict__), repeats=args.repeats,
                   rows=rows)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
