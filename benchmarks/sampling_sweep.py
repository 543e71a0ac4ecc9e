"""ShapesEval of one model over sampling settings (sampler, steps, guidance, APG),
to choose a model's default settings on a tuning seed that differs from the
reporting seed. Prints one JSON line per setting and a Markdown table.

    python benchmarks/sampling_sweep.py --model runs/shapes-64/model --per-category 20 --seed 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import ditkit
from ditkit.evaluation.evaluate import shapes_eval
from ditkit.core.guidance import APG

from common import apply_threads

SETTINGS = [  # (sampler, steps, guidance, apg)
    ("euler", 25, 4.0, False),
    ("euler", 25, 2.5, False),
    ("euler", 25, 6.0, False),
    ("euler", 25, 8.0, False),
    ("euler", 25, 6.0, True),
    ("dpm2m", 15, 4.0, False),
    ("dpm2m", 15, 6.0, False),
    ("dpm2m", 10, 6.0, False),
    ("heun", 13, 6.0, False),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--per-category", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run")
    args = p.parse_args()
    apply_threads(args)
    pipe = ditkit.load(args.model)
    rows = []
    for i, (sampler, steps, guidance, apg) in enumerate(SETTINGS):
        if args.only and i not in args.only:
            continue
        sample = replace(pipe.defaults, sampler=sampler, steps=steps, guidance=guidance, apg=apg)
        t0 = time.time()
        r = shapes_eval(pipe.model, pipe.text_encoder, sample, args.per_category, args.seed, APG() if apg else None)
        row = {"sampler": sampler, "steps": steps, "guidance": guidance, "apg": apg, "overall": r["overall"],
               **r["categories"], "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cats = ["single_object", "two_object", "counting", "position"]
    print(f"\nmodel {args.model}, {args.per_category} prompts per category, seed {args.seed}\n")
    print("| sampler | steps | guidance | APG | overall | " + " | ".join(cats) + " | seconds |")
    print("|---|---|---|---|---|" + "---|" * len(cats) + "---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['guidance']} | {'yes' if r['apg'] else 'no'} | {r['overall']:.3f} | "
              + " | ".join(f"{r[c]:.2f}" for c in cats) + f" | {r['seconds']} |")


if __name__ == "__main__":
    main()
