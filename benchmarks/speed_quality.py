"""Speed against quality for the fast-generation options (caching, precision, fewer steps),
all measured in one run on the same prompts and seeds:

    python benchmarks/speed_quality.py --model shapes-64 --per-category 25 --threads 2

For each row: steps, model evaluations per image (NFE, CFG batched), median seconds per
image at batch 1 and 16, speedup over the teacher at its default settings, ShapesEval
overall and per category. A SmoothCache schedule is calibrated first (8 prompts that
are not benchmark prompts) and saved to --schedule. --flash adds a distilled student
(ditkit distill) at 1, 2 and 4 steps; --rows picks a subset of the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ditkit
from ditkit.engine.cache import FirstBlockCache, SmoothCache, calibrate_smooth
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.api import generate_tensor


def seconds_per_image(pipe, sample, batch: int, precision: str, cache, repeats: int) -> float:
    prompts = ["a red circle to the left of a blue square", "three green triangles"] * (batch // 2 or 1)
    prompts = prompts[:batch]
    generate_tensor(pipe.model, pipe.text_encoder, prompts[:1], sample, 0, precision=precision, cache=cache)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate_tensor(pipe.model, pipe.text_encoder, prompts, sample, r, precision=precision, batch_size=batch,
                        cache=cache)
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--per-category", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--thresholds", default="0.05,0.1")
    p.add_argument("--alpha", type=float, default=0.15)
    p.add_argument("--schedule", default="runs/cache_schedule.json")
    p.add_argument("--flash", help="a distilled student (e.g. runs/shapes-64-flash): adds rows at 1, 2 and 4 steps")
    p.add_argument("--rows", default="teacher,teacher4,cache,smooth,bf16,int8,best,flash",
                   help="subset of teacher,teacher4,cache,smooth,bf16,int8,best,flash (teacher is always first; "
                        "best = int8 with the first-block cache at the last threshold)")
    p.add_argument("--json")
    args = p.parse_args()
    wanted = set(args.rows.split(",")) | {"teacher"}
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ditkit.load(args.model)
    base = pipe.defaults
    from dataclasses import replace

    from ditkit.api import _default_prompts

    rows = [("teacher default", pipe, base, "fp32", None)]
    if "teacher4" in wanted:
        rows.append(("teacher 4 steps", pipe, replace(base, steps=4), "fp32", None))
    if "flash" in wanted and args.flash:
        flash = ditkit.load(args.flash)
        for steps in (1, 2, 4):
            rows.append((f"flash {steps} steps", flash, replace(flash.defaults, steps=steps), "fp32", None))
    if "cache" in wanted:
        for th in [float(x) for x in args.thresholds.split(",")]:
            rows.append((f"first-block cache {th}", pipe, base, "fp32", lambda th=th: FirstBlockCache(th)))
    if "smooth" in wanted:
        schedule = calibrate_smooth(pipe.model, pipe.text_encoder, _default_prompts(pipe.config), base, args.alpha)
        schedule.save(args.schedule)
        reused = sum(map(sum, schedule.reuse)) / sum(map(len, schedule.reuse))
        print(json.dumps({"smooth_schedule": args.schedule, "alpha": args.alpha, "block_calls_reused": reused}), flush=True)
        rows.append((f"smooth cache (alpha {args.alpha})", pipe, base, "fp32", lambda: SmoothCache(schedule)))
    if "bf16" in wanted:
        rows.append(("bf16", pipe, base, "bf16", None))
    if "int8" in wanted:
        rows.append(("int8", pipe, base, "int8", None))
    if "best" in wanted:  # the fastest options together: int8 plus the first-block cache at the last threshold
        th = float(args.thresholds.split(",")[-1])
        rows.append((f"int8 + first-block cache {th}", pipe, base, "int8", lambda: FirstBlockCache(th)))
    results = []
    for name, runner, sample, precision, cache in rows:
        t1 = seconds_per_image(runner, sample, 1, precision, cache, args.repeats)
        t16 = seconds_per_image(runner, sample, 16, precision, cache, args.repeats)
        ev = shapes_eval(runner.model, runner.text_encoder, sample, args.per_category, args.seed, precision=precision,
                         **({"cache": cache} if cache else {}))
        nfe = sample.steps * (2 if sample.guidance != 1.0 else 1)  # CFG: cond + uncond (batched)
        row = {"config": name, "steps": sample.steps, "nfe": nfe, "precision": precision,
               "s_per_image_b1": t1, "s_per_image_b16": t16, "shapes": ev["overall"], "categories": ev["categories"]}
        results.append(row)
        print(json.dumps(row), flush=True)
    ref = results[0]
    print("\n| config | steps | NFE | s/img b1 | s/img b16 | speedup b1 | speedup b16 | ShapesEval | vs teacher | "
          "single | two | counting | position |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r["categories"]
        print(f"| {r['config']} | {r['steps']} | {r['nfe']} | {r['s_per_image_b1']:.3f} | {r['s_per_image_b16']:.3f} | "
              f"{ref['s_per_image_b1'] / r['s_per_image_b1']:.2f}x | {ref['s_per_image_b16'] / r['s_per_image_b16']:.2f}x | "
              f"{r['shapes']:.3f} | {r['shapes'] - ref['shapes']:+.3f} | {c['single_object']:.2f} | "
              f"{c['two_object']:.2f} | {c['counting']:.2f} | {c['position']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
