"""Speed against quality for the fast-generation options (caching, precision, fewer steps),
all measured in one run on the same prompts and seeds:

    python benchmarks/speed_quality.py --model shapes-64 --per-category 25 --threads 2

For each row: steps, model evaluations per image (NFE, CFG batched), median seconds per
image at batch 1 and 16, speedup over the teacher at its default settings, ShapesEval
overall and per category. A SmoothCache schedule is calibrated first (8 prompts that
are not benchmark prompts) and saved to --schedule. --flash adds a distilled student
(ditkit distill) at 1, 2 and 4 steps; --rows picks a subset of the rows. --timing-only
skips ShapesEval (a timing pass alone, for when a full run's timings were disturbed).
Every timed call is the public pipe.generate (text encoding, CFG, the sampler, PIL).
"""

from __future__ import annotations

import json

import ditkit
from ditkit.engine.cache import SmoothSchedule
from ditkit.evaluation.evaluate import shapes_eval

from common import apply_threads, csv, markdown_table, medians, parser, ratio, time_interleaved, write_json

PROMPTS = ["a red circle to the left of a blue square", "three green triangles"]


def seconds_per_image(pipe, steps: int, batch: int, precision: str, cache: str | None, repeats: int) -> float:
    """Median seconds per image of pipe.generate at a batch size (one warmup call)."""
    prompts = (PROMPTS * (batch // 2 or 1))[:batch]
    seed = iter(range(10**6))  # a new seed per call: nothing is reused between calls
    run = lambda: pipe.generate(prompts, steps=steps, seed=next(seed), precision=precision,  # noqa: E731
                                batch_size=batch, cache=cache)
    return medians(time_interleaved({"run": run}, repeats, warmup=1))["run"] / batch


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--per-category", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--thresholds", default="0.05,0.1")
    p.add_argument("--alpha", type=float, default=0.15)
    p.add_argument("--schedule", default="cache_schedule.json",
                   help="where the calibrated SmoothCache schedule is saved (default %(default)s)")
    p.add_argument("--flash", help="a distilled student (e.g. runs/shapes-64-flash): adds rows at 1, 2 and 4 steps")
    p.add_argument("--rows", default="teacher,teacher4,cache,smooth,bf16,int8,best,flash",
                   help="subset of teacher,teacher4,cache,smooth,bf16,int8,best,flash (teacher is always first; "
                        "best = int8 with the first-block cache at the last threshold)")
    p.add_argument("--timing-only", action="store_true", help="skip ShapesEval: time the rows only")
    args = p.parse_args()
    wanted = set(args.rows.split(",")) | {"teacher"}
    apply_threads(args)
    pipe = ditkit.load(args.model)
    base = pipe.defaults

    # (name, pipeline, steps, precision, cache spec)
    rows = [("teacher default", pipe, base.steps, "fp32", None)]
    if "teacher4" in wanted:
        rows.append(("teacher 4 steps", pipe, 4, "fp32", None))
    if "flash" in wanted and args.flash:
        flash = ditkit.load(args.flash)
        for steps in (1, 2, 4):
            rows.append((f"flash {steps} steps", flash, steps, "fp32", None))
    if "cache" in wanted:
        for th in csv(args.thresholds, float):
            rows.append((f"first-block cache {th}", pipe, base.steps, "fp32", f"first-block:{th}"))
    if "smooth" in wanted:
        path = pipe.calibrate_cache(alpha=args.alpha, out=args.schedule)
        schedule = SmoothSchedule.load(path)
        reused = sum(map(sum, schedule.reuse)) / sum(map(len, schedule.reuse))
        print(json.dumps({"smooth_schedule": str(path), "alpha": args.alpha, "block_calls_reused": reused}), flush=True)
        rows.append((f"smooth cache (alpha {args.alpha})", pipe, base.steps, "fp32", f"smooth:{path}"))
    if "bf16" in wanted:
        rows.append(("bf16", pipe, base.steps, "bf16", None))
    if "int8" in wanted:
        rows.append(("int8", pipe, base.steps, "int8", None))
    if "best" in wanted:  # the fastest options together: int8 plus the first-block cache at the last threshold
        th = csv(args.thresholds, float)[-1]
        rows.append((f"int8 + first-block cache {th}", pipe, base.steps, "int8", f"first-block:{th}"))
    results = []
    for name, runner, steps, precision, cache in rows:
        t1 = seconds_per_image(runner, steps, 1, precision, cache, args.repeats)
        t16 = seconds_per_image(runner, steps, 16, precision, cache, args.repeats)
        sample = runner.sample_config(steps=steps)
        nfe = steps * (2 if sample.guidance != 1.0 else 1)  # CFG: cond + uncond (batched)
        row = {"config": name, "steps": steps, "nfe": nfe, "precision": precision,
               "s_per_image_b1": t1, "s_per_image_b16": t16}
        if not args.timing_only:
            ev = shapes_eval(runner.model, runner.text_encoder, sample, args.per_category, args.seed,
                             precision=precision, cache=cache)
            row.update(shapes=ev["overall"], categories=ev["categories"])
        results.append(row)
        print(json.dumps(row), flush=True)
    ref = results[0]
    headers = ["config", "steps", "NFE", "s/img b1", "s/img b16", "speedup b1", "speedup b16"]
    if not args.timing_only:
        headers += ["ShapesEval", "vs teacher", "single", "two", "counting", "position"]
    table = []
    for r in results:
        line = [r["config"], r["steps"], r["nfe"], r["s_per_image_b1"], r["s_per_image_b16"],
                ratio(r["s_per_image_b1"], ref["s_per_image_b1"]), ratio(r["s_per_image_b16"], ref["s_per_image_b16"])]
        if not args.timing_only:
            c = r["categories"]
            line += [r["shapes"], f"{r['shapes'] - ref['shapes']:+.3f}", f"{c['single_object']:.2f}",
                     f"{c['two_object']:.2f}", f"{c['counting']:.2f}", f"{c['position']:.2f}"]
        table.append(line)
    print()
    print(markdown_table(headers, table, "lrrrrrr" + "rrrrrr" * (not args.timing_only)))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
