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

import torch

import ditkit
from ditkit.evaluate import shapes_eval


def run_cost(folder: Path) -> dict:
    """Method, optimizer steps, wall seconds, pairs and teacher NFE of one distill run."""
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    cfg = rows[0]["distill"]
    steps = [r for r in rows if "loss" in r]
    stop = [r for r in rows if "stopped" in r]
    last_step = stop[-1]["at_step"] if stop else (steps[-1]["step"] if steps else 0)
    seconds = stop[-1]["time"] if stop else (steps[-1]["time"] if steps else 0.0)
    method = cfg.get("method", "lcm")
    pair_rows = [r for r in rows if "pairs" in r and "distill" not in r]
    if method == "reflow":
        teacher_steps = cfg.get("teacher_steps") or 25
        nfe = 2 * teacher_steps * cfg["pairs"]
    else:
        nfe = 2 * cfg["batch_size"] * last_step
    return {"method": method, "steps": last_step, "seconds": seconds, "images": cfg["batch_size"] * last_step,
            "pairs": cfg.get("pairs") if method == "reflow" else None,
            "pair_seconds": pair_rows[0]["pair_seconds"] if pair_rows else 0.0, "teacher_nfe": nfe,
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
    torch.set_num_threads(args.threads)
    step_list = [int(s) for s in args.steps.split(",")]
    rows = []
    for name in args.students:
        pipe = ditkit.load(name)
        source = Path(pipe.source)
        if (source / "log.jsonl").is_file():
            cost = run_cost(source)
        else:  # a shipped student keeps its recipe in config.json, not its log
            d = pipe.config.get("distill") or {}
            cost = {"method": d.get("method", "lcm"), "steps": pipe.config.get("distill_steps", 0),
                    "images": d.get("batch_size", 0) * pipe.config.get("distill_steps", 0), "seconds": float("nan")}
            cost["teacher_nfe"] = 2 * cost["images"] if cost["method"] == "lcm" else 0
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
