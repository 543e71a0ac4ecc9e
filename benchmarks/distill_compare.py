"""Few-step students compared (issue: fast generation, "choose the method with a short
comparison you ran"): score each `ditkit distill` output at 1, 2 and 4 steps on the same
ShapesEval prompts and seeds, beside what its run cost, read from the run's log.jsonl.

    ditkit distill --teacher shapes-64 --config configs/distill-shapes.yaml --set distill.time_budget_s=2400 -o runs/cmp/lcm
    ditkit distill --teacher shapes-64 --config configs/distill-shapes.yaml --set distill.method=reflow \\
        --set distill.pairs=1024 --set distill.time_budget_s=2400 -o runs/cmp/reflow
    python benchmarks/distill_compare.py runs/cmp/lcm runs/cmp/reflow --per-category 25 --threads 2

Teacher NFE per run: LCM spends 2 per training sample (one guided Euler step, cond and
uncond batched); reflow spends 2 x the teacher's steps per pair, once, and none while it
trains. Prints a markdown table and a JSON line per student.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import ditkit
from ditkit.evaluation.evaluate import shapes_eval

from common import apply_threads


def run_cost(pipe) -> dict:
    """Method, optimizer steps, images, wall seconds and teacher NFE of one student: from its
    run's log.jsonl, or, for a shipped student without one, from the recipe in its config."""
    cfg = dict(pipe.config.get("distill") or {})
    steps, seconds, pair_seconds = pipe.config.get("distill_steps", 0), float("nan"), 0.0
    log = Path(pipe.source) / "log.jsonl"
    if log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        cfg = rows[0]["distill"]
        last = ([r for r in rows if "stopped" in r] or [r for r in rows if "loss" in r] or [{}])[-1]
        steps, seconds = last.get("at_step", last.get("step", 0)), last.get("time", 0.0)
        pair_seconds = next((r["pair_seconds"] for r in rows if "pair_seconds" in r), 0.0)
    method, images = cfg.get("method", "lcm"), cfg.get("batch_size", 0) * steps
    if method == "reflow":  # one guided trajectory (teacher steps x cond + uncond) per pair
        teacher = ditkit.load(pipe.config["distilled_from"])
        nfe = 2 * (cfg.get("teacher_steps") or teacher.defaults.steps) * cfg["pairs"]
    else:  # one guided Euler step (cond + uncond) per training image
        nfe = 2 * images
    return {"method": method, "steps": steps, "images": images, "seconds": seconds, "teacher_nfe": nfe,
            "pairs": cfg.get("pairs") if method == "reflow" else None, "pair_seconds": pair_seconds,
            "init": cfg.get("init", "")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("students", nargs="+", help="ditkit distill output folders (or embedded names, e.g. shapes-64-flash)")
    p.add_argument("--steps", default="1,2,4")
    p.add_argument("--per-category", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    apply_threads(args)
    step_list = [int(s) for s in args.steps.split(",")]
    rows = []
    for name in args.students:
        pipe = ditkit.load(name)
        cost = run_cost(pipe)
        scores = {}
        for steps in step_list:
            r = shapes_eval(pipe.model, pipe.text_encoder, replace(pipe.defaults, steps=steps),
                            per_category=args.per_category, seed=args.seed)
            scores[steps] = {"overall": r["overall"], **r["categories"]}
        row = {"student": name, **cost, "shapes_eval": scores}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    head = "| student | method | optimizer steps | images | teacher NFE | wall s | " + " | ".join(
        f"{s} step{'s' if s > 1 else ''}" for s in step_list) + " | 4-step single | two | counting | position |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        s4 = r["shapes_eval"].get(4) or r["shapes_eval"][step_list[-1]]
        print(f"| {r['student']} | {r['method']} | {r['steps']:,} | {r['images']:,} | "
              f"{r['teacher_nfe']:,} | {r['seconds']:.0f} | "
              + " | ".join(f"{r['shapes_eval'][s]['overall']:.2f}" for s in step_list)
              + f" | {s4['single_object']:.2f} | {s4['two_object']:.2f} | {s4['counting']:.2f} | {s4['position']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
